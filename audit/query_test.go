package audit

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// TestQueryCursorWriterWithColons: a writer id may hold colons (a replica
// named host:port); the store reads back its own cursors.
func TestQueryCursorWriterWithColons(t *testing.T) {
	s := open(t, "sqlite://"+filepath.Join(t.TempDir(), "audit.db"), newKey(t), WithWriterID("replica:10.0.0.7:8443"))
	defer s.Close()
	t0 := time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)
	for i := range 5 {
		ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
		ev.Time = t0 // one instant: the writer and seq order the page
		if i%2 == 0 {
			ev.Time = t0.Add(time.Duration(i) * time.Second)
		}
		if err := s.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if seen := pageAll(t, s, Filter{Limit: 2}); len(seen) != 5 {
		t.Errorf("paging saw %d events, want 5", len(seen))
	}
	c, err := parseCursor(cursor{timeNS: -5, writer: "a:b:", seq: 7}.String())
	if err != nil || c != (cursor{timeNS: -5, writer: "a:b:", seq: 7}) {
		t.Errorf("cursor round trip = %+v, %v", c, err)
	}
}

// TestQueryTimeRange: times the store's nanosecond column cannot hold,
// and an empty range, are refused instead of answered wrongly.
func TestQueryTimeRange(t *testing.T) {
	s := open(t, "sqlite://"+filepath.Join(t.TempDir(), "audit.db"), newKey(t))
	defer s.Close()
	if err := s.Append(context.Background(), statement("agent", "orders-db", "SELECT 1", policies.ClassRead)); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, c := range []struct {
		name string
		f    Filter
		want string
	}{
		{"until 3000", Filter{Until: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}, "until: 3000-01-01T00:00:00Z is outside"},
		{"since 1600", Filter{Since: time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC)}, "since: 1600-01-01T00:00:00Z is outside"},
		{"since = until", Filter{Since: now, Until: now}, "is not after since"},
		{"since > until", Filter{Since: now, Until: now.Add(-time.Hour)}, "is not after since"},
	} {
		_, err := s.Query(context.Background(), c.f)
		var pe *ParamError
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &pe) {
			t.Errorf("%s: %v, want a ParamError with %q", c.name, err, c.want)
		}
	}
	p, err := s.Query(context.Background(), Filter{Since: now.Add(-time.Hour), Until: MaxQueryTime})
	if err != nil || len(p.Records) != 1 {
		t.Errorf("until the last representable time: %d records, %v; want 1", len(p.Records), err)
	}
}

// TestQuerySkipsUndecodable: one stored event this sluice cannot decode
// (here a newer schema version) does not fail the page; it is named in
// Page.Skipped and paging goes on past it.
func TestQuerySkipsUndecodable(t *testing.T) {
	url, raw := sqliteEnv().fresh(t)
	s := open(t, url, newKey(t), WithWriterID("a"))
	defer s.Close()
	t0 := time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)
	for i := range 4 {
		ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
		ev.Time = t0.Add(time.Duration(i) * time.Second)
		if err := s.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	raw.exec(t, `UPDATE audit_events SET body = replace(body, '{"v":1,', '{"v":2,') WHERE writer = 'a' AND seq = 3`)
	p, err := s.Query(context.Background(), Filter{})
	if err != nil {
		t.Fatalf("a page with an undecodable event: %v", err)
	}
	if len(p.Records) != 3 || len(p.Skipped) != 1 || p.Skipped[0].Writer != "a" || p.Skipped[0].Seq != 3 ||
		!strings.Contains(p.Skipped[0].Error, "schema version 2") {
		t.Fatalf("page = %+v", p)
	}
	// Paging two at a time: the skipped event takes its place in a page.
	var seqs []int64
	skipped := 0
	f := Filter{Limit: 2}
	for {
		p, err := s.Query(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range p.Records {
			seqs = append(seqs, r.Seq)
		}
		skipped += len(p.Skipped)
		if p.Next == "" {
			break
		}
		f.Cursor = p.Next
	}
	if len(seqs) != 3 || seqs[0] != 4 || seqs[1] != 2 || seqs[2] != 1 || skipped != 1 {
		t.Errorf("paged seqs %v with %d skipped, want [4 2 1] and 1", seqs, skipped)
	}
}
