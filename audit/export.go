package audit

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"
)

// Exporter ships committed records somewhere else (a SIEM, a file). The
// store is the record; an exporter is a copy: it runs behind the store,
// from a cursor kept in the store, and never delays or fails an Append.
type Exporter interface {
	// Name identifies the exporter's cursor; keep it stable across restarts.
	Name() string
	// Export delivers records in chain order (a stored record that cannot
	// be decoded is left out: a gap in seq, logged by the store); an error
	// means none of them may be assumed delivered, and they are sent
	// again. Export should return when ctx ends, even if its receiver
	// does not answer.
	Export(ctx context.Context, recs []Record) error
	Shutdown(ctx context.Context) error
}

// Shipping limits.
const (
	exportBatch = 512
	// orphanAfter is how long a chain must be idle before this process
	// ships it too: its writer has stopped (or crashed) with events its
	// own exporter never sent. A running replica ships its own chain.
	orphanAfter = time.Minute
	// sweepInterval is how often the shipper looks at chains other than
	// its own; its own chain it ships at each commit.
	sweepInterval = 30 * time.Second
	maxBackoff    = 30 * time.Second
	passTimeout   = 30 * time.Second
)

// shipper runs one exporter: one goroutine that owns its cursors.
//
// Delivery is at least once: the cursor advances only after Export
// returns nil, so a crash between the two sends a batch again. Records
// carry writer, seq and hash for a receiver to drop duplicates. An
// exporter seen for the first time starts at the heads of the chains that
// exist then (it does not replay history); a chain first seen later is
// shipped from its start. Nothing is shipped before the cursors are read:
// the shipper retries reading them, with backoff, until it can.
//
// Failures are kept per chain: a chain whose shipping failed is retried
// after its own backoff while the others ship as usual. A stored event
// that cannot be decoded (a tampered body, or a schema version or value
// from a newer sluice) is skipped with an error naming its chain and seq,
// counted (skipped), and the cursor moves past it: it must not stall its
// chain forever; `sluice audit verify` reports what is wrong with it.
type shipper struct {
	db    dialect
	exp   Exporter
	own   string
	log   *slog.Logger
	now   func() time.Time
	wakeC chan struct{}
	quit  chan struct{}
	done  chan struct{}
	// life is the context every pass derives from; stop cancels it when a
	// pass has not ended stopGrace after being asked to.
	life    context.Context
	cancel  context.CancelFunc
	orphan  time.Duration
	failing map[string]*retry // chains whose last shipping failed
	sweep   *retry            // set while listing idle chains fails
	// skipped counts the records passed over because they could not be
	// decoded.
	skipped atomic.Int64
}

// stopGrace is how long stop lets a pass in progress (an exporter stuck
// on its receiver, a blocked stdout) run on before cancelling it: what it
// could not deliver stays in the store and goes after the next start.
var stopGrace = 5 * time.Second

// retry is the backoff of something that failed: a chain, or the sweep.
type retry struct {
	backoff time.Duration
	at      time.Time // not before
}

// failed doubles the backoff (100ms to maxBackoff) and returns it.
func (r *retry) failed(now time.Time) time.Duration {
	r.backoff = min(max(2*r.backoff, 100*time.Millisecond), maxBackoff)
	r.at = now.Add(r.backoff)
	return r.backoff
}

func startShipper(db dialect, e Exporter, own string, o options) *shipper {
	sh := &shipper{db: db, exp: e, own: own, log: o.log.With("audit_exporter", e.Name()), now: o.now, orphan: o.orphanAfter,
		wakeC: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}), failing: map[string]*retry{}}
	sh.life, sh.cancel = context.WithCancel(context.Background())
	go sh.run()
	return sh
}

// wake tells the shipper its own chain has new records; it never blocks.
func (sh *shipper) wake() {
	select {
	case sh.wakeC <- struct{}{}:
	default:
	}
}

func (sh *shipper) stop() {
	close(sh.quit)
	grace := time.NewTimer(stopGrace)
	select {
	case <-sh.done:
	case <-grace.C:
		sh.log.Warn("audit exporter: still exporting at shutdown; giving up (the store keeps the records)")
		sh.cancel()
		<-sh.done
	}
	grace.Stop()
	sh.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sh.exp.Shutdown(ctx); err != nil {
		sh.log.Warn("audit exporter shutdown", "err", err)
	}
}

func (sh *shipper) run() {
	defer close(sh.done)
	if !sh.initRetrying() {
		return
	}
	// A pass is not cancelled half-way (that would send a batch again for
	// want of its cursor update) except by a stop that waited stopGrace;
	// passTimeout bounds it.
	sweep := time.NewTicker(sweepInterval)
	defer sweep.Stop()
	all := true // the first pass looks at every chain
	for {
		ctx, cancel := context.WithTimeout(sh.life, passTimeout)
		sh.pass(ctx, all)
		cancel()
		all = false
		var timer *time.Timer
		var timerC <-chan time.Time
		if next, ok := sh.nextRetry(); ok {
			timer = time.NewTimer(time.Until(next))
			timerC = timer.C
		}
		select {
		case <-sh.quit:
			// Best effort for what the last commits added; what does not go
			// now goes after the next start.
			fctx, fcancel := context.WithTimeout(sh.life, 5*time.Second)
			_ = sh.ship(fctx, sh.own)
			fcancel()
			return
		case <-sh.wakeC:
		case <-sweep.C:
			all = true
		case <-timerC:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// initRetrying runs init until it succeeds, backing off; false when the
// shipper is stopped first. Shipping without cursors would send every
// chain from its start.
func (sh *shipper) initRetrying() bool {
	var r retry
	for {
		ctx, cancel := context.WithTimeout(sh.life, passTimeout)
		err := sh.init(ctx)
		cancel()
		if err == nil {
			return true
		}
		d := r.failed(time.Now())
		sh.log.Warn("audit exporter: cannot read its cursors; nothing is shipped until it can", "err", err, "retry_in", d)
		t := time.NewTimer(d)
		select {
		case <-sh.quit:
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// nextRetry is the earliest time a failed chain or sweep is due again.
func (sh *shipper) nextRetry() (time.Time, bool) {
	var next time.Time
	for _, r := range sh.failing {
		if next.IsZero() || r.at.Before(next) {
			next = r.at
		}
	}
	if sh.sweep != nil && (next.IsZero() || sh.sweep.at.Before(next)) {
		next = sh.sweep.at
	}
	return next, !next.IsZero()
}

// init gives a new exporter cursors at the current chain heads.
func (sh *shipper) init(ctx context.Context) error {
	var n int
	if err := queryOne(ctx, sh.db, "SELECT count(*) FROM audit_export_cursors WHERE exporter = ?", []any{sh.exp.Name()}, &n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	ws, err := writers(ctx, sh.db)
	if err != nil {
		return err
	}
	for _, w := range ws {
		if w == sh.own {
			continue
		}
		seq, _, err := chainHead(ctx, sh.db, w)
		if err != nil {
			return err
		}
		if err := sh.setCursor(ctx, w, seq); err != nil {
			return err
		}
	}
	return nil
}

// idleChainsSQL lists the chains idle since a time (their last event
// older) that have events past this exporter's cursor. It walks the
// primary key (writer, seq): one seek per chain for the next writer (a
// loose index scan) and one for its last event, instead of reading every
// event; a chain already shipped costs one cursor lookup.
const idleChainsSQL = eventWritersCTE + `, head AS (
	SELECT w.writer,
		(SELECT e.seq FROM audit_events e WHERE e.writer = w.writer ORDER BY e.seq DESC LIMIT 1) AS seq,
		(SELECT e.time_ns FROM audit_events e WHERE e.writer = w.writer ORDER BY e.seq DESC LIMIT 1) AS time_ns
	FROM w WHERE w.writer IS NOT NULL
)
SELECT h.writer FROM head h LEFT JOIN audit_export_cursors c ON c.exporter = ? AND c.writer = h.writer
WHERE h.time_ns < ? AND h.seq > coalesce(c.seq, 0) ORDER BY h.writer`

// idleChains lists the chains other than its own that the sweep ships.
func (sh *shipper) idleChains(ctx context.Context) ([]string, error) {
	ws, err := queryStrings(ctx, sh.db, idleChainsSQL, sh.exp.Name(), sh.now().Add(-sh.orphan).UnixNano())
	return slices.DeleteFunc(ws, func(w string) bool { return w == sh.own }), err
}

// pass ships, each up to its head, its own chain, the failed chains whose
// backoff has passed and, when all is set (or a failed sweep is due),
// every chain idle for orphanAfter. A chain that fails backs off alone.
func (sh *shipper) pass(ctx context.Context, all bool) {
	now := time.Now()
	due := func(w string) bool { r := sh.failing[w]; return r == nil || !now.Before(r.at) }
	var chains []string
	if due(sh.own) {
		chains = append(chains, sh.own)
	}
	if all || (sh.sweep != nil && !now.Before(sh.sweep.at)) {
		idle, err := sh.idleChains(ctx)
		if err != nil {
			if sh.sweep == nil {
				sh.sweep = &retry{}
			}
			d := sh.sweep.failed(now)
			sh.log.Warn("audit export: cannot list idle chains; the store keeps the records and export will catch up", "err", err, "retry_in", d)
		} else {
			sh.sweep = nil
			for _, w := range idle {
				if sh.failing[w] == nil {
					chains = append(chains, w)
				}
			}
		}
	}
	for w, r := range sh.failing {
		if w != sh.own && !now.Before(r.at) {
			chains = append(chains, w)
		}
	}
	for _, w := range chains {
		err := sh.ship(ctx, w)
		if err == nil {
			delete(sh.failing, w)
			continue
		}
		r := sh.failing[w]
		if r == nil {
			r = &retry{}
			sh.failing[w] = r
		}
		d := r.failed(time.Now())
		sh.log.Warn("audit export failed; the store keeps the records and export will catch up",
			"writer", w, "err", err, "retry_in", d)
	}
}

// ship sends chain w from its cursor to its head.
func (sh *shipper) ship(ctx context.Context, w string) error {
	var from int64
	err := queryOne(ctx, sh.db, "SELECT seq FROM audit_export_cursors WHERE exporter = ? AND writer = ?", []any{sh.exp.Name(), w}, &from)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	type skip struct {
		seq int64
		err error
	}
	for {
		rs, err := sh.db.query(ctx, "SELECT seq, hash, body FROM audit_events WHERE writer = ? AND seq > ? ORDER BY seq LIMIT ?", w, from, exportBatch)
		if err != nil {
			return err
		}
		var recs []Record
		var skips []skip
		var last int64 // the last seq read, shipped or skipped
		n := 0
		for rs.Next() {
			var e storedEvent
			if err := rs.Scan(&e.seq, &e.hash, &e.body); err != nil {
				rs.Close()
				return err
			}
			n, last = n+1, e.seq
			r, err := e.record()
			if err != nil {
				skips = append(skips, skip{e.seq, err})
				continue
			}
			recs = append(recs, r)
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if len(recs) > 0 {
			if err := sh.exp.Export(ctx, recs); err != nil {
				return err
			}
		}
		if err := sh.setCursor(ctx, w, last); err != nil {
			return err
		}
		from = last
		for _, s := range skips {
			total := sh.skipped.Add(1)
			sh.log.Error("audit export: skipped a stored event that cannot be decoded (run sluice audit verify)",
				"writer", w, "seq", s.seq, "err", s.err, "skipped_total", total)
		}
		if n < exportBatch {
			return nil
		}
	}
}

func (sh *shipper) setCursor(ctx context.Context, w string, seq int64) error {
	_, err := sh.db.exec(ctx, "INSERT INTO audit_export_cursors (exporter, writer, seq) VALUES (?, ?, ?) "+
		"ON CONFLICT (exporter, writer) DO UPDATE SET seq = excluded.seq", sh.exp.Name(), w, seq)
	return err
}
