package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
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

// testRefusedAlone: an event the store could not give back as written is
// refused, alone, with an error naming the field; the appends beside it
// commit and the trail verifies. Before checkAppend, a time past 2262
// wrapped in time_ns (and retention then removed the events before it), a
// class that does not decode made verify call the event altered, and on
// Postgres a target or grant id past a btree entry's 2,704 bytes failed
// every append in its batch.
func testRefusedAlone(t *testing.T, e env) {
	url, _ := e.fresh(t)
	key := newKey(t)
	s := open(t, url, key)
	ctx := context.Background()
	// Random hex: Postgres compresses an index entry, so a repeated
	// character passes its 2,704-byte limit where this does not.
	raw := make([]byte, 1500)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	long := hex.EncodeToString(raw)
	bad := []struct {
		want string
		edit func(*Event)
	}{
		{"time: 2300-01-01T00:00:00Z is outside", func(e *Event) { e.Time = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"time: 1600-01-01T00:00:00Z is outside", func(e *Event) { e.Time = time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"classes: 0 is not an operation class", func(e *Event) { e.Classes = []policies.OperationClass{0} }},
		{"classes: 99 is not an operation class", func(e *Event) { e.Classes = append(e.Classes, 99) }},
		{"target is 3000 bytes; at most 1024", func(e *Event) { e.Target = long }},
		{"grant id is 3000 bytes; at most 1024", func(e *Event) { e.GrantID = long }},
	}
	var wg sync.WaitGroup
	for i, b := range bad {
		for j := range 3 {
			wg.Go(func() {
				if err := s.Append(ctx, statement("agent-ok", "orders-db", fmt.Sprintf("SELECT %d", 10*i+j), policies.ClassRead)); err != nil {
					t.Errorf("a good event beside a refused one: %v", err)
				}
			})
		}
		wg.Go(func() {
			ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
			b.edit(&ev)
			if err := s.Append(ctx, ev); err == nil || !strings.Contains(err.Error(), b.want) {
				t.Errorf("append: %v, want an error with %q", err, b.want)
			}
		})
	}
	wg.Wait()
	s.Close()
	rep, err := openRO(t, url, key).Verify(ctx)
	if err != nil || !rep.OK() || rep.Chains[0].Events != int64(3*len(bad)) {
		t.Fatalf("verify: %v %+v", err, rep)
	}
}

// TestWriterIDRefused: a writer id that the columns and the bodies would
// not hold alike (bytes that are not UTF-8 made verify call its
// checkpoints altered) is refused at Open.
func TestWriterIDRefused(t *testing.T) {
	for _, id := range []string{"replica\xff", "a b", "a\x00", strings.Repeat("r", 129)} {
		_, err := Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "audit.db"), WithSigner(NewSigner(newKey(t))), WithWriterID(id))
		if err == nil || !strings.Contains(err.Error(), "writer id") {
			t.Errorf("WithWriterID(%q): %v", id, err)
		}
	}
}

// TestVerifyAcceptsRawNULColumns: a SQLite store written before columnText
// kept a NUL in a text column as it is, which is the hashed value byte for
// byte; verify still passes it, and still finds a column edited otherwise.
func TestVerifyAcceptsRawNULColumns(t *testing.T) {
	url, raw := sqliteEnv().fresh(t)
	key := newKey(t)
	s := open(t, url, key)
	ev := statement("agent", "orders-db", "SELECT 'a\x00b'", policies.ClassRead)
	if err := s.Append(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	s.Close()
	raw.exec(t, "UPDATE audit_events SET request = ? WHERE seq = 1", "SELECT 'a\x00b'")
	if rep, err := openRO(t, url, key).Verify(context.Background()); err != nil || !rep.OK() {
		t.Fatalf("a raw NUL column: %v %+v", err, rep)
	}
	raw.exec(t, "UPDATE audit_events SET request = ? WHERE seq = 1", "SELECT 'a\x00c'")
	if rep, err := openRO(t, url, key).Verify(context.Background()); err != nil || rep.OK() {
		t.Fatalf("an edited column passed: %v %+v", err, rep)
	}
}
