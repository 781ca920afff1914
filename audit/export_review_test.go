package audit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// cursorsDown is the SQLite store whose export cursors cannot be read
// while fails is above zero.
type cursorsDown struct {
	*sqliteDB
	fails atomic.Int32
}

func (c *cursorsDown) query(ctx context.Context, q string, args ...any) (rows, error) {
	if strings.Contains(q, "FROM audit_export_cursors WHERE exporter = ?") && c.fails.Add(-1) >= 0 {
		return nil, errors.New("cursors unavailable")
	}
	return c.sqliteDB.query(ctx, q, args...)
}

func appendN(t *testing.T, s Store, n int) {
	t.Helper()
	for range n {
		if err := s.Append(context.Background(), statement("agent", "orders-db", "SELECT 1", policies.ClassRead)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestExporterRetriesCursors: an exporter that cannot read its cursors at
// start ships nothing until it can, then starts at the chain heads as a
// new exporter does, instead of sending every chain's history.
func TestExporterRetriesCursors(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	key := newKey(t)
	old := open(t, "sqlite://"+path, key, WithWriterID("old"))
	appendN(t, old, 10)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := openSQLite(ctx, path, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	cd := &cursorsDown{sqliteDB: db}
	cd.fails.Store(3)
	var log testenv.SyncBuffer
	jsonl := filepath.Join(t.TempDir(), "audit.jsonl")
	exp, err := NewJSONLExporter(jsonl)
	if err != nil {
		t.Fatal(err)
	}
	o := buildOptions([]Option{WithSigner(NewSigner(key)), WithWriterID("new"), WithExporters(exp),
		WithLogger(slog.New(slog.NewTextHandler(&log, nil))), func(o *options) { o.orphanAfter = 0 }})
	s, err := newStore(ctx, cd, o)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 2)
	waitFor(t, "the new chain's 2 lines", 10*time.Second, func() bool { return len(lines(t, jsonl)) >= 2 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range lines(t, jsonl) {
		if r.Writer != "new" {
			t.Errorf("shipped %s seq %d: the old chain's history was exported", r.Writer, r.Seq)
		}
	}
	if n := strings.Count(log.String(), "cannot read its cursors"); n != 3 {
		t.Errorf("logged %d failed reads of the cursors, want 3:\n%s", n, log.String())
	}
}

// TestExportSkipsUndecodable: a stored event the exporter cannot decode
// (a newer schema version, a tampered body) is skipped with an error
// naming it; the rest of its chain, and the other chains, still ship.
func TestExportSkipsUndecodable(t *testing.T) {
	ctx := context.Background()
	url, raw := sqliteEnv().fresh(t)
	key := newKey(t)
	for _, w := range []string{"a", "b"} {
		s := open(t, url, key, WithWriterID(w))
		appendN(t, s, 5)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// The exporter has shipped nothing yet of either chain.
	raw.exec(t, "INSERT INTO audit_export_cursors (exporter, writer, seq) VALUES ('test', 'a', 0), ('test', 'b', 0)")
	raw.exec(t, `UPDATE audit_events SET body = replace(body, '{"v":1,', '{"v":2,') WHERE writer = 'a' AND seq = 3`)
	raw.exec(t, `UPDATE audit_events SET body = '{not json' WHERE writer = 'b' AND seq = 5`)

	var out testenv.SyncBuffer
	var log testenv.SyncBuffer
	s := open(t, url, key, WithWriterID("c"), WithExporters(NewJSONLWriter("test", &out)),
		WithLogger(slog.New(slog.NewTextHandler(&log, nil))), func(o *options) { o.orphanAfter = 0 })
	appendN(t, s, 1)
	got := func() map[string][]int64 {
		m := map[string][]int64{}
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var r Record
			if line != "" && r.UnmarshalJSON([]byte(line)) == nil {
				m[r.Writer] = append(m[r.Writer], r.Seq)
			}
		}
		return m
	}
	waitFor(t, "chains a, b and c shipped", 10*time.Second, func() bool {
		m := got()
		return len(m["a"]) == 4 && len(m["b"]) == 4 && len(m["c"]) == 1
	})
	// The own chain is not held back by the others' bad records.
	appendN(t, s, 1)
	waitFor(t, "c's next event", 5*time.Second, func() bool { return len(got()["c"]) == 2 })
	sh := s.(*store).shippers[0]
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if m := got(); !equalSeqs(m["a"], 1, 2, 4, 5) || !equalSeqs(m["b"], 1, 2, 3, 4) {
		t.Errorf("shipped %v", m)
	}
	if n := sh.skipped.Load(); n != 2 {
		t.Errorf("skipped counter = %d, want 2", n)
	}
	l := log.String()
	if !strings.Contains(l, "writer=a seq=3") || !strings.Contains(l, "writer=b seq=5") || !strings.Contains(l, "schema version 2") {
		t.Errorf("log does not name the skipped events:\n%s", l)
	}
	ro := openRO(t, url, key)
	for _, w := range []string{"a", "b"} {
		var seq int64
		if err := queryOne(ctx, ro.(*store).db, "SELECT seq FROM audit_export_cursors WHERE exporter = 'test' AND writer = ?", []any{w}, &seq); err != nil || seq != 5 {
			t.Errorf("cursor of %s = %d, %v; want past the skipped event, at 5", w, seq, err)
		}
	}
}

func equalSeqs(got []int64, want ...int64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct{ release chan struct{} }

func (b *blockingWriter) Write(p []byte) (int, error) {
	<-b.release
	return len(p), nil
}

// TestJSONLBlockedWriter: a writer nobody reads (a stdout pipe) makes
// Export give up at its context, and Close return, instead of hanging.
func TestJSONLBlockedWriter(t *testing.T) {
	bw := &blockingWriter{release: make(chan struct{})}
	defer close(bw.release)
	j := NewJSONLWriter("stuck", bw)
	rec := Record{Writer: "w", Seq: 1, Event: statement("agent", "orders-db", "SELECT 1", policies.ClassRead)}
	for i := range 2 { // the second finds the first still writing
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		start := time.Now()
		err := j.Export(ctx, []Record{rec})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Fatalf("export %d to a blocked writer: %v after %s", i, err, time.Since(start))
		}
	}

	defer func(g time.Duration) { stopGrace = g }(stopGrace)
	stopGrace = 200 * time.Millisecond
	bw2 := &blockingWriter{release: make(chan struct{})}
	defer close(bw2.release)
	s := open(t, "sqlite://"+filepath.Join(t.TempDir(), "audit.db"), newKey(t), WithExporters(NewJSONLWriter("stuck", bw2)))
	appendN(t, s, 3)
	closed := make(chan error, 1)
	start := time.Now()
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("Close with a blocked exporter took %s", time.Since(start))
	case <-time.After(15 * time.Second):
		t.Fatal("Close hangs on an exporter whose writer is blocked")
	}
}

// partialWriter writes the first n bytes it is given, then fails.
type partialWriter struct {
	w io.Writer
	n int
}

func (p *partialWriter) Write(b []byte) (int, error) {
	if len(b) <= p.n {
		p.n -= len(b)
		return p.w.Write(b)
	}
	k, _ := p.w.Write(b[:p.n])
	p.n = 0
	return k, errors.New("disk trouble")
}

// TestJSONLFailedWriteLeavesNoFragment: a write that fails part-way is
// cut off the file, so the retry leaves only whole lines; a writer that
// cannot be cut back gets a newline before the next batch.
func TestJSONLFailedWriteLeavesNoFragment(t *testing.T) {
	ctx := context.Background()
	recs := func(from int64) []Record {
		var out []Record
		for i := range int64(3) {
			out = append(out, Record{Writer: "w", Seq: from + i, Event: statement("agent", "orders-db", "SELECT 1", policies.ClassRead)})
		}
		return out
	}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	j, err := NewJSONLExporter(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Export(ctx, recs(1)); err != nil {
		t.Fatal(err)
	}
	j.w = &partialWriter{w: j.f, n: 100} // 100 bytes of the next batch, then an error
	if err := j.Export(ctx, recs(4)); err == nil {
		t.Fatal("a failed write reported success")
	}
	j.w = j.f
	if err := j.Export(ctx, recs(4)); err != nil {
		t.Fatal(err)
	}
	if err := j.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got := lines(t, path) // fails the test on a line that does not parse
	if len(got) != 6 || got[5].Seq != 6 {
		t.Errorf("file holds %d records, want seq 1–6", len(got))
	}
	b, _ := os.ReadFile(path)
	if !bytes.HasSuffix(b, []byte("\n")) {
		t.Error("file does not end with a whole line")
	}

	// A pipe: the fragment becomes a line of its own.
	var buf bytes.Buffer
	pw := &partialWriter{w: &buf, n: 50}
	p := NewJSONLWriter("pipe", pw)
	if err := p.Export(ctx, recs(1)); err == nil {
		t.Fatal("a failed write reported success")
	}
	pw.n = 1 << 30
	if err := p.Export(ctx, recs(1)); err != nil {
		t.Fatal(err)
	}
	ls := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(ls) != 4 || len(ls[0]) != 50 {
		t.Fatalf("pipe got %d lines: %q", len(ls), buf.String())
	}
	for _, l := range ls[1:] {
		var r Record
		if err := r.UnmarshalJSON([]byte(l)); err != nil {
			t.Errorf("line after the fragment %q: %v", l, err)
		}
	}
}
