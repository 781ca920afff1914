package grants

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Re-subscription after the event stream is lost (Redis restarted, a slow
// subscriber cut off) starts after activeCacheRetry and backs off to
// activeCacheMaxRetry while it keeps failing.
const (
	activeCacheRetry    = time.Second
	activeCacheMaxRetry = 30 * time.Second
)

// ActiveCache answers Active from memory, kept exact by the store's own
// event stream: any transition of a principal's grant on a target drops
// that entry. It exists because Active is on every decision's path and a
// Redis round trip (about 70 µs on loopback) would by itself exceed the
// ext_authz budget (design.md section 10).
//
// Correctness rests on three rules:
//   - the cache is used only while subscribed; when the stream is lost it
//     is emptied and bypassed until Subscribe succeeds again;
//   - a miss stores what it read only if no event arrived while it read
//     (a generation counter), so a revoke racing a miss is never lost;
//   - expiry is applied at read time from the cached ExpiresAt, with the
//     caller's clock, exactly as the stores do.
//
// A revocation therefore takes effect when its event arrives: sub-
// millisecond in process, one Redis publish later across replicas.
type ActiveCache struct {
	Store
	log *slog.Logger

	mu      sync.Mutex
	live    bool
	gen     uint64
	entries map[cacheKey][]Grant
}

type cacheKey struct{ issuer, subject, target string }

// NewActiveCache wraps s; the cache follows s's events until ctx ends.
func NewActiveCache(ctx context.Context, s Store, log *slog.Logger) *ActiveCache {
	c := &ActiveCache{Store: s, log: log, entries: map[cacheKey][]Grant{}}
	go c.follow(ctx)
	return c
}

// Active returns the principal's approved, unexpired grants on target.
func (c *ActiveCache) Active(ctx context.Context, p policies.Principal, target string, now time.Time) ([]policies.Grant, error) {
	key := cacheKey{p.Issuer, p.Subject, target}
	c.mu.Lock()
	live, gen := c.live, c.gen
	cached, hit := c.entries[key]
	c.mu.Unlock()
	if !live {
		return c.Store.Active(ctx, p, target, now)
	}
	if !hit {
		var err error
		cached, err = c.approved(ctx, key)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		if c.live && c.gen == gen {
			c.entries[key] = cached
		}
		c.mu.Unlock()
	}
	var out []policies.Grant
	for _, g := range cached {
		if g.StateAt(now) == StateApproved {
			out = append(out, g.Policy())
		}
	}
	return out, nil
}

// approved reads the principal's approved grants on the target, with
// their expiry, from the store.
func (c *ActiveCache) approved(ctx context.Context, k cacheKey) ([]Grant, error) {
	all, err := c.Store.List(ctx, Filter{Target: k.target, Subject: k.subject, State: StateApproved, Limit: MaxListLimit})
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, g := range all {
		if g.Requester.Issuer == k.issuer {
			out = append(out, g)
		}
	}
	return out, nil
}

// follow keeps the cache subscribed, dropping entries as events arrive.
func (c *ActiveCache) follow(ctx context.Context) {
	retry, down := activeCacheRetry, false
	for {
		events, err := c.Store.Subscribe(ctx)
		if err == nil {
			if down {
				c.log.Info("grant event stream restored; grant lookups are cached again")
			}
			retry, down = activeCacheRetry, false
			c.setLive(true)
			for ev := range events {
				c.mu.Lock()
				c.gen++
				delete(c.entries, cacheKey{ev.Grant.Requester.Issuer, ev.Grant.Requester.Subject, ev.Grant.Target})
				c.mu.Unlock()
			}
			err = errors.New("the event stream ended (a slow subscriber is cut off, or the store went away)")
		}
		c.setLive(false)
		if ctx.Err() != nil {
			return
		}
		if !down { // once per outage, not once per retry
			c.log.Warn("grant event stream lost; grant lookups go to the store until it is back", "err", err)
			down = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
		retry = min(2*retry, activeCacheMaxRetry)
	}
}

func (c *ActiveCache) setLive(live bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.live = live
	c.gen++
	clear(c.entries)
}
