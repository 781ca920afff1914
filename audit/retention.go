package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// PruneResult says what Prune removed.
type PruneResult struct {
	Events int64
	// Chains maps each chain pruned to its new base: the last seq removed.
	Chains map[string]int64
}

// Prune removes, chain by chain, the prefix of events older than before.
// In the same transaction it writes a signed retention checkpoint naming
// the last removed seq and its hash, the base the rest of the chain links
// to, and drops the checkpoints that only sealed removed events. A chain's
// prefix ends at its last event older than before: an event stamped a
// little out of order with its neighbours goes with them.
func (s *store) Prune(ctx context.Context, before time.Time) (PruneResult, error) {
	res := PruneResult{Chains: map[string]int64{}}
	if s.opts.readOnly || s.opts.signer == nil {
		return res, errReadOnly
	}
	ws, err := writers(ctx, s.db)
	if err != nil {
		return res, fmt.Errorf("audit retention: %w", err)
	}
	for _, w := range ws {
		for {
			removed, base, err := s.pruneChunk(ctx, w, before)
			if err != nil {
				return res, fmt.Errorf("audit retention: chain %s: %w", w, err)
			}
			if removed == 0 {
				break
			}
			res.Events += removed
			res.Chains[w] = base
		}
	}
	return res, nil
}

// pruneChunk removes at most pruneChunk events of one chain in one
// transaction, so that retention never holds the writer's connection (or
// Postgres row locks) for long.
func (s *store) pruneChunk(ctx context.Context, w string, before time.Time) (removed, base int64, err error) {
	err = s.db.tx(ctx, "retention", func(q querier) error {
		var hb []byte
		err := queryOne(ctx, q, "SELECT seq, hash FROM audit_events WHERE writer = ? AND seq = "+
			"(SELECT max(seq) FROM (SELECT seq FROM audit_events WHERE writer = ? AND time_ns < ? ORDER BY seq LIMIT ?) AS oldest)",
			[]any{w, w, before.UnixNano(), pruneChunk}, &base, &hb)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		head, _ := hashFrom(hb)
		cp := Checkpoint{Writer: w, Kind: CheckpointRetention, Seq: base, Head: head, Time: s.opts.now()}
		body, err := s.opts.signer.sign(&cp)
		if err != nil {
			return err
		}
		row := checkpointRow{writer: w, kind: string(cp.Kind), seq: base, body: string(body), sig: cp.Sig}
		if _, err := q.exec(ctx, insertCheckpointSQL, row.args()...); err != nil {
			return err
		}
		if removed, err = q.exec(ctx, "DELETE FROM audit_events WHERE writer = ? AND seq <= ?", w, base); err != nil {
			return err
		}
		_, err = q.exec(ctx, "DELETE FROM audit_checkpoints WHERE writer = ? AND seq < ?", w, base)
		return err
	})
	return removed, base, err
}

// pruneChunk bounds one retention transaction.
const pruneChunk = 5000

// RunRetention prunes events older than retention() now, then every
// interval, until ctx ends; retention is asked at each run, so a reloaded
// audit.retention takes effect at the next. Failures are logged and
// retried at the next run: retention is housekeeping, never a reason to
// stop auditing.
func RunRetention(ctx context.Context, s Store, retention func() time.Duration, interval time.Duration, now func() time.Time, log *slog.Logger) {
	if now == nil {
		now = time.Now
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		res, err := s.Prune(ctx, now().Add(-retention()))
		switch {
		case err != nil:
			log.Warn("audit retention failed; will retry", "err", err)
		case res.Events > 0:
			log.Info("audit retention", "removed_events", res.Events, "chains", len(res.Chains))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
