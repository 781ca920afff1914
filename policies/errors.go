package policies

import (
	"errors"
	"fmt"
	"strings"
)

// FieldError is one problem in a config file, located precisely enough for
// an operator to fix it without guessing: file, line, column and key path
// (for example "targets[1].port").
type FieldError struct {
	File   string
	Line   int
	Column int
	Key    string
	Msg    string
}

// Error formats as file:line:col: key: message.
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
	} else {
		b.WriteString("<config>")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ValidationError lists every problem found in one file, in file order, so
// that an operator fixes them in one pass.
type ValidationError struct {
	Errs []*FieldError
}

// Error lists the problems, one per line.
func (v *ValidationError) Error() string {
	lines := make([]string, len(v.Errs))
	for i, e := range v.Errs {
		lines[i] = e.Error()
	}
	if len(lines) == 1 {
		return "invalid config: " + lines[0]
	}
	return fmt.Sprintf("invalid config (%d problems):\n  %s", len(lines), strings.Join(lines, "\n  "))
}

// Unwrap exposes the individual errors to errors.Is/As.
func (v *ValidationError) Unwrap() []error {
	out := make([]error, len(v.Errs))
	for i, e := range v.Errs {
		out[i] = e
	}
	return out
}

// FieldErrors returns the located problems inside err, if any.
func FieldErrors(err error) []*FieldError {
	var v *ValidationError
	if errors.As(err, &v) {
		return v.Errs
	}
	var f *FieldError
	if errors.As(err, &f) {
		return []*FieldError{f}
	}
	return nil
}
