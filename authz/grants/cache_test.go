package grants

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// TestActiveCache: the cache agrees with the store through approve, expiry
// and revoke, for both stores.
func TestActiveCache(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) Store{
		"embedded": func(t *testing.T) Store { return NewEmbeddedStore() },
		"redis": func(t *testing.T) Store {
			s, err := OpenRedis("redis://" + testenv.StartRedis(t) + "/0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			store := open(t)
			c := NewActiveCache(ctx, store, slog.New(slog.DiscardHandler))
			agent := policies.Principal{Issuer: "https://idp", Subject: "agent-1"}
			dba := policies.Principal{Issuer: "https://idp", Subject: "dba"}
			waitLive(t, c)

			g, err := c.Create(ctx, Grant{Requester: IdentityOf(agent), Target: "db", Classes: Classes{policies.ClassWrite}, Duration: time.Minute, Reason: "fix"})
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			if got, _ := c.Active(ctx, agent, "db", now); len(got) != 0 {
				t.Fatalf("pending grant is active: %v", got)
			}
			if _, err := c.Approve(ctx, g.ID, dba, "", now); err != nil {
				t.Fatal(err)
			}
			eventually(t, "approved grant becomes active", func() bool {
				got, _ := c.Active(ctx, agent, "db", time.Now())
				return len(got) == 1 && got[0].ID == g.ID
			})
			// Served from memory now; expiry still applies by timestamp.
			if got, _ := c.Active(ctx, agent, "db", now.Add(2*time.Minute)); len(got) != 0 {
				t.Errorf("expired grant served from the cache: %v", got)
			}
			if _, err := c.Revoke(ctx, g.ID, dba, "", time.Now()); err != nil {
				t.Fatal(err)
			}
			eventually(t, "revoked grant leaves the cache", func() bool {
				got, _ := c.Active(ctx, agent, "db", time.Now())
				return len(got) == 0
			})
		})
	}
}

// TestActiveCacheBypassedWhenNotSubscribed: before the stream is up (or
// after it is lost) every lookup goes to the store.
func TestActiveCacheBypassedWhenNotSubscribed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	store := NewEmbeddedStore()
	c := NewActiveCache(ctx, store, slog.New(slog.DiscardHandler))
	waitLive(t, c)
	cancel()
	eventually(t, "cache goes offline", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return !c.live
	})
	agent := policies.Principal{Issuer: "https://idp", Subject: "agent-1"}
	g, _ := store.Create(context.Background(), Grant{Requester: IdentityOf(agent), Target: "db", Classes: Classes{policies.ClassRead}, Duration: time.Minute, Reason: "r"})
	store.Approve(context.Background(), g.ID, policies.Principal{Issuer: "https://idp", Subject: "dba"}, "", time.Now())
	if got, _ := c.Active(context.Background(), agent, "db", time.Now()); len(got) != 1 {
		t.Errorf("offline cache did not read through: %v", got)
	}
}

func waitLive(t *testing.T, c *ActiveCache) {
	t.Helper()
	eventually(t, "cache subscribed", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.live
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkActiveCachedRedis is Active through the cache in front of a real
// redis-server: after the first miss, a map lookup and an expiry filter.
func BenchmarkActiveCachedRedis(b *testing.B) {
	s, err := OpenRedis("redis://" + testenv.StartRedis(b) + "/0")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := NewActiveCache(ctx, s, slog.New(slog.DiscardHandler))
	agent := policies.Principal{Issuer: "https://idp", Subject: "agent-1"}
	g, _ := c.Create(ctx, Grant{Requester: IdentityOf(agent), Target: "db", Classes: Classes{policies.ClassWrite}, Duration: time.Hour, Reason: "r"})
	c.Approve(ctx, g.ID, policies.Principal{Issuer: "https://idp", Subject: "dba"}, "", time.Now())
	for {
		c.mu.Lock()
		live := c.live
		c.mu.Unlock()
		if got, _ := c.Active(ctx, agent, "db", time.Now()); live && len(got) == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if got, _ := c.Active(ctx, agent, "db", now); len(got) != 1 {
			b.Fatal("grant missing")
		}
	}
}
