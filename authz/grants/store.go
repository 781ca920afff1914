package grants

import (
	"context"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Store keeps grants. RedisStore shares them between replicas;
// EmbeddedStore keeps them in memory for a single node. Both behave the
// same (suite_test.go runs one suite against each).
//
// Methods that take now decide at that instant (the caller's clock); the
// others use the store's Clock. On error the returned Grant is the zero
// value. A store that cannot reach its backend returns an error, and the
// caller fails closed.
type Store interface {
	// Create records a pending request. The store sets State, CreatedAt
	// and PendingExpiresAt, and ID unless the request names one (from
	// NewID: the API records a request in the audit trail before it
	// exists, so it chooses the ID); the request names Requester, Target,
	// Classes or Statement and Fingerprint, Duration and Reason. Bad
	// input, or an ID already in use, is an ErrInvalid and stores nothing.
	Create(ctx context.Context, g Grant) (Grant, error)
	// Get returns a grant with its state as of now (StateAt).
	Get(ctx context.Context, id string) (Grant, error)
	// List returns the grants that match, newest first.
	List(ctx context.Context, f Filter) ([]Grant, error)
	// Approve approves a pending request from now until now+Duration.
	Approve(ctx context.Context, id string, approver policies.Principal, note string, now time.Time) (Grant, error)
	// Deny denies a pending request.
	Deny(ctx context.Context, id string, approver policies.Principal, note string, now time.Time) (Grant, error)
	// Revoke ends an approved grant at once.
	Revoke(ctx context.Context, id string, by policies.Principal, note string, now time.Time) (Grant, error)
	// Active returns the principal's (issuer and subject) approved,
	// unexpired grants on target. It is on every decision's path.
	Active(ctx context.Context, p policies.Principal, target string, now time.Time) ([]policies.Grant, error)
	// Subscribe delivers every transition from now on, in order, until
	// ctx ends; then the channel is closed. A subscriber that falls a
	// buffer behind is cut off (its channel is closed) rather than let it
	// slow transitions or silently miss events: it re-subscribes and
	// re-reads what it waits for.
	Subscribe(ctx context.Context) (<-chan Event, error)
}

// Filter selects grants for List. Zero fields match everything.
type Filter struct {
	Target string
	// Subject is the requester's subject.
	Subject string
	// State is matched against the state as of now (StateAt).
	State State
	// Limit caps the result: 0 means DefaultListLimit; at most
	// MaxListLimit.
	Limit int
}

// List limits.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

func (f Filter) limit() int {
	switch {
	case f.Limit <= 0:
		return DefaultListLimit
	case f.Limit > MaxListLimit:
		return MaxListLimit
	}
	return f.Limit
}

func (f Filter) match(g Grant, now time.Time) bool {
	return (f.Target == "" || f.Target == g.Target) &&
		(f.Subject == "" || f.Subject == g.Requester.Subject) &&
		(f.State == 0 || f.State == g.StateAt(now))
}

// Event is one transition: the grant as it is after it.
type Event struct {
	Kind  EventKind `json:"kind"`
	Grant Grant     `json:"grant"`
}

// Clock tells the time; tests inject one they can advance.
type Clock interface {
	Now() time.Time
}

// ClockFunc adapts a function to Clock.
type ClockFunc func() time.Time

// Now calls f.
func (f ClockFunc) Now() time.Time { return f() }

// Defaults for the options.
const (
	DefaultPendingTTL       = time.Hour
	DefaultRetention        = 24 * time.Hour
	DefaultPrefix           = "sluice:grants:"
	DefaultSubscriberBuffer = 256
)

// Option configures a store.
type Option func(*config)

type config struct {
	clock       Clock
	pendingTTL  time.Duration
	retention   time.Duration
	maxDuration time.Duration
	prefix      string
	subBuffer   int
}

func newConfig(opts []Option) config {
	c := config{
		clock:       ClockFunc(time.Now),
		pendingTTL:  DefaultPendingTTL,
		retention:   DefaultRetention,
		maxDuration: policies.DefaultGrantMaxDuration,
		prefix:      DefaultPrefix,
		subBuffer:   DefaultSubscriberBuffer,
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// WithClock sets the clock for Create, Get and List.
func WithClock(c Clock) Option { return func(cfg *config) { cfg.clock = c } }

// WithPendingTTL sets how long a request waits for a decision before it
// expires (default one hour).
func WithPendingTTL(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.pendingTTL = d
		}
	}
}

// WithRetention sets how long a grant stays readable after it ends
// (decided, revoked or expired); then the store forgets it. Default 24h;
// the audit trail is the permanent record.
func WithRetention(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.retention = d
		}
	}
}

// WithMaxDuration caps the duration a grant may be requested for (default
// policies.DefaultGrantMaxDuration; pass grants.max_duration).
func WithMaxDuration(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.maxDuration = d
		}
	}
}

// WithPrefix sets the Redis key prefix (default "sluice:grants:"); the
// event channel is prefix+"events". With Redis Cluster, put a hash tag in
// it ("{sluice}:grants:") so that a transition's keys share a slot.
// EmbeddedStore ignores it.
func WithPrefix(p string) Option { return func(c *config) { c.prefix = p } }

// WithSubscriberBuffer sets how many events a subscriber may fall behind
// before it is cut off (default 256).
func WithSubscriberBuffer(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.subBuffer = n
		}
	}
}
