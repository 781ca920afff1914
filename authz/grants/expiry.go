package grants

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

// ExpiryRecorder writes a grant.expired audit event for each grant that
// lapses: an approval whose time ran out, or a request nobody answered in
// time. Stores compute expiry when they are read (StateAt) and no
// transition happens, so nothing else would record it.
//
// It polls the store's expired grants. Grants already expired when it
// starts are taken as recorded, so a restart does not repeat them; a grant
// that lapses while no sluice runs is therefore not recorded. Each replica
// records what it sees, so several replicas record one expiry several
// times (the events carry the grant id).
type ExpiryRecorder struct {
	Store Store
	Audit audit.Sink
	Now   func() time.Time
	Log   *slog.Logger
	// Every is the polling interval (default 10 s).
	Every time.Duration

	seen map[string]bool
}

// Run records expiries until ctx ends.
func (r *ExpiryRecorder) Run(ctx context.Context) {
	r.defaults()
	r.Poll(ctx, true)
	t := time.NewTicker(r.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.Poll(ctx, false)
		}
	}
}

func (r *ExpiryRecorder) defaults() {
	if r.Every <= 0 {
		r.Every = 10 * time.Second
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
}

// expiryRecordTimeout bounds one expiry's audit append, so that a store
// that hangs delays the next poll, not forever.
const expiryRecordTimeout = 5 * time.Second

// Poll records the grants that expired since the last poll; with quiet
// set it only learns what has expired so far.
func (r *ExpiryRecorder) Poll(ctx context.Context, quiet bool) {
	r.defaults()
	expired, err := r.Store.List(ctx, Filter{State: StateExpired, Limit: MaxListLimit})
	if err != nil {
		r.Log.Warn("grant expiries not checked: store unavailable", "err", err)
		return
	}
	now := make(map[string]bool, len(expired))
	for _, g := range expired {
		now[g.ID] = true
		if quiet || r.seen[g.ID] {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, expiryRecordTimeout)
		err := r.Audit.Append(actx, expiredEvent(g, r.Now()))
		cancel()
		if err != nil {
			r.Log.Error("AUDIT RECORD FAILED for a grant expiry; will retry", "grant_id", g.ID, "err", err)
			delete(now, g.ID) // try again next poll
		}
	}
	// Forget what the store no longer lists (deleted after its TTL): the
	// set stays the size of one listing.
	r.seen = now
}

func expiredEvent(g Grant, now time.Time) audit.Event {
	reason := "the approval's time ran out"
	if g.ExpiresAt.IsZero() {
		reason = "the request was not answered in time"
	}
	return audit.Event{Time: now.UTC(), Kind: audit.KindGrantExpired, Principal: g.Requester.Principal(), Target: g.Target,
		Request: g.Statement, Classes: slices.Clone([]policies.OperationClass(g.Classes)), Decision: StateExpired.String(),
		Reason: reason, GrantID: g.ID}
}
