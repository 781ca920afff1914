package audit

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// testStoreDown: with its database gone, Append fails at once (bounded by
// the caller's context), so a gate refuses instead of forwarding; when the
// database is back, appends resume on the same chain and it verifies.
func testStoreDown(t *testing.T, pg *testenv.Postgres, e env) {
	url, _ := e.fresh(t)
	key := newKey(t)
	s := open(t, url, key, WithCommitTimeout(2*time.Second))
	defer s.Close()
	ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
	if err := s.Append(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	pg.Stop()
	// Failing fast is the point: an Append that waited for its context
	// (3 s) or the commit timeout (2 s) would hold a gate that long, and
	// would fail with a deadline (both wrap context.DeadlineExceeded). The
	// error must be the database's instead; how long it took is logged, not
	// asserted (a loaded machine is slow, not wrong).
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := time.Now()
		err := s.Append(ctx, ev)
		d := time.Since(start)
		cancel()
		if err == nil {
			t.Fatal("Append succeeded with the database stopped")
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Append with the database stopped ran into a deadline after %s (%v); want the database's error at once", d, err)
		}
		t.Logf("store down after %s: %v", d, err)
	}
	pg.Start()
	for i := range 5 {
		if err := s.Append(context.Background(), ev); err != nil {
			t.Fatalf("append %d after restart: %v", i, err)
		}
	}
	mustVerify(t, s)
}

// TestSQLiteFull: a database that cannot grow refuses appends with SQLite's
// own error, quickly, and what it holds still verifies.
func TestSQLiteFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	key := newKey(t)
	s, err := OpenSQLite(context.Background(), path, WithSigner(NewSigner(key)), WithCheckpoints(1000, time.Hour),
		func(o *options) { o.sqlitePragmas = []string{"max_page_count(40)"} })
	if err != nil {
		t.Fatal(err)
	}
	var appendErr error
	for i := 0; i < 5000 && appendErr == nil; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		appendErr = s.Append(ctx, statement("agent", "orders-db", strings.Repeat("SELECT 1 ", 50), policies.ClassRead))
		cancel()
	}
	if appendErr == nil || !strings.Contains(appendErr.Error(), "full") || errors.Is(appendErr, context.DeadlineExceeded) {
		t.Fatalf("append into a full database: %v, want SQLite's 'database or disk is full'", appendErr)
	}
	start := time.Now()
	if err := s.Append(context.Background(), statement("agent", "orders-db", "SELECT 1", policies.ClassRead)); err == nil {
		t.Error("append succeeded into a full database")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a refused append took %s", d)
	}
	s.Close() // the final checkpoint may not fit either
	mustVerify(t, openRO(t, "sqlite://"+path, key))
}

// TestCancelledAppend: an Append whose context ended before its batch is
// never written, and nothing is written twice.
func TestCancelledAppend(t *testing.T) {
	url := "sqlite://" + filepath.Join(t.TempDir(), "audit.db")
	key := newKey(t)
	s := open(t, url, key)
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Append(ctx, statement("agent", "orders-db", "SELECT cancelled", policies.ClassRead)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a cancelled context = %v", err)
	}
	if err := s.Append(context.Background(), statement("agent", "orders-db", "SELECT kept", policies.ClassRead)); err != nil {
		t.Fatal(err)
	}
	p, err := s.Query(context.Background(), Filter{})
	if err != nil || len(p.Records) != 1 || p.Records[0].Request != "SELECT kept" || p.Records[0].Seq != 1 {
		t.Fatalf("records = %+v (%v), want only SELECT kept at seq 1", p.Records, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(context.Background(), statement("agent", "orders-db", "SELECT late", policies.ClassRead)); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
}

// TestFixedWriterResumes: a replica with a fixed writer id continues its
// chain across restarts, and the chain verifies end to end.
func TestFixedWriterResumes(t *testing.T) {
	url := "sqlite://" + filepath.Join(t.TempDir(), "audit.db")
	key := newKey(t)
	for run := range 2 {
		s := open(t, url, key, WithWriterID("replica-1"))
		for range 3 {
			if err := s.Append(context.Background(), statement("agent", "orders-db", "SELECT 1", policies.ClassRead)); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
	}
	rep := mustVerify(t, openRO(t, url, key))
	if c := rep.Chains[0]; len(rep.Chains) != 1 || c.Writer != "replica-1" || c.Last != 6 || !c.Closed {
		t.Errorf("chains: %s", rep)
	}
}

// flakySync is the SQLite store whose flush to disk fails on demand.
type flakySync struct {
	*sqliteDB
	fail atomic.Bool
}

func (f *flakySync) sync() error {
	if f.fail.Load() {
		return syscall.EIO
	}
	return f.sqliteDB.sync()
}

// TestSQLiteSyncFailureIsSticky: once flushing the WAL fails, the append
// waiting on it and every later one fail, even after the disk "recovers":
// the kernel may have dropped the pages it could not write, so nothing
// after them can be promised durable until sluice restarts.
func TestSQLiteSyncFailureIsSticky(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	db, err := openSQLite(ctx, path, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	fs := &flakySync{sqliteDB: db}
	o := buildOptions([]Option{WithSigner(NewSigner(newKey(t))), WithCheckpoints(1000, time.Hour)})
	s, err := newStore(ctx, fs, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
	if err := s.Append(ctx, ev); err != nil {
		t.Fatal(err)
	}
	fs.fail.Store(true)
	err = s.Append(ctx, ev)
	if err == nil || !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "restart sluice") {
		t.Fatalf("append with a failing flush: %v, want EIO and the advice to restart", err)
	}
	fs.fail.Store(false)
	for range 3 {
		if err := s.Append(ctx, ev); err == nil || !errors.Is(err, syscall.EIO) {
			t.Fatalf("append after a failed flush: %v, want the sticky EIO", err)
		}
	}
}
