package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// writer is the one goroutine that owns a chain: it numbers, hashes and
// group-commits the appends queued to it, and seals the chain with signed
// checkpoints. Everything below "owned by run" is touched only by run.
type writer struct {
	db        dialect
	id        string
	idJSON    []byte // id as a JSON string, for the canonical body
	signer    *Signer
	opts      options
	log       *slog.Logger
	in        chan *pending
	quit      chan struct{} // closed by close: stop taking appends
	done      chan struct{} // closed when run has returned
	notify    []func()      // called after each commit (exporters); set before run's first commit
	closeOnce sync.Once

	// syncer is set when the dialect's commit is not yet durable (SQLite):
	// run hands each written batch to syncLoop, which makes it durable
	// and answers it, while run writes the next. A failed sync is sticky.
	syncer   deferredSync
	syncs    chan []*pending
	syncDone chan struct{}
	syncErr  atomic.Pointer[error]
	// unsynced counts the batches handed to syncLoop and not yet synced;
	// syncLoop signals synced (capacity 1) each time it lowers the count.
	unsynced atomic.Int64
	synced   chan struct{}
	// stalled is set while a sync has taken longer than the commit
	// timeout: its appends have been answered with errFlushStalled, and new
	// ones are refused at once until a sync completes.
	stalled atomic.Bool
	// others holds the other chains' heads as last read (at start, then
	// by watchOthers), for the next checkpoint to witness.
	others atomic.Pointer[[]ChainHead]

	// owned by run
	witnessed map[string]ChainHead // each other chain's head as this chain last witnessed it
	seq       int64
	head      Hash
	resync    bool // the last commit failed: reread the head before the next
	unseal    int  // events since the last checkpoint
	sealed    time.Time
	lastErr   error
}

// pending is one Append waiting for its batch. done is buffered so run
// never blocks on an Append that stopped waiting.
type pending struct {
	ctx  context.Context
	rec  Record
	enc  encodedEvent
	done chan error
}

func startWriter(ctx context.Context, db dialect, id string, o options) (*writer, error) {
	idJSON, _ := json.Marshal(id)
	w := &writer{db: db, id: id, idJSON: idJSON, signer: o.signer, opts: o, log: o.log.With("audit_writer", id),
		in: make(chan *pending, o.maxBatch), quit: make(chan struct{}), done: make(chan struct{}),
		witnessed: map[string]ChainHead{}}
	if ds, ok := db.(deferredSync); ok {
		w.syncer = ds
		w.syncs = make(chan []*pending, syncQueue)
		w.syncDone = make(chan struct{})
		w.synced = make(chan struct{}, 1)
	}
	kind := CheckpointStart
	seq, head, err := chainHead(ctx, db, id)
	switch {
	case err == nil:
		kind = CheckpointResume
		w.seq, w.head = seq, head
	case !errors.Is(err, ErrNotFound):
		return nil, fmt.Errorf("audit: read chain %s: %w", id, err)
	}
	// The chain's first checkpoint is committed before any append is
	// taken: a chain without a signed start is one an attacker made up.
	// It witnesses the other chains' heads, so that none of them can be
	// cut short later, its own checkpoints with it, unnoticed.
	heads, err := otherHeads(ctx, db, id)
	if err != nil {
		return nil, fmt.Errorf("audit: read the other chains: %w", err)
	}
	w.others.Store(&heads)
	if err := w.commit(nil, kind); err != nil {
		return nil, fmt.Errorf("audit: start chain %s: %w", id, err)
	}
	return w, nil // the caller starts run once notify is set
}

// append queues e and waits for its batch to commit.
//
// Semantics under cancellation: if ctx ends before run takes the event
// into a batch, the event is dropped and never written. If ctx ends while
// its batch is committing, append returns ctx's error at once and the
// event is still committed, exactly once. Either way an error means "not
// known to be durable": the caller must not forward, and may find the
// event in the trail all the same (a record of a refused statement).
func (w *writer) append(ctx context.Context, e Event) (Record, error) {
	if w.stalled.Load() {
		return Record{}, errFlushStalled
	}
	enc, err := encodeEvent(e)
	if err != nil {
		return Record{}, fmt.Errorf("audit: encode event: %w", err)
	}
	p := &pending{ctx: ctx, rec: Record{Event: e}, enc: enc, done: make(chan error, 1)}
	select {
	case w.in <- p:
	case <-w.quit:
		return Record{}, ErrClosed
	case <-ctx.Done():
		return Record{}, fmt.Errorf("audit: not recorded: %w", context.Cause(ctx))
	}
	select {
	case err := <-p.done:
		if err != nil {
			return Record{}, err
		}
		return p.rec, nil
	case <-ctx.Done():
		return Record{}, fmt.Errorf("audit: durability unknown, treat as not recorded: %w", context.Cause(ctx))
	case <-w.done:
		select { // run may have answered just before it returned
		case err := <-p.done:
			if err == nil {
				return p.rec, nil
			}
			return Record{}, err
		default:
			return Record{}, ErrClosed
		}
	}
}

func (w *writer) run() {
	defer close(w.done)
	if w.syncer != nil {
		go w.syncLoop()
	}
	go w.watchOthers()
	tick := time.NewTicker(w.opts.checkpointInterval)
	defer tick.Stop()
	batch := make([]*pending, 0, w.opts.maxBatch)
	for {
		batch = batch[:0]
		select {
		case p := <-w.in:
			batch = append(batch, p)
		case <-tick.C:
			if w.unseal > 0 && w.opts.now().Sub(w.sealed) >= w.opts.checkpointInterval {
				if err := w.commit(nil, CheckpointPeriodic); err != nil {
					w.log.Warn("audit checkpoint failed; will retry", "err", err)
				}
			}
			continue
		case <-w.quit:
			w.drain(batch)
			return
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case p := <-w.in:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		w.commitBatch(w.awaitSync(batch))
	}
}

// awaitSync holds a small batch back while the last batch's sync runs,
// taking in the appends that arrive meanwhile, and returns it once that
// sync is done or the batch has grown to pipelineMin.
//
// Writing a batch while the last one is being synced overlaps the two
// (the store's throughput at high rates), but SQLite's WAL frames are
// 24 bytes longer than a page, so every commit rewrites the page the
// last commit ended in while the sync is sending it to the disk. On the
// VM of BENCHMARKS.md ("Audit", "Writing while the disk writes") the
// writer and the sync then stalled together, 10-17 ms once every 100 ms,
// and BenchmarkDiskWriteWhileSync does the same without SQLite (whole
// pages written that way hardly stall). At 5,000 events/s those stalls
// were the whole p99: 14-16 ms, and 5.4 ms with every batch held back,
// but then only 20,500 appends/s in a closed loop against 30,400. Small
// batches wait, large ones overlap.
func (w *writer) awaitSync(batch []*pending) []*pending {
	if w.syncer == nil {
		return batch
	}
	for len(batch) < min(pipelineMin, cap(batch)) && w.unsynced.Load() > 0 {
		select {
		case <-w.synced:
		case p := <-w.in:
			batch = append(batch, p)
		case <-w.quit:
			return batch
		}
	}
	return batch
}

// pipelineMin is the smallest batch written while the last is synced
// (see awaitSync). 8, 16 and 32 measured alike at 5,000 and 20,000
// events/s; at 2,000/s 16 gave the lowest p99 (2.8 ms against 3.2 at 32
// and 4.4 at 64).
const pipelineMin = 16

// watchOthers reads the other chains' heads every checkpoint interval,
// off the commit path (on the store's readers), until the writer stops.
// Other replicas' chains run for as long as this one: witnessing them
// only at this chain's start would leave everything they wrote since to
// their own checkpoints, which can be deleted with it.
func (w *writer) watchOthers() {
	tick := time.NewTicker(w.opts.checkpointInterval)
	defer tick.Stop()
	for {
		select {
		case <-w.quit:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), w.opts.commitTimeout)
		heads, err := otherHeads(ctx, w.db, w.id)
		cancel()
		if err != nil {
			w.log.Warn("audit: reading the other chains' heads failed; the next checkpoint witnesses what was read before", "err", err)
			continue
		}
		w.others.Store(&heads)
	}
}

// newHeads returns the other chains' heads that changed since this chain
// last witnessed them.
func (w *writer) newHeads() []ChainHead {
	p := w.others.Load()
	if p == nil {
		return nil
	}
	var out []ChainHead
	for _, h := range *p {
		if w.witnessed[h.Writer] != h {
			out = append(out, h)
		}
	}
	return out
}

// drain commits what is still queued at close, then the final checkpoint.
func (w *writer) drain(batch []*pending) {
	for {
		select {
		case p := <-w.in:
			batch = append(batch, p)
			if len(batch) < cap(batch) {
				continue
			}
		default:
		}
		if len(batch) == 0 {
			break
		}
		w.commitBatch(batch)
		batch = batch[:0]
	}
	if w.syncer != nil {
		close(w.syncs)
		<-w.syncDone
	}
	if err := w.commit(nil, CheckpointFinal); err != nil {
		w.lastErr = fmt.Errorf("audit: final checkpoint of chain %s: %w", w.id, err)
	}
}

// commitBatch commits the batch's live appends and answers each one.
func (w *writer) commitBatch(batch []*pending) {
	live := batch[:0]
	for _, p := range batch {
		if err := p.ctx.Err(); err != nil {
			p.done <- err // the caller has gone: drop, never written
			continue
		}
		live = append(live, p)
	}
	if len(live) == 0 {
		return
	}
	var kind CheckpointKind
	if w.unseal+len(live) >= w.opts.checkpointEvery {
		kind = CheckpointPeriodic
	}
	err := w.commit(live, kind)
	if err == nil && w.syncer != nil {
		// Written, not yet durable: syncLoop answers once it is. The
		// queue is short, so a slow disk holds run back rather than
		// letting written-but-unsynced batches pile up.
		w.unsynced.Add(1)
		w.syncs <- slices.Clone(live)
		return
	}
	for _, p := range live {
		p.done <- err
	}
}

// syncQueue bounds the written batches waiting for their sync.
const syncQueue = 0

// syncLoop makes written batches durable and answers their appends. One
// sync covers every batch written before it started, so batches that
// queued while the last sync ran share the next one.
func (w *writer) syncLoop() {
	defer close(w.syncDone)
	for b := range w.syncs {
		batches := [][]*pending{b}
	more:
		for {
			select {
			case b, ok := <-w.syncs:
				if !ok {
					break more
				}
				batches = append(batches, b)
			default:
				break more
			}
		}
		// A flush that outlasts the commit timeout (a hung disk) fails its
		// appends then, not when the kernel gives up, and refuses new ones
		// until it returns (a failed flush then fails every append, as sync
		// says).
		fired := make(chan struct{})
		watchdog := time.AfterFunc(w.opts.commitTimeout, func() {
			defer close(fired)
			w.stalled.Store(true)
			w.log.Error("audit store flush has not completed; refusing appends until it does", "after", w.opts.commitTimeout)
			answer(batches, errFlushStalled)
		})
		err := w.sync()
		if !watchdog.Stop() {
			<-fired
		}
		w.stalled.Store(false)
		w.unsynced.Add(-int64(len(batches))) // run may write again (awaitSync)
		select {
		case w.synced <- struct{}{}:
		default:
		}
		answer(batches, err) // those the watchdog answered keep its answer
		if err == nil {
			for _, f := range w.notify {
				f()
			}
		}
	}
}

// errFlushStalled answers the appends of a flush that outlasted the commit
// timeout, and every append while it lasts.
var errFlushStalled = errors.New("audit store unavailable: the disk has not completed a flush within the commit timeout; nothing is recorded until it does")

// answer gives each append of batches err, unless it was answered already
// (done holds one answer).
func answer(batches [][]*pending, err error) {
	for _, b := range batches {
		for _, p := range b {
			select {
			case p.done <- err:
			default:
			}
		}
	}
}

// sync makes everything written so far durable. Once a sync has failed
// every later one fails too: the kernel may have dropped the pages it
// could not write, and a later sync that succeeds says nothing about
// them (nor about what was written after them, which recovery would cut
// off). The store refuses appends until sluice is restarted.
func (w *writer) sync() error {
	if p := w.syncErr.Load(); p != nil {
		return *p
	}
	if err := w.syncer.sync(); err != nil {
		err = fmt.Errorf("audit store: flushing to disk failed, events since the last flush may be lost; restart sluice: %w", err)
		w.syncErr.Store(&err)
		w.log.Error("audit store sync failed; refusing every append until restart", "err", err)
		return err
	}
	return nil
}

// commit writes the appends in batch (their records filled in on
// success) and, when kind is set, a checkpoint of the resulting head, in
// one transaction.
func (w *writer) commit(batch []*pending, kind CheckpointKind) error {
	if p := w.syncErr.Load(); p != nil {
		return *p
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.opts.commitTimeout)
	defer cancel()
	if w.resync {
		// After a failed commit the database may or may not hold the batch
		// (a lost COMMIT reply): continue from what it holds.
		seq, head, err := chainHead(ctx, w.db, w.id)
		if err != nil {
			return fmt.Errorf("audit store unavailable: %w", err)
		}
		w.seq, w.head, w.resync = seq, head, false
	}
	seq, head := w.seq, w.head
	evs := make([]eventRow, len(batch))
	for i, p := range batch {
		seq++
		p.rec.Writer, p.rec.Seq, p.rec.Prev = w.id, seq, head
		body := sealEncoded(&p.rec, p.enc, w.idJSON)
		head = p.rec.Hash
		evs[i] = eventRow{writer: w.id, seq: seq, hash: p.rec.Hash[:], prev: p.rec.Prev[:], body: string(body), ix: p.enc.ix}
	}
	var cps []checkpointRow
	var witnessed []ChainHead
	now := w.opts.now()
	if kind != "" {
		// Every checkpoint witnesses the heads that moved since the last:
		// at the start, all of them.
		cp := Checkpoint{Writer: w.id, Kind: kind, Seq: seq, Head: head, Time: now, Witness: w.newHeads()}
		witnessed = cp.Witness
		body, err := w.signer.sign(&cp)
		if err != nil {
			return err
		}
		cps = append(cps, checkpointRow{writer: w.id, kind: string(kind), seq: seq, body: string(body), sig: cp.Sig})
	}
	if err := w.db.commit(ctx, evs, cps); err != nil {
		w.resync = true
		return fmt.Errorf("audit store unavailable, event not recorded: %w", err)
	}
	w.seq, w.head = seq, head
	for _, h := range witnessed {
		w.witnessed[h.Writer] = h
	}
	if kind != "" {
		w.unseal, w.sealed = 0, now
	} else {
		w.unseal += len(batch)
	}
	if w.syncer != nil {
		if len(batch) > 0 {
			return nil // syncLoop makes it durable and notifies
		}
		// A checkpoint alone (start, timer, close) is synced here: the
		// chain's signed start must be on disk before any append.
		return w.sync()
	}
	if len(batch) > 0 {
		for _, f := range w.notify {
			f()
		}
	}
	return nil
}

// close stops taking appends, commits what is queued, seals the chain
// with a final checkpoint and waits for run to return.
func (w *writer) close() error {
	w.closeOnce.Do(func() { close(w.quit) })
	<-w.done
	return w.lastErr
}
