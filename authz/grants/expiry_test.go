package grants

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

type memSink struct {
	mu     sync.Mutex
	events []audit.Event
	fail   bool
}

func (s *memSink) Append(_ context.Context, e audit.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return errors.New("down")
	}
	s.events = append(s.events, e)
	return nil
}

// TestExpiryRecorder: an approval that runs out and a request nobody
// answered each get one grant.expired event; what had expired before the
// recorder started is not repeated; a failed append is retried.
func TestExpiryRecorder(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	clock := ClockFunc(func() time.Time { return now })
	s := NewEmbeddedStore(WithClock(clock), WithPendingTTL(time.Hour))
	agent := policies.Principal{Issuer: "https://idp", Subject: "agent-1"}
	bob := policies.Principal{Issuer: "https://idp", Subject: "bob", Groups: []string{"dba"}}
	create := func() Grant {
		g, err := s.Create(ctx, Grant{Requester: IdentityOf(agent), Target: "orders-db", Classes: Classes{policies.ClassWrite}, Duration: 10 * time.Minute, Reason: "r"})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	old := create()
	now = now.Add(2 * time.Hour) // old lapses unanswered before the recorder starts
	approved := create()
	if _, err := s.Approve(ctx, approved.ID, bob, "ok", now); err != nil {
		t.Fatal(err)
	}
	pending := create()

	sink := &memSink{}
	r := &ExpiryRecorder{Store: s, Audit: sink, Now: clock.Now}
	r.Poll(ctx, true)
	now = now.Add(11 * time.Minute) // the approval runs out
	r.Poll(ctx, false)
	if len(sink.events) != 1 || sink.events[0].GrantID != approved.ID || sink.events[0].Kind != audit.KindGrantExpired ||
		sink.events[0].Reason != "the approval's time ran out" {
		t.Fatalf("after the approval ran out: %+v", sink.events)
	}
	now = now.Add(2 * time.Hour) // the pending request lapses; the store is down for the record
	sink.fail = true
	r.Poll(ctx, false)
	sink.fail = false
	r.Poll(ctx, false)
	r.Poll(ctx, false)
	if len(sink.events) != 2 || sink.events[1].GrantID != pending.ID || sink.events[1].Reason != "the request was not answered in time" {
		t.Fatalf("after the request lapsed: %+v", sink.events)
	}
	for _, e := range sink.events {
		if e.GrantID == old.ID {
			t.Errorf("an expiry from before the start was recorded: %+v", e)
		}
	}
}
