package audit

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// gatedSync is the SQLite store whose flush to disk can be held until the
// test lets it go, and which records the number of events in each commit.
type gatedSync struct {
	*sqliteDB
	mu      sync.Mutex
	gate    chan struct{} // when set, sync waits for it to close
	entered chan struct{} // signalled when a gated sync starts waiting
	commits []int
}

func (g *gatedSync) sync() error {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		g.entered <- struct{}{}
		<-gate
	}
	return g.sqliteDB.sync()
}

func (g *gatedSync) commit(ctx context.Context, evs []eventRow, cps []checkpointRow) error {
	if len(evs) > 0 {
		g.mu.Lock()
		g.commits = append(g.commits, len(evs))
		g.mu.Unlock()
	}
	return g.sqliteDB.commit(ctx, evs, cps)
}

// gatedStore opens a SQLite store whose syncs can be held (gatedSync).
func gatedStore(t *testing.T, opts ...Option) (*gatedSync, *store) {
	t.Helper()
	ctx := context.Background()
	db, err := openSQLite(ctx, filepath.Join(t.TempDir(), "audit.db"), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedSync{sqliteDB: db, entered: make(chan struct{}, 4)}
	s, err := newStore(ctx, g, buildOptions(append([]Option{WithSigner(NewSigner(newKey(t))), WithCheckpoints(1000, time.Hour)}, opts...)))
	if err != nil {
		t.Fatal(err)
	}
	return g, s
}

// hold makes every sync from now on wait until release is called.
func (g *gatedSync) hold() (release func()) {
	gate := make(chan struct{})
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		g.gate = nil
		g.mu.Unlock()
		close(gate)
	}
}

func (g *gatedSync) commitSizes() []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.commits)
}

// TestWriterHoldsSmallBatchesWhileSyncing: while one batch is being synced
// the writer does not write a small next batch (it would rewrite the page
// the sync is writing, see awaitSync); it gathers appends instead, and
// writes them at once when they reach pipelineMin, without waiting for the
// sync. Every append returns once its own batch is synced.
func TestWriterHoldsSmallBatchesWhileSyncing(t *testing.T) {
	ctx := context.Background()
	g, s := gatedStore(t)
	defer s.Close()
	ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)

	release := g.hold()
	errs := make(chan error, 1+pipelineMin)
	appendAsync := func() { go func() { errs <- s.Append(ctx, ev) }() }

	appendAsync() // the first batch: written, and its sync held
	<-g.entered
	// One append while that sync is held: the writer takes it from the
	// queue, and holds it.
	appendAsync()
	waitFor(t, "the writer to take the second append", 10*time.Second, func() bool { return len(s.w.in) == 0 })
	if got := g.commitSizes(); len(got) != 1 {
		t.Fatalf("commits while the first sync is held: %v, want only the first batch [1]", got)
	}
	// pipelineMin-1 more make a batch worth overlapping with the sync.
	for range pipelineMin - 1 {
		appendAsync()
	}
	waitFor(t, "the second batch to be written", 10*time.Second, func() bool { return len(g.commitSizes()) == 2 })
	if got := g.commitSizes(); !slices.Equal(got, []int{1, pipelineMin}) {
		t.Errorf("commit sizes %v, want [1 %d]", got, pipelineMin)
	}
	select {
	case err := <-errs:
		t.Fatalf("an append returned (%v) before any sync finished", err)
	default:
	}
	release()
	for range 1 + pipelineMin {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// With nothing being synced, a single append is written at once.
	if err := s.Append(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if got := g.commitSizes(); !slices.Equal(got, []int{1, pipelineMin, 1}) {
		t.Errorf("commit sizes %v, want [1 %d 1]", got, pipelineMin)
	}
}

// TestWriterClosesWithAHeldBatch: Close while a small batch is held behind
// a sync writes that batch, waits for both syncs and answers both appends.
func TestWriterClosesWithAHeldBatch(t *testing.T) {
	ctx := context.Background()
	g, s := gatedStore(t)
	ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
	release := g.hold()
	errs := make(chan error, 2)
	go func() { errs <- s.Append(ctx, ev) }()
	<-g.entered // the first batch's sync is held
	// The second append is queued as Append queues it, so that it is known
	// to be in the queue before Close (an Append racing Close may be
	// refused instead, rightly), and then taken and held by the writer.
	ev.Time = time.Now() // as Append stamps it
	enc, err := encodeEvent(ev)
	if err != nil {
		t.Fatal(err)
	}
	held := &pending{ctx: ctx, rec: Record{Event: ev}, enc: enc, done: make(chan error, 1)}
	s.w.in <- held
	go func() { errs <- <-held.done }()
	waitFor(t, "the writer to take the second append", 10*time.Second, func() bool { return len(s.w.in) == 0 })
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	release()
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("append: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("an append was not answered after Close")
		}
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if got := g.commitSizes(); !slices.Equal(got, []int{1, 1}) {
		t.Errorf("commit sizes %v, want [1 1]", got)
	}
}

// TestWriterFailsAppendsOfAStalledFlush: a flush that outlasts the commit
// timeout (a hung disk) fails its appends at the timeout, and every new
// append at once, with an error that says so; once the flush returns,
// appends are taken again.
func TestWriterFailsAppendsOfAStalledFlush(t *testing.T) {
	ctx := context.Background()
	const timeout = 300 * time.Millisecond
	g, s := gatedStore(t, WithCommitTimeout(timeout))
	defer s.Close()
	ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
	release := g.hold()
	held := make(chan error, 1)
	go func() { held <- s.Append(ctx, ev) }()
	<-g.entered // its flush is held
	select {
	case err := <-held:
		if !errors.Is(err, errFlushStalled) {
			t.Fatalf("the append of a stalled flush: %v, want %v", err, errFlushStalled)
		}
	case <-time.After(20 * timeout): // a bound on failing at all, not a measurement
		t.Fatal("the append of a stalled flush was not answered")
	}
	// While the flush hangs, new appends are refused without waiting for
	// their own deadline.
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := s.Append(dctx, ev); !errors.Is(err, errFlushStalled) {
		t.Fatalf("an append during the stall: %v, want %v", err, errFlushStalled)
	}
	release()
	waitFor(t, "the stall to end", 10*time.Second, func() bool { return !s.w.stalled.Load() })
	if err := s.Append(ctx, ev); err != nil {
		t.Fatalf("an append after the flush returned: %v", err)
	}
	mustVerify(t, s)
}
