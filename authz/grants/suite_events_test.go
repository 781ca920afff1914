package grants

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// testRace has 50 approvers approve or deny each of 20 requests at once:
// exactly one wins each, the others get ErrNotPending.
func testRace(t *testing.T, s Store, clk *fakeClock) {
	ctx := t.Context()
	const requests, racers = 20, 50
	for range requests {
		g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
		var wg sync.WaitGroup
		errs := make([]error, racers)
		results := make([]Grant, racers)
		for i := range racers {
			wg.Go(func() {
				by := policies.Principal{Issuer: "https://idp", Subject: fmt.Sprintf("approver-%d", i)}
				if i%2 == 0 {
					results[i], errs[i] = s.Approve(ctx, g.ID, by, "", clk.Now())
				} else {
					results[i], errs[i] = s.Deny(ctx, g.ID, by, "", clk.Now())
				}
			})
		}
		wg.Wait()
		var winner Grant
		wins := 0
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
				winner = results[i]
			case !errors.Is(err, ErrNotPending):
				t.Fatalf("racer %d: %v", i, err)
			}
		}
		if wins != 1 {
			t.Fatalf("grant %s: %d decisions won, want exactly 1", g.ID, wins)
		}
		if got, _ := s.Get(ctx, g.ID); got.State != winner.State || got.DecidedBy.Subject != winner.DecidedBy.Subject {
			t.Fatalf("stored %s by %s, winner %s by %s", got.State, got.DecidedBy.Subject, winner.State, winner.DecidedBy.Subject)
		}
	}
}

func testSubscribeOrder(t *testing.T, s Store, clk *fakeClock) {
	ctx, cancel := context.WithCancel(t.Context())
	events, err := s.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
	other := mustCreate(t, s, classReq(agent2, "orders-db", policies.ClassWrite))
	if _, err := s.Approve(t.Context(), g.ID, bob, "", clk.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deny(t.Context(), other.ID, bob, "", clk.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Revoke(t.Context(), g.ID, carol, "", clk.Now()); err != nil {
		t.Fatal(err)
	}
	p := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassDDL))
	clk.Advance(time.Hour)
	if _, err := s.Approve(t.Context(), p.ID, bob, "", clk.Now()); !errors.Is(err, ErrExpired) {
		t.Fatalf("approve after pending TTL: %v", err)
	}
	want := []string{
		"requested " + g.ID + " pending", "requested " + other.ID + " pending",
		"approved " + g.ID + " approved", "denied " + other.ID + " denied",
		"revoked " + g.ID + " revoked", "requested " + p.ID + " pending",
		"expired " + p.ID + " expired",
	}
	for i, w := range want {
		select {
		case ev := <-events:
			if got := fmt.Sprintf("%s %s %s", ev.Kind, ev.Grant.ID, ev.Grant.State); got != w {
				t.Fatalf("event %d = %q, want %q", i, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d (%s) not delivered", i, w)
		}
	}
	cancel()
	for range events {
	}
}

// testSlowSubscriber: a subscriber that does not read never blocks a
// transition, and its channel still closes when its ctx ends. (Whether it
// is cut off once its buffer is full is timing-dependent with Redis, whose
// delivery is asynchronous: TestEmbeddedSlowSubscriber and TestForward
// check the policy itself.)
func testSlowSubscriber(t *testing.T, s Store) {
	ctx, cancel := context.WithCancel(t.Context())
	events, err := s.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
	}
	cancel()
	timeout := time.After(5 * time.Second)
	for got := 0; ; got++ {
		select {
		case _, ok := <-events:
			if !ok {
				if got > 2 {
					t.Errorf("received %d events, buffer is 2", got)
				}
				return
			}
		case <-timeout:
			t.Fatal("subscription not closed after its ctx ended")
		}
	}
}
