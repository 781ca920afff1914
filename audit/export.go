package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Exporter ships committed records somewhere else (a SIEM, a file). The
// store is the record; an exporter is a copy: it runs behind the store,
// from a cursor kept in the store, and never delays or fails an Append.
type Exporter interface {
	// Name identifies the exporter's cursor; keep it stable across restarts.
	Name() string
	// Export delivers records in chain order; an error means none of them
	// may be assumed delivered, and they are sent again.
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
// shipped from its start.
type shipper struct {
	db      dialect
	exp     Exporter
	own     string
	log     *slog.Logger
	now     func() time.Time
	wakeC   chan struct{}
	quit    chan struct{}
	done    chan struct{}
	backoff time.Duration
	orphan  time.Duration
}

func startShipper(db dialect, e Exporter, own string, o options) *shipper {
	sh := &shipper{db: db, exp: e, own: own, log: o.log.With("audit_exporter", e.Name()), now: o.now, orphan: o.orphanAfter,
		wakeC: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
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
	<-sh.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sh.exp.Shutdown(ctx); err != nil {
		sh.log.Warn("audit exporter shutdown", "err", err)
	}
}

func (sh *shipper) run() {
	defer close(sh.done)
	// A pass is never cancelled half-way (that would send a batch again
	// for want of its cursor update); passTimeout bounds it instead, and
	// stop waits for it.
	if err := sh.init(); err != nil {
		sh.log.Warn("audit exporter: cannot read cursors; will retry", "err", err)
	}
	sweep := time.NewTicker(sweepInterval)
	defer sweep.Stop()
	all := true // the first pass looks at every chain
	for {
		ctx, cancel := context.WithTimeout(context.Background(), passTimeout)
		err := sh.pass(ctx, all)
		cancel()
		all = false
		wait := sweepInterval
		if err != nil {
			sh.backoff = min(max(2*sh.backoff, 100*time.Millisecond), maxBackoff)
			wait = sh.backoff
			sh.log.Warn("audit export failed; the store keeps the records and export will catch up", "err", err, "retry_in", wait)
		} else {
			sh.backoff = 0
		}
		wakeC := sh.wakeC
		if err != nil {
			wakeC = nil // back off: commits do not hurry a failing exporter
		}
		timer := time.NewTimer(wait)
		select {
		case <-sh.quit:
			timer.Stop()
			// Best effort for what the last commits added; what does not go
			// now goes after the next start.
			fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = sh.pass(fctx, false)
			fcancel()
			return
		case <-wakeC:
		case <-sweep.C:
			all = true
		case <-timer.C:
			all = err != nil
		}
		timer.Stop()
	}
}

// init gives a new exporter cursors at the current chain heads.
func (sh *shipper) init() error {
	ctx, cancel := context.WithTimeout(context.Background(), passTimeout)
	defer cancel()
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

// pass ships its own chain and, when all is set, every chain idle for
// orphanAfter, each up to its head.
func (sh *shipper) pass(ctx context.Context, all bool) error {
	chains := []string{sh.own}
	if all {
		rs, err := sh.db.query(ctx, "SELECT writer FROM audit_events GROUP BY writer HAVING max(time_ns) < ?", sh.now().Add(-sh.orphan).UnixNano())
		if err != nil {
			return err
		}
		for rs.Next() {
			var w string
			if err := rs.Scan(&w); err != nil {
				rs.Close()
				return err
			}
			if w != sh.own {
				chains = append(chains, w)
			}
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return err
		}
	}
	var errs []error
	for _, w := range chains {
		if err := sh.ship(ctx, w); err != nil {
			errs = append(errs, fmt.Errorf("chain %s: %w", w, err))
		}
	}
	return errors.Join(errs...)
}

func (sh *shipper) ship(ctx context.Context, w string) error {
	var from int64
	err := queryOne(ctx, sh.db, "SELECT seq FROM audit_export_cursors WHERE exporter = ? AND writer = ?", []any{sh.exp.Name(), w}, &from)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	for {
		rs, err := sh.db.query(ctx, "SELECT seq, hash, body FROM audit_events WHERE writer = ? AND seq > ? ORDER BY seq LIMIT ?", w, from, exportBatch)
		if err != nil {
			return err
		}
		var recs []Record
		for rs.Next() {
			var e storedEvent
			if err := rs.Scan(&e.seq, &e.hash, &e.body); err != nil {
				rs.Close()
				return err
			}
			r, err := e.record()
			if err != nil {
				rs.Close()
				return fmt.Errorf("seq %d: %w", e.seq, err)
			}
			recs = append(recs, r)
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return err
		}
		if len(recs) == 0 {
			return nil
		}
		if err := sh.exp.Export(ctx, recs); err != nil {
			return err
		}
		from = recs[len(recs)-1].Seq
		if err := sh.setCursor(ctx, w, from); err != nil {
			return err
		}
		if len(recs) < exportBatch {
			return nil
		}
	}
}

func (sh *shipper) setCursor(ctx context.Context, w string, seq int64) error {
	_, err := sh.db.exec(ctx, "INSERT INTO audit_export_cursors (exporter, writer, seq) VALUES (?, ?, ?) "+
		"ON CONFLICT (exporter, writer) DO UPDATE SET seq = excluded.seq", sh.exp.Name(), w, seq)
	return err
}
