package httpapi

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/jsonstr"
)

// jsonPath is a compiled JSON path, in the syntax the package
// documentation gives: a subset of JSONPath (RFC 9535) whose matches are
// decided while walking a document once, without looking back or
// counting ahead.
type jsonPath struct {
	src   string
	steps []pathStep
}

type stepKind uint8

const (
	stepName  stepKind = iota + 1 // .name or ["name"]: an object member
	stepIndex                     // [N]: an array element
	stepAny                       // .* or [*]: any member or element
)

type pathStep struct {
	kind  stepKind
	name  string
	index int
}

// matchesKey reports whether the step selects the object member key.
func (s pathStep) matchesKey(key []byte) bool {
	return s.kind == stepAny || (s.kind == stepName && string(key) == s.name)
}

// matchesIndex reports whether the step selects the array element i.
func (s pathStep) matchesIndex(i int) bool {
	return s.kind == stepAny || (s.kind == stepIndex && s.index == i)
}

// parseJSONPath compiles one path, with an error that says where it goes
// wrong and what would be accepted.
func parseJSONPath(src string) (jsonPath, error) {
	p := jsonPath{src: src}
	if !strings.HasPrefix(src, "$") {
		return p, pathError(src, 0, "a path starts with $")
	}
	for i := 1; i < len(src); {
		var st pathStep
		var err error
		switch src[i] {
		case '.':
			st, i, err = parseDotted(src, i+1)
		case '[':
			st, i, err = parseBracket(src, i+1)
		default:
			err = pathError(src, i, "expected . or [ after "+strconv.Quote(src[:i]))
		}
		if err != nil {
			return p, err
		}
		p.steps = append(p.steps, st)
	}
	return p, nil
}

// parseDotted reads what follows a ".": "*" or a shorthand name.
func parseDotted(src string, i int) (pathStep, int, error) {
	if i >= len(src) {
		return pathStep{}, i, pathError(src, i, "a name or * must follow .")
	}
	switch src[i] {
	case '*':
		return pathStep{kind: stepAny}, i + 1, nil
	case '.':
		return pathStep{}, i, pathError(src, i-1, "descendant segments (..) are not supported; name each level")
	}
	start := i
	for i < len(src) && src[i] != '.' && src[i] != '[' {
		r, n := utf8.DecodeRuneInString(src[i:])
		if !nameChar(r, i == start) {
			return pathStep{}, i, pathError(src, i, fmt.Sprintf("%q cannot appear in a .name; write the name in brackets: [%s]", r, strconv.Quote(dottedRest(src, start))))
		}
		i += n
	}
	return pathStep{kind: stepName, name: src[start:i]}, i, nil
}

// dottedRest is the rest of a dotted name up to the next "." or "[", for
// the bracket form an error suggests.
func dottedRest(src string, start int) string {
	end := start
	for end < len(src) && src[end] != '.' && src[end] != '[' {
		end++
	}
	return src[start:end]
}

// nameChar is RFC 9535's name-first and name-char.
func nameChar(r rune, first bool) bool {
	switch {
	case r == utf8.RuneError:
		return false
	case r == '_', r >= 0x80:
		return true
	case (r|0x20) >= 'a' && (r|0x20) <= 'z':
		return true
	case r >= '0' && r <= '9':
		return !first
	}
	return false
}

// parseBracket reads a selector and its closing "]".
func parseBracket(src string, i int) (pathStep, int, error) {
	if i >= len(src) {
		return pathStep{}, i, pathError(src, i, "unclosed [")
	}
	var st pathStep
	var err error
	switch c := src[i]; {
	case c == '*':
		st, i = pathStep{kind: stepAny}, i+1
	case c == '"' || c == '\'':
		var name string
		name, i, err = parseQuoted(src, i)
		st = pathStep{kind: stepName, name: name}
	case c >= '0' && c <= '9':
		st.kind = stepIndex
		st.index, i, err = parseIndex(src, i)
	case c == '-':
		err = pathError(src, i, "negative indexes are not supported")
	case c == '?':
		err = pathError(src, i, "filter selectors are not supported")
	default:
		err = pathError(src, i, `expected *, an index or a quoted name in [ ]`)
	}
	if err != nil {
		return st, i, err
	}
	if i >= len(src) || src[i] != ']' {
		if i < len(src) && (src[i] == ',' || src[i] == ':') {
			return st, i, pathError(src, i, "unions and slices are not supported; write one path per selection")
		}
		return st, i, pathError(src, i, "expected ]")
	}
	return st, i + 1, nil
}

// parseIndex reads a non-negative array index without leading zeros.
func parseIndex(src string, i int) (int, int, error) {
	start := i
	for i < len(src) && src[i] >= '0' && src[i] <= '9' {
		i++
	}
	if i-start > 1 && src[start] == '0' {
		return 0, i, pathError(src, start, "an index has no leading zeros")
	}
	n, err := strconv.Atoi(src[start:i])
	if err != nil {
		return 0, i, pathError(src, start, "index out of range")
	}
	return n, i, nil
}

// parseQuoted reads a quoted member name. Double-quoted names are JSON
// string literals; single-quoted ones take the same escapes, plus \'.
func parseQuoted(src string, i int) (string, int, error) {
	q := src[i]
	end := i + 1
	for end < len(src) && src[end] != q {
		if src[end] == '\\' {
			end++
		}
		end++
	}
	if end >= len(src) {
		return "", end, pathError(src, i, "unterminated quoted name")
	}
	lit := src[i : end+1]
	if q == '\'' {
		lit = singleToDouble(lit)
	}
	var name string
	if err := json.Unmarshal([]byte(lit), &name); err != nil {
		return "", end, pathError(src, i, "invalid quoted name: "+err.Error())
	}
	return name, end + 1, nil
}

// singleToDouble rewrites a single-quoted literal as a JSON string
// literal: \' becomes ', and a bare " is escaped.
func singleToDouble(lit string) string {
	var b strings.Builder
	b.WriteByte('"')
	body := lit[1 : len(lit)-1]
	for i := 0; i < len(body); i++ {
		switch c := body[i]; {
		case c == '\\' && i+1 < len(body) && body[i+1] == '\'':
			b.WriteByte('\'')
			i++
		case c == '\\' && i+1 < len(body):
			b.WriteByte(c)
			b.WriteByte(body[i+1])
			i++
		case c == '"':
			b.WriteString(`\"`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func pathError(src string, at int, msg string) error {
	return fmt.Errorf("json path %q: at offset %d: %s", src, at, msg)
}

// appendPathKey appends key to a path being written for the audit record,
// in the syntax parseJSONPath reads: .name when it is a shorthand name,
// ["..."] otherwise.
func appendPathKey(dst, key []byte) []byte {
	short := len(key) > 0
	for i := 0; i < len(key) && short; {
		r, n := utf8.DecodeRune(key[i:])
		short = nameChar(r, i == 0)
		i += n
	}
	if short {
		return append(append(dst, '.'), key...)
	}
	return append(jsonstr.Append(append(dst, '['), key), ']')
}
