// Package pgjson parses SQL with libpg_query into pg_query_go's protobuf
// parse tree without protobuf: it decodes libpg_query's JSON output
// (parser.ParseToJSON) with a generated, reflection-free decoder.
//
// pg_query.Parse serialises the C parse tree to protobuf with protobuf-c and
// unmarshals it with Go's proto package; both steps cost far more than the
// parser itself. Parse here returns a tree proto.Equal to pg_query.Parse's
// for every input (see the differential and fuzz tests), and fails where
// it fails.
//
// The decoder is strict: libpg_query's JSON has no whitespace, and any
// key, node type or enum name it does not know is an error, never skipped.
// Strings in the tree share memory with the JSON text when they need no
// unescaping, so a retained tree keeps that text alive.
package pgjson

//go:generate go run ../pgjsongen -o decode_gen.go

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
)

// Parse parses query like pg_query.Parse. Parser errors are the
// *parser.Error pg_query.Parse returns; a tree the decoder cannot read
// (which the tests say never happens) is a *DecodeError.
func Parse(query string) (*pg_query.ParseResult, error) {
	js, err := parser.ParseToJSON(query)
	if err != nil {
		return nil, err
	}
	return Decode(js)
}

// DecodeError reports JSON that is not libpg_query's parse tree format.
type DecodeError struct {
	Offset int    // byte offset in the JSON text
	Msg    string // what was wrong
}

func (e *DecodeError) Error() string {
	return "pgjson: " + e.Msg + " at offset " + strconv.Itoa(e.Offset)
}

// ErrInvalidUTF8 is returned for a string that is not valid UTF-8, which
// pg_query.Parse rejects too: its protobuf strings must be UTF-8.
var ErrInvalidUTF8 = errors.New("pgjson: string field contains invalid UTF-8")

// Decode decodes libpg_query's JSON parse tree (parser.ParseToJSON).
func Decode(js string) (res *pg_query.ParseResult, err error) {
	d := decoders.Get().(*decoder)
	// Every list element is an object: one slab of pointers, counted
	// here, backs all the lists instead of one allocation each.
	d.s, d.i, d.ptrs = js, 0, make([]*pg_query.Node, strings.Count(js, "{"))
	defer func() {
		r := recover()
		clear(d.stack) // after a failure, what the lists had so far
		d.s, d.stack, d.ptrs = "", d.stack[:0], nil
		decoders.Put(d)
		if r != nil {
			e, ok := r.(error)
			if !ok || !(e == ErrInvalidUTF8 || isDecodeError(e)) {
				panic(r)
			}
			res, err = nil, e
		}
	}()
	res = new(pg_query.ParseResult)
	decParseResult(d, res)
	if d.i != len(d.s) {
		d.fail("trailing data")
	}
	return res, nil
}

// decoders keeps decoders, for their stacks.
var decoders = sync.Pool{New: func() any { return new(decoder) }}

func isDecodeError(err error) bool {
	_, ok := err.(*DecodeError)
	return ok
}

// decoder reads libpg_query's JSON. Errors panic with a *DecodeError that
// Decode recovers, so the generated code needs no error plumbing.
type decoder struct {
	s     string
	i     int
	stack []*pg_query.Node // scratch for nodeList, used as a stack
	ptrs  []*pg_query.Node // slab the lists nodeList returns are cut from
}

//go:noinline
func (d *decoder) fail(msg string) {
	panic(&DecodeError{Offset: d.i, Msg: msg})
}

func (d *decoder) unknownKey()  { d.fail("unknown key") }
func (d *decoder) unknownNode() { d.fail("unknown node type") }
func (d *decoder) unknownEnum() { d.fail("unknown enum value") }

// oneof fails if a oneof already has a member.
func (d *decoder) oneof(set bool) {
	if set {
		d.fail("second member of a oneof")
	}
}

func (d *decoder) peek() byte {
	if d.i >= len(d.s) {
		d.fail("unexpected end")
	}
	return d.s[d.i]
}

// The scanning methods below are small enough to inline, with their
// failure paths out of line.

func (d *decoder) expect(c byte) {
	if d.i < len(d.s) && d.s[d.i] == c {
		d.i++
		return
	}
	d.expected(c)
}

//go:noinline
func (d *decoder) expected(c byte) {
	d.fail("expected " + strconv.QuoteRune(rune(c)))
}

// open consumes '{' and reports whether the object is empty, consuming
// its '}' too.
func (d *decoder) open() bool {
	i := d.i
	if i+1 < len(d.s) && d.s[i] == '{' {
		if d.s[i+1] == '}' {
			d.i = i + 2
			return true
		}
		d.i = i + 1
		return false
	}
	d.fail("expected an object")
	return false
}

// close consumes '}'.
func (d *decoder) close() { d.expect('}') }

// next consumes ',' (true: another key follows) or '}' (false).
func (d *decoder) next() bool {
	if d.i < len(d.s) {
		switch d.s[d.i] {
		case ',':
			d.i++
			return true
		case '}':
			d.i++
			return false
		}
	}
	d.fail("expected ',' or '}'")
	return false
}

// openArray consumes '[' and reports whether the array is empty,
// consuming its ']' too.
func (d *decoder) openArray() bool {
	i := d.i
	if i+1 < len(d.s) && d.s[i] == '[' {
		if d.s[i+1] == ']' {
			d.i = i + 2
			return true
		}
		d.i = i + 1
		return false
	}
	d.fail("expected an array")
	return false
}

// nextElem consumes ',' (true) or ']' (false).
func (d *decoder) nextElem() bool {
	if d.i < len(d.s) {
		switch d.s[d.i] {
		case ',':
			d.i++
			return true
		case ']':
			d.i++
			return false
		}
	}
	d.fail("expected ',' or ']'")
	return false
}

// key reads `"name":`. An escaped quote in a key would end it early and
// fail on the missing ':'; other escapes match no known key.
func (d *decoder) key() string {
	i, s := d.i, d.s
	if i < len(s) && s[i] == '"' {
		n := strings.IndexByte(s[i+1:], '"')
		if j := i + 1 + n; n >= 0 && j+1 < len(s) && s[j+1] == ':' {
			d.i = j + 2
			return s[i+1 : j]
		}
	}
	d.fail("expected a key")
	return ""
}

// enum reads an enum name: escapes match no known name.
func (d *decoder) enum() string {
	i, s := d.i, d.s
	if i < len(s) && s[i] == '"' {
		if n := strings.IndexByte(s[i+1:], '"'); n >= 0 {
			d.i = i + n + 2
			return s[i+1 : i+1+n]
		}
	}
	d.fail("expected an enum name")
	return ""
}

func (d *decoder) nodeList() []*pg_query.Node {
	if d.openArray() {
		return nil
	}
	base := len(d.stack)
	for {
		n := decNode(d)
		d.stack = append(d.stack, n)
		if !d.nextElem() {
			break
		}
	}
	n := len(d.stack) - base
	var l []*pg_query.Node
	if n <= len(d.ptrs) {
		l, d.ptrs = d.ptrs[:n:n], d.ptrs[n:]
	} else {
		l = make([]*pg_query.Node, n) // not reached: len(ptrs) counts every '{'
	}
	copy(l, d.stack[base:])
	clear(d.stack[base:])
	d.stack = d.stack[:base]
	return l
}

func (d *decoder) uint64List() []uint64 {
	if d.openArray() {
		return nil
	}
	var l []uint64
	for {
		l = append(l, d.uint64())
		if !d.nextElem() {
			return l
		}
	}
}

func (d *decoder) bool() bool {
	s := d.s[d.i:]
	if len(s) >= 4 && s[:4] == "true" {
		d.i += 4
		return true
	}
	if len(s) >= 5 && s[:5] == "false" {
		d.i += 5
		return false
	}
	d.fail("expected a boolean")
	return false
}

// digits reads an unsigned decimal integer.
func (d *decoder) digits() uint64 {
	s := d.s
	j := d.i
	var v uint64
	for ; j < len(s) && s[j] >= '0' && s[j] <= '9'; j++ {
		c := uint64(s[j] - '0')
		if v > (math.MaxUint64-c)/10 {
			d.i = j
			d.fail("integer overflow")
		}
		v = v*10 + c
	}
	if j == d.i {
		d.fail("expected a number")
	}
	if s[d.i] == '0' && j-d.i > 1 {
		d.fail("leading zero")
	}
	d.i = j
	return v
}

func (d *decoder) int64() int64 {
	neg := d.peek() == '-'
	if neg {
		d.i++
	}
	v := d.digits()
	if neg {
		if v > 1<<63 {
			d.fail("integer overflow")
		}
		return -int64(v)
	}
	if v > math.MaxInt64 {
		d.fail("integer overflow")
	}
	return int64(v)
}

func (d *decoder) int32() int32 {
	v := d.int64()
	if v < math.MinInt32 || v > math.MaxInt32 {
		d.fail("int32 overflow")
	}
	return int32(v)
}

func (d *decoder) uint64() uint64 { return d.digits() }

func (d *decoder) uint32() uint32 {
	v := d.digits()
	if v > math.MaxUint32 {
		d.fail("uint32 overflow")
	}
	return uint32(v)
}

// float64 reads a number as C's %f writes it.
func (d *decoder) float64() float64 {
	s := d.s
	j := d.i
	for j < len(s) && (s[j] == '-' || s[j] == '+' || s[j] == '.' || s[j] == 'e' || s[j] == 'E' || (s[j] >= '0' && s[j] <= '9')) {
		j++
	}
	v, err := strconv.ParseFloat(s[d.i:j], 64)
	if err != nil {
		d.fail("bad number")
	}
	d.i = j
	return v
}

// str reads a string; null (a NULL char * in C, which protobuf-c writes as
// the empty string) is "". Strings without escapes share the JSON text.
func (d *decoder) str() string {
	s := d.s
	if d.peek() == 'n' {
		if len(s)-d.i >= 4 && s[d.i:d.i+4] == "null" {
			d.i += 4
			return ""
		}
		d.fail("expected a string")
	}
	d.expect('"')
	var high bool
	for j := d.i; j < len(s); j++ {
		c := s[j]
		switch {
		case c == '"':
			v := s[d.i:j]
			d.i = j + 1
			if high && !utf8.ValidString(v) {
				panic(ErrInvalidUTF8)
			}
			return v
		case c == '\\':
			return d.strEscaped()
		case c < 0x20:
			d.i = j
			d.fail("control character in string")
		case c >= 0x80:
			high = true
		}
	}
	d.fail("unterminated string")
	return ""
}

// strEscaped reads a string with escapes from d.i, just after its '"'.
func (d *decoder) strEscaped() string {
	s := d.s
	b := make([]byte, 0, 32)
	for d.i < len(s) {
		c := s[d.i]
		switch {
		case c == '"':
			d.i++
			if !utf8.Valid(b) {
				panic(ErrInvalidUTF8)
			}
			return string(b)
		case c < 0x20:
			d.fail("control character in string")
		case c != '\\':
			b = append(b, c)
			d.i++
			continue
		}
		// Escape.
		if d.i+1 >= len(s) {
			d.fail("unterminated escape")
		}
		e := s[d.i+1]
		d.i += 2
		switch e {
		case '"', '\\', '/':
			b = append(b, e)
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r := d.hex4()
			if utf16.IsSurrogate(r) {
				if d.i+1 < len(s) && s[d.i] == '\\' && s[d.i+1] == 'u' {
					d.i += 2
					r = utf16.DecodeRune(r, d.hex4())
				} else {
					r = utf8.RuneError
				}
				if r == utf8.RuneError {
					d.fail("bad surrogate escape")
				}
			}
			b = utf8.AppendRune(b, r)
		default:
			d.i -= 2
			d.fail("bad escape")
		}
	}
	d.fail("unterminated string")
	return ""
}

func (d *decoder) hex4() rune {
	if d.i+4 > len(d.s) {
		d.fail("short \\u escape")
	}
	var r rune
	for _, c := range []byte(d.s[d.i : d.i+4]) {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			d.fail("bad \\u escape")
		}
	}
	d.i += 4
	return r
}

// hashName is FNV-1a (32 bits), which the generated code switches on to
// find a node type or enum name. It must match pgjsongen's nameHash.
func hashName(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
