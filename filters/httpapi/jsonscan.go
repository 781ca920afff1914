package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// The masker walks documents that encoding/json has already validated
// (json.Valid), so these helpers only find where things end: they never
// judge syntax, and they never read past a value json.Valid accepted.
// Unchanged bytes are copied through as they came, so a response nothing
// matched leaves the masker byte for byte as it arrived.

// ErrInvalidJSON is wrapped by every error about a body or watch event
// that is not JSON; the caller fails closed and can label the refusal.
var ErrInvalidJSON = errors.New("response is not valid JSON")

// invalidJSON explains why b is not JSON, with the offset encoding/json
// reports.
func invalidJSON(b []byte) error {
	var raw json.RawMessage
	err := json.Unmarshal(b, &raw)
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("%w: %v at byte %d of %d", ErrInvalidJSON, se, se.Offset, len(b))
	case err != nil:
		return fmt.Errorf("%w: %v", ErrInvalidJSON, err)
	}
	return fmt.Errorf("%w (%d bytes)", ErrInvalidJSON, len(b))
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// stringEnd returns the index just past the closing quote of the string
// that starts at b[i].
func stringEnd(b []byte, i int) int {
	i++
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return len(b) // unreachable for valid JSON
		}
		i += j
		// A quote preceded by an odd run of backslashes is escaped.
		k := i - 1
		for b[k] == '\\' {
			k--
		}
		if (i-1-k)%2 == 0 {
			return i + 1
		}
		i++
	}
}

// literalEnd returns the index just past the number, true, false or null
// that starts at b[i].
func literalEnd(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
		i++
	}
	return i
}

// valueEnd returns the index just past the value that starts at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = stringEnd(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	return literalEnd(b, i)
}

// stringContent returns the decoded text of the JSON string b (quotes
// included): the bytes between the quotes when nothing is escaped, a
// decoded copy otherwise.
func stringContent(b []byte) []byte {
	inner := b[1 : len(b)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner
	}
	var s string
	if json.Unmarshal(b, &s) != nil {
		return inner // unreachable for valid JSON
	}
	return []byte(s)
}
