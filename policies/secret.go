package policies

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// SecretRef names where a secret lives: an environment variable or a file.
// The value is read only when it is needed and is never logged.
type SecretRef struct {
	Env  string
	File string
}

// IsZero reports whether the reference names nothing.
func (r SecretRef) IsZero() bool { return r.Env == "" && r.File == "" }

// String describes the reference, never the value.
func (r SecretRef) String() string {
	switch {
	case r.Env != "":
		return "env:" + r.Env
	case r.File != "":
		return "file:" + r.File
	}
	return "none"
}

// ErrSecretUnset is returned by Resolve when the reference names nothing or
// the variable is unset or empty.
var ErrSecretUnset = errors.New("secret is not set")

// Resolve reads the secret. A file's trailing newline is trimmed.
func (r SecretRef) Resolve() (string, error) {
	switch {
	case r.Env != "":
		v, ok := os.LookupEnv(r.Env)
		if !ok || v == "" {
			return "", fmt.Errorf("environment variable %s: %w", r.Env, ErrSecretUnset)
		}
		return v, nil
	case r.File != "":
		b, err := os.ReadFile(r.File)
		if err != nil {
			return "", fmt.Errorf("secret file: %w", err)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return "", fmt.Errorf("secret file %s: %w", r.File, ErrSecretUnset)
		}
		return v, nil
	}
	return "", ErrSecretUnset
}
