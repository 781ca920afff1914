package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// DefaultMaxLine bounds one watch event: etcd keeps objects up to 1.5 MiB
// by default, and JSON with its escapes and managed fields can grow well
// past that, so 8 MiB leaves room without letting a stream that never
// sends a newline hold unbounded memory.
const DefaultMaxLine = 8 << 20

// ErrLineTooLong is wrapped by the error a LineMasker returns when a line
// outgrows its bound.
var ErrLineTooLong = errors.New("watch event line too long")

// LineMasker masks a stream of newline-delimited JSON documents (a
// Kubernetes watch: one event {"type":...,"object":{...}} per line) as
// it arrives in chunks of any size. A chunk may end mid-line: the partial
// line is kept, copied, until the rest arrives. Lines holding only
// whitespace pass through.
//
// A LineMasker belongs to one stream and one goroutine. After an error
// every call returns that error: the stream must be cut, not resumed.
type LineMasker struct {
	rules   *JSONRules
	opt     JSONOptions
	maxLine int
	partial []byte
	walker  walker // reused, so its stacks are allocated once per stream
	report  Report
	err     error
}

// NewLineMasker starts masking a stream. maxLine bounds a line, newline
// excluded; 0 or less means DefaultMaxLine.
func (r *JSONRules) NewLineMasker(opt JSONOptions, maxLine int) *LineMasker {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	return &LineMasker{rules: r, opt: opt, maxLine: maxLine}
}

// Write appends to dst the masked form of every line that chunk
// completes, newlines included, and keeps an unterminated tail for the
// next call. chunk is not retained.
func (m *LineMasker) Write(dst, chunk []byte) ([]byte, error) {
	if m.err != nil {
		return dst, m.err
	}
	for len(chunk) > 0 {
		nl := bytes.IndexByte(chunk, '\n')
		if nl < 0 {
			if len(m.partial)+len(chunk) > m.maxLine {
				return dst, m.fail(m.tooLong())
			}
			m.partial = append(m.partial, chunk...)
			return dst, nil
		}
		line := chunk[:nl]
		if len(m.partial) > 0 {
			m.partial = append(m.partial, line...)
			line = m.partial
		}
		if len(line) > m.maxLine {
			return dst, m.fail(m.tooLong())
		}
		var err error
		if dst, err = m.line(dst, line); err != nil {
			return dst, m.fail(err)
		}
		dst = append(dst, '\n')
		m.partial = m.partial[:0]
		chunk = chunk[nl+1:]
	}
	return dst, nil
}

// Close masks the last line when the stream ends without a newline after
// it, and appends it to dst.
func (m *LineMasker) Close(dst []byte) ([]byte, error) {
	if m.err != nil {
		return dst, m.err
	}
	dst, err := m.line(dst, m.partial)
	m.partial = m.partial[:0]
	if err != nil {
		return dst, m.fail(err)
	}
	return dst, nil
}

// Report is what masking did to the stream so far.
func (m *LineMasker) Report() Report { return m.report }

// line masks one line without its newline.
func (m *LineMasker) line(dst, line []byte) ([]byte, error) {
	if len(bytes.TrimLeft(line, " \t\r")) == 0 {
		return append(dst, line...), nil
	}
	if !json.Valid(line) {
		return dst, fmt.Errorf("watch event: %w", invalidJSON(line))
	}
	m.walker.reset(m.rules, m.opt, line, dst)
	m.walker.rep = m.report // accumulate: a path seen before costs nothing
	m.walker.document()
	m.report = m.walker.rep
	dst = m.walker.out
	m.walker.src, m.walker.out = nil, nil // keep neither the chunk nor the caller's buffer
	return dst, nil
}

func (m *LineMasker) tooLong() error {
	return fmt.Errorf("%w: a line longer than %d bytes", ErrLineTooLong, m.maxLine)
}

func (m *LineMasker) fail(err error) error {
	m.err = err
	m.partial = nil
	return err
}
