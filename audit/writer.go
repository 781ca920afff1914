package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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

	// owned by run
	seq     int64
	head    Hash
	resync  bool // the last commit failed: reread the head before the next
	unseal  int  // events since the last checkpoint
	sealed  time.Time
	lastErr error
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
		in: make(chan *pending, o.maxBatch), quit: make(chan struct{}), done: make(chan struct{})}
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
		w.commitBatch(batch)
	}
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
	for _, p := range live {
		p.done <- err
	}
}

// commit writes the appends in batch (their records filled in on
// success) and, when kind is set, a checkpoint of the resulting head, in
// one transaction.
func (w *writer) commit(batch []*pending, kind CheckpointKind) error {
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
	now := w.opts.now()
	if kind != "" {
		cp := Checkpoint{Writer: w.id, Kind: kind, Seq: seq, Head: head, Time: now}
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
	if kind != "" {
		w.unseal, w.sealed = 0, now
	} else {
		w.unseal += len(batch)
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
