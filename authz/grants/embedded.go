package grants

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// EmbeddedStore keeps grants in memory for a single node. Grants are lost
// on restart, which fails closed: access they gave has to be asked again.
type EmbeddedStore struct {
	cfg config

	// mu owns everything below. Transitions hold it while they publish,
	// so subscribers see events in transition order; publishing never
	// blocks (see Subscribe).
	mu     sync.RWMutex
	grants map[string]*Grant
	// byAge is the grant IDs in creation order, oldest first.
	byAge []string
	// active indexes approved grants by principal and target; entries
	// are removed on revoke and pruned after expiry.
	active    map[activeKey][]string
	subs      map[*subscriber]struct{}
	lastPrune time.Time
}

type activeKey struct{ issuer, subject, target string }

type subscriber struct{ ch chan Event }

var _ Store = (*EmbeddedStore)(nil)

// pruneEvery is how often Create looks for grants past their retention.
const pruneEvery = time.Minute

// NewEmbeddedStore returns an empty in-memory store.
func NewEmbeddedStore(opts ...Option) *EmbeddedStore {
	return &EmbeddedStore{
		cfg:    newConfig(opts),
		grants: map[string]*Grant{},
		active: map[activeKey][]string{},
		subs:   map[*subscriber]struct{}{},
	}
}

// Create records a pending request.
func (s *EmbeddedStore) Create(ctx context.Context, in Grant) (Grant, error) {
	now := s.cfg.clock.Now()
	g, err := s.cfg.newGrant(in, now)
	if err != nil {
		return Grant{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastPrune) >= pruneEvery {
		s.prune(now)
	}
	if _, ok := s.grants[g.ID]; ok {
		return Grant{}, fmt.Errorf("%w: grant %s already exists", ErrInvalid, g.ID)
	}
	stored := g.clone()
	s.grants[g.ID] = &stored
	s.byAge = append(s.byAge, g.ID)
	s.publish(Event{Kind: EventRequested, Grant: g})
	return g, nil
}

// Get returns a grant with its state as of now.
func (s *EmbeddedStore) Get(ctx context.Context, id string) (Grant, error) {
	now := s.cfg.clock.Now()
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, ok := s.grants[id]
	if !ok {
		return Grant{}, fmt.Errorf("grant %s: %w", id, ErrNotFound)
	}
	out := g.clone()
	out.State = out.StateAt(now)
	return out, nil
}

// List returns the grants that match, newest first.
func (s *EmbeddedStore) List(ctx context.Context, f Filter) ([]Grant, error) {
	now := s.cfg.clock.Now()
	limit := f.limit()
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Grant
	for _, id := range slices.Backward(s.byAge) {
		g := s.grants[id]
		if !f.match(*g, now) {
			continue
		}
		c := g.clone()
		c.State = c.StateAt(now)
		if out = append(out, c); len(out) == limit {
			break
		}
	}
	return out, nil
}

// Approve approves a pending request.
func (s *EmbeddedStore) Approve(ctx context.Context, id string, approver policies.Principal, note string, now time.Time) (Grant, error) {
	return s.transition(id, StateApproved, approver, note, now)
}

// Deny denies a pending request.
func (s *EmbeddedStore) Deny(ctx context.Context, id string, approver policies.Principal, note string, now time.Time) (Grant, error) {
	return s.transition(id, StateDenied, approver, note, now)
}

// Revoke ends an approved grant.
func (s *EmbeddedStore) Revoke(ctx context.Context, id string, by policies.Principal, note string, now time.Time) (Grant, error) {
	return s.transition(id, StateRevoked, by, note, now)
}

func (s *EmbeddedStore) transition(id string, to State, by policies.Principal, note string, now time.Time) (Grant, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.grants[id]
	if !ok {
		return Grant{}, fmt.Errorf("grant %s: %w", id, ErrNotFound)
	}
	next, persist, err := apply(cur.clone(), to, by, note, now)
	if !persist {
		return Grant{}, err
	}
	k := activeKey{next.Requester.Issuer, next.Requester.Subject, next.Target}
	switch {
	case next.State == StateApproved:
		s.active[k] = append(s.active[k], id)
	case cur.State == StateApproved:
		s.active[k] = slices.DeleteFunc(s.active[k], func(a string) bool { return a == id })
		if len(s.active[k]) == 0 {
			delete(s.active, k)
		}
	}
	stored := next.clone()
	s.grants[id] = &stored
	s.publish(Event{Kind: eventFor(next.State), Grant: next})
	if err != nil {
		return Grant{}, err
	}
	return next, nil
}

// Active returns the principal's approved, unexpired grants on target.
func (s *EmbeddedStore) Active(ctx context.Context, p policies.Principal, target string, now time.Time) ([]policies.Grant, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := s.active[activeKey{p.Issuer, p.Subject, target}]
	if len(ids) == 0 {
		return nil, nil
	}
	out := make([]policies.Grant, 0, len(ids))
	for _, id := range ids {
		if g := s.grants[id]; g.StateAt(now) == StateApproved {
			out = append(out, g.Policy())
		}
	}
	return out, nil
}

// Subscribe delivers every transition until ctx ends. A subscriber more
// than the subscriber buffer behind is cut off: its channel is closed.
func (s *EmbeddedStore) Subscribe(ctx context.Context) (<-chan Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sub := &subscriber{ch: make(chan Event, s.cfg.subBuffer)}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.drop(sub)
	})
	return sub.ch, nil
}

// Close stops nothing: the store has no resources. It is here so that the
// two stores close alike.
func (s *EmbeddedStore) Close() error { return nil }

// publish sends ev to every subscriber without blocking. Callers hold mu.
func (s *EmbeddedStore) publish(ev Event) {
	for sub := range s.subs {
		select {
		case sub.ch <- Event{Kind: ev.Kind, Grant: ev.Grant.clone()}:
		default:
			s.drop(sub)
		}
	}
}

// drop closes a subscriber once. Callers hold mu.
func (s *EmbeddedStore) drop(sub *subscriber) {
	if _, ok := s.subs[sub]; ok {
		delete(s.subs, sub)
		close(sub.ch)
	}
}

// prune forgets grants past their retention, and expired active entries.
// Callers hold mu.
func (s *EmbeddedStore) prune(now time.Time) {
	s.lastPrune = now
	s.byAge = slices.DeleteFunc(s.byAge, func(id string) bool {
		if now.Before(s.grants[id].endsAt().Add(s.cfg.retention)) {
			return false
		}
		delete(s.grants, id)
		return true
	})
	for k, ids := range s.active {
		ids = slices.DeleteFunc(ids, func(id string) bool {
			g, ok := s.grants[id]
			return !ok || g.StateAt(now) != StateApproved
		})
		if len(ids) == 0 {
			delete(s.active, k)
		} else {
			s.active[k] = ids
		}
	}
}
