package grants

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// redisStores hands each test a store of its own (its own key prefix and
// event channel) on one redis-server.
type redisStores struct {
	url string
	n   atomic.Int64
}

func newRedisStores(t testing.TB) *redisStores {
	return &redisStores{url: "redis://" + testenv.StartRedis(t) + "/0"}
}

func (r *redisStores) open(t testing.TB, opts ...Option) *RedisStore {
	prefix := "test" + strings.NewReplacer("/", ":", " ", "_").Replace(t.Name()) + ":" + string(rune('a'+r.n.Add(1)%26)) + ":"
	s, err := OpenRedis(r.url, append(opts, WithPrefix(prefix))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRedisStore(t *testing.T) {
	stores := newRedisStores(t)
	runStoreSuite(t, func(t *testing.T, opts ...Option) Store { return stores.open(t, opts...) })

	t.Run("KeysExpire", func(t *testing.T) {
		clk := newFakeClock()
		s := stores.open(t, WithClock(clk), WithRetention(time.Hour), WithPendingTTL(10*time.Minute))
		ctx := t.Context()
		g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
		rdb := s.rdb
		ttl := func(key string) time.Duration {
			t.Helper()
			d, err := rdb.PTTL(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		// Pending: kept until the pending TTL plus the retention.
		if d := ttl(s.grantKey(g.ID)); d <= 69*time.Minute || d > 70*time.Minute {
			t.Errorf("pending grant TTL %s, want 70m", d)
		}
		for _, k := range []string{s.allKey(), s.targetKey("orders-db"), s.subjectKey(agent.Subject)} {
			if d := ttl(k); d <= 0 {
				t.Errorf("index %s has no TTL (%s)", k, d)
			}
		}
		if _, err := s.Approve(ctx, g.ID, bob, "", clk.Now()); err != nil {
			t.Fatal(err)
		}
		// Approved for 15m: kept 15m plus the retention.
		if d := ttl(s.grantKey(g.ID)); d <= 74*time.Minute || d > 75*time.Minute {
			t.Errorf("approved grant TTL %s, want 75m", d)
		}
		if d := ttl(s.activeKey(agent.Issuer, agent.Subject, "orders-db")); d <= 15*time.Minute || d > 16*time.Minute {
			t.Errorf("active index TTL %s, want 15m plus slack", d)
		}
	})

	t.Run("ListDropsForgottenGrants", func(t *testing.T) {
		s := stores.open(t)
		g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
		keep := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassRead))
		s.rdb.Del(t.Context(), s.grantKey(g.ID)) // as its TTL would
		got, err := s.List(t.Context(), Filter{})
		if err != nil || len(got) != 1 || got[0].ID != keep.ID {
			t.Fatalf("List = %v, %v; want only %s", got, err, keep.ID)
		}
		if n, _ := s.rdb.ZCard(t.Context(), s.allKey()).Result(); n != 1 {
			t.Errorf("index still holds %d entries, want 1", n)
		}
	})
}

// TestRedisDown: a store whose Redis is unreachable returns errors, within
// the ctx deadline, from every call; the caller fails closed.
func TestRedisDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s, err := OpenRedis("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	if a, err := s.Active(ctx, agent, "orders-db", time.Now()); err == nil {
		t.Errorf("Active = %v with Redis down, want an error", a)
	}
	if _, err := s.Create(ctx, classReq(agent, "orders-db", policies.ClassWrite)); err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("Create with Redis down: %v, want a connection error", err)
	}
	if _, err := s.Approve(ctx, "gr_x", bob, "", time.Now()); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Approve with Redis down: %v, want a connection error", err)
	}
	if _, err := s.Subscribe(ctx); err == nil {
		t.Error("Subscribe with Redis down succeeded")
	}
	// Refused connections fail fast (OpenRedis's defaults), well inside
	// the deadline.
	if d := time.Since(start); d > time.Second {
		t.Errorf("calls took %s; a refused connection should fail at once", d)
	}
}

// TestRedisHung: a Redis that accepts connections but never answers ends
// at the ctx deadline, not later.
func TestRedisHung(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		// Holds the accepted connections open, silent, until the test ends.
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	defer func() { l.Close(); <-done }()
	rdb := redis.NewClient(&redis.Options{Addr: l.Addr().String(), ContextTimeoutEnabled: true, MaxRetries: -1})
	defer rdb.Close()
	s := NewRedisStore(rdb)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := s.Active(ctx, agent, "orders-db", time.Now()); err == nil {
		t.Error("Active against a hung Redis succeeded")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Active took %s, past the 300ms deadline", d)
	}
}

func TestOpenRedisBadURL(t *testing.T) {
	if _, err := OpenRedis("http://127.0.0.1:6379"); err == nil {
		t.Error("OpenRedis accepted an http URL")
	}
}

// TestForward: the Redis subscriber's cut-off policy, with messages already
// waiting: two fit the buffer, the third cuts the subscriber off.
func TestForward(t *testing.T) {
	msgs := make(chan *redis.Message, 10)
	msgs <- &redis.Message{Payload: "not json"}
	for i := range 5 {
		b, err := json.Marshal(Event{Kind: EventRequested, Grant: Grant{ID: fmt.Sprint("gr_", i), State: StatePending, Duration: time.Minute}})
		if err != nil {
			t.Fatal(err)
		}
		msgs <- &redis.Message{Payload: string(b)}
	}
	close(msgs)
	out := make(chan Event, 2)
	forward(t.Context(), msgs, out)
	var ids []string
	for ev := range out {
		ids = append(ids, ev.Grant.ID)
	}
	if want := []string{"gr_0", "gr_1"}; !slices.Equal(ids, want) {
		t.Errorf("forwarded %v, want %v then the cut-off", ids, want)
	}
}
