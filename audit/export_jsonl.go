package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"sync"
)

// JSONLExporter writes one JSON object per record and line (Record's
// JSON: chain fields, then the event) to a file or to stdout.
type JSONLExporter struct {
	name string
	mu   sync.Mutex
	w    io.Writer
	f    *os.File // nil for a writer that is not a file
}

// NewJSONLExporter appends to path, creating it (0600); "-" is stdout.
func NewJSONLExporter(path string) (*JSONLExporter, error) {
	if path == "-" {
		return &JSONLExporter{name: "jsonl:stdout", w: os.Stdout}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return &JSONLExporter{name: "jsonl:" + path, w: f, f: f}, nil
}

// NewJSONLWriter writes to w (tests, pipes); name keys its cursor.
func NewJSONLWriter(name string, w io.Writer) *JSONLExporter {
	return &JSONLExporter{name: name, w: w}
}

// Name keys the exporter's cursor.
func (j *JSONLExporter) Name() string { return j.name }

// Export writes the records and, for a file, syncs it before the cursor
// moves past them.
func (j *JSONLExporter) Export(_ context.Context, recs []Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	bw := bufio.NewWriter(j.w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if j.f != nil {
		return j.f.Sync()
	}
	return nil
}

// Shutdown closes the file.
func (j *JSONLExporter) Shutdown(context.Context) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f != nil {
		return j.f.Close()
	}
	return nil
}

var _ Exporter = (*JSONLExporter)(nil)
