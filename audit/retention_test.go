package audit

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

func testRetention(t *testing.T, e env) {
	url, raw := e.fresh(t)
	key := newKey(t)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: t0}
	s := open(t, url, key, WithCheckpoints(10, time.Hour), WithClock(clock.Now))
	defer s.Close()
	ctx := context.Background()
	for i := 1; i <= 50; i++ {
		ev := statement("agent", "orders-db", fmt.Sprintf("SELECT %d", i), policies.ClassRead)
		ev.Time = t0.Add(time.Duration(i) * time.Minute)
		if err := s.Append(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Prune(ctx, t0.Add(20*time.Minute+30*time.Second))
	if err != nil || res.Events != 20 || res.Chains[s.Writer()] != 20 {
		t.Fatalf("Prune = %+v, %v; want 20 events, base 20", res, err)
	}
	rep := mustVerify(t, s)
	if c := rep.Chains[0]; c.Base != 20 || c.First != 21 || c.Last != 50 {
		t.Errorf("after prune: %+v", c)
	}

	// The schedule: RunRetention prunes at once, then every interval.
	clock.Add(50*time.Minute + 30*time.Second) // now t0+50m30s; retention 15m → before t0+35m30s
	rctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		RunRetention(rctx, s, func() time.Duration { return 15 * time.Minute }, time.Hour, clock.Now, slog.New(slog.DiscardHandler))
		close(stopped)
	}()
	var p Page
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if p, err = s.Query(ctx, Filter{}); err != nil || len(p.Records) == 15 || time.Now().After(deadline) {
			break
		}
	}
	cancel()
	<-stopped
	if err != nil || len(p.Records) != 15 || p.Records[14].Seq != 36 {
		t.Fatalf("after the scheduled run: %d records (%v), want seq 36–50", len(p.Records), err)
	}
	// Appends go on after retention, on the same chain.
	if err := s.Append(ctx, statement("agent", "orders-db", "SELECT 51", policies.ClassRead)); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, s)

	// Removing the retention checkpoint leaves a chain that starts nowhere.
	if n := raw.exec(t, "DELETE FROM audit_checkpoints WHERE kind = 'retention'"); n != 1 {
		t.Fatalf("deleted %d retention checkpoints, want 1", n)
	}
	rep, err = openRO(t, url, key).Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || !strings.Contains(rep.Problems[0].String(), "events seq 1–35 missing") {
		t.Errorf("without the retention checkpoint:\n%s", rep)
	}
}
