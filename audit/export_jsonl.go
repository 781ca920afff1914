package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// JSONLExporter writes one JSON object per record and line (Record's
// JSON: chain fields, then the event) to a file or to stdout.
//
// A batch is written whole or, as far as the exporter can help it, not at
// all: for a file, a write or sync that fails part-way is undone by
// truncating the file back to where the batch began, so the retry does
// not append lines after a fragment. A writer that is not a file (stdout,
// a pipe) cannot be cut back; after a failed part-way write the next
// batch starts with a newline, so the fragment is one bad line of its own
// and the lines after it parse.
//
// Export gives up when its context ends even if the write is stuck (a
// stdout pipe nobody reads): the write goes on in the background and
// later batches wait for it, each only as long as its own context. Nothing
// is lost by giving up: the store still holds the events, and the cursor
// moves only past batches that were written.
type JSONLExporter struct {
	name string
	w    io.Writer
	f    *os.File // nil for a writer that is not a file
	// slot holds a token while a write is in flight; that write may
	// outlive the Export that started it. Whoever holds it owns w, f and
	// torn.
	slot chan struct{}
	torn bool // a write to a non-file writer stopped part-way
	// cut is where a file must be cut back to before the next batch,
	// when cutting it back after a failed batch failed too; -1 if not.
	cut int64
}

// NewJSONLExporter appends to path, creating it (0600); "-" is stdout.
func NewJSONLExporter(path string) (*JSONLExporter, error) {
	if path == "-" {
		return newJSONL("jsonl:stdout", os.Stdout, nil), nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return newJSONL("jsonl:"+path, f, f), nil
}

// NewJSONLWriter writes to w (tests, pipes); name keys its cursor.
func NewJSONLWriter(name string, w io.Writer) *JSONLExporter {
	return newJSONL(name, w, nil)
}

func newJSONL(name string, w io.Writer, f *os.File) *JSONLExporter {
	return &JSONLExporter{name: name, w: w, f: f, slot: make(chan struct{}, 1), cut: -1}
}

// Name keys the exporter's cursor.
func (j *JSONLExporter) Name() string { return j.name }

// Export writes the records and, for a file, syncs it before the cursor
// moves past them. It returns ctx's error if ctx ends first.
func (j *JSONLExporter) Export(ctx context.Context, recs []Record) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	select {
	case j.slot <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("jsonl: an earlier write is still blocked: %w", context.Cause(ctx))
	}
	done := make(chan error, 1)
	go func() {
		defer func() { <-j.slot }()
		done <- j.write(buf.Bytes())
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		select {
		case err := <-done: // it ended as ctx did
			return err
		default:
			return fmt.Errorf("jsonl: write blocked: %w", context.Cause(ctx))
		}
	}
}

// write writes one batch; the caller holds the slot.
func (j *JSONLExporter) write(b []byte) error {
	if j.f == nil {
		if j.torn {
			b = append([]byte{'\n'}, b...)
		}
		n, err := j.w.Write(b)
		if err != nil {
			j.torn = j.torn && n == 0 || n > 0 && n < len(b)
			return err
		}
		j.torn = false
		return nil
	}
	if j.cut >= 0 {
		if err := j.f.Truncate(j.cut); err != nil {
			return fmt.Errorf("cutting off the part of a failed batch: %w", err)
		}
		j.cut = -1
	}
	st, err := j.f.Stat()
	if err != nil {
		return err
	}
	start := st.Size()
	if _, err = j.w.Write(b); err == nil {
		err = j.f.Sync()
	}
	if err != nil {
		if terr := j.f.Truncate(start); terr != nil {
			j.cut = start
			return fmt.Errorf("%w (and cutting the file back to the batch's start failed: %v)", err, terr)
		}
	}
	return err
}

// Shutdown closes the file, once a write in flight has ended or ctx has.
func (j *JSONLExporter) Shutdown(ctx context.Context) error {
	if j.f == nil {
		return nil
	}
	select {
	case j.slot <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("jsonl: a write is still blocked: %w", context.Cause(ctx))
	}
	defer func() { <-j.slot }()
	return j.f.Close()
}

var _ Exporter = (*JSONLExporter)(nil)
