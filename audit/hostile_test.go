package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// testHostileText: text from the agent (a statement, an HTTP path, a
// Postgres startup parameter) may hold bytes that are not UTF-8, and NUL.
// Such an event is stored, in the same batch as others without failing
// them, verifies, and is found by its text as the store holds it (U+FFFD
// for each such byte); a query that names such bytes is refused, not
// answered with an error from the database.
//
// Before columnText, Postgres refused every batch holding one (SQLSTATE
// 22021, reported as the store being unavailable, so the gates refused
// every statement in it), and SQLite stored it but verify then called the
// event altered.
func testHostileText(t *testing.T, e env) {
	url, _ := e.fresh(t)
	key := newKey(t)
	s := open(t, url, key)
	ctx := context.Background()
	hostile := []string{"SELECT '\xff\xfe'", "SELECT 'a\x00b'", "SELECT '\xed\xa0\x80' -- surrogate", "\xc0\xaf overlong"}
	var wg sync.WaitGroup
	for i, text := range hostile {
		ev := statement("agent\xff"+text, "orders-db\x00", text, policies.ClassRead)
		ev.Principal.Client, ev.Principal.OnBehalfOf = "client\x00", "human\xfe"
		ev.Reason, ev.GrantID, ev.Decision = "why\x00"+text, "g\xff", "allow\x00"
		ev.Time = time.Now()
		for j := range 4 { // good events in the same batches
			wg.Go(func() {
				if err := s.Append(ctx, statement("agent-ok", "orders-db", fmt.Sprintf("SELECT %d", 10*i+j), policies.ClassRead)); err != nil {
					t.Errorf("a good event beside hostile ones: %v", err)
				}
			})
		}
		wg.Go(func() {
			if err := s.Append(ctx, ev); err != nil {
				t.Errorf("append %q: %v", text, err)
			}
		})
	}
	wg.Wait()

	page, err := s.Query(ctx, Filter{Text: "SELECT '\uFFFD\uFFFD'"})
	if err != nil || len(page.Records) != 1 || page.Records[0].Request != "SELECT '\uFFFD\uFFFD'" {
		t.Errorf("query for the stored text: %v, %+v", err, page.Records)
	}
	page, err = s.Query(ctx, Filter{Text: "a\uFFFDb"})
	if err != nil || len(page.Records) != 1 || page.Records[0].Request != "SELECT 'a\x00b'" {
		t.Errorf("query for a NUL as stored: %v, %+v", err, page.Records)
	}
	if page, err := s.Query(ctx, Filter{Principal: "client\uFFFD"}); err != nil || len(page.Records) != len(hostile) {
		t.Errorf("query by client: %v, %d records, want %d", err, len(page.Records), len(hostile))
	}
	for _, f := range []Filter{{Text: "\xff"}, {Principal: "agent\x00"}, {Target: "orders-db\x00"}, {GrantID: "g\xff"}} {
		var pe *ParamError
		if _, err := s.Query(ctx, f); !errors.As(err, &pe) {
			t.Errorf("query %+v: %v, want a ParamError", f, err)
		}
	}
	s.Close()
	rep, err := openRO(t, url, key).Verify(ctx)
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %v %+v", err, rep)
	}
	if n := rep.Chains[0].Events; n != int64(5*len(hostile)) {
		t.Errorf("verified %d events, want %d", n, 5*len(hostile))
	}
}
