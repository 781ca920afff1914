package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// env is one kind of database the suite runs against. fresh gives each
// subtest its own empty store URL and a raw connection to tamper with.
type env struct {
	name  string
	fresh func(t *testing.T) (url string, raw *rawDB)
}

// rawDB runs SQL on the store's database behind sluice's back, as an
// attacker with database access would.
type rawDB struct {
	exec func(t *testing.T, q string, args ...any) int64
	// text returns the first column of the first row as text.
	text func(t *testing.T, q string, args ...any) string
}

func sqliteEnv() env {
	return env{name: "sqlite", fresh: func(t *testing.T) (string, *rawDB) {
		path := filepath.Join(t.TempDir(), "audit.db")
		return "sqlite://" + path, &rawDB{exec: func(t *testing.T, q string, args ...any) int64 {
			t.Helper()
			db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			res, err := db.Exec(q, args...)
			if err != nil {
				t.Fatalf("tamper %q: %v", q, err)
			}
			n, _ := res.RowsAffected()
			return n
		}, text: func(t *testing.T, q string, args ...any) string {
			t.Helper()
			db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var v string
			if err := db.QueryRow(q, args...).Scan(&v); err != nil {
				t.Fatalf("%q: %v", q, err)
			}
			return v
		}}
	}}
}

func postgresEnv(pg *testenv.Postgres) env {
	var n atomic.Int64
	return env{name: "postgres", fresh: func(t *testing.T) (string, *rawDB) {
		dsn := pg.CreateDatabase(fmt.Sprintf("audit_%d", n.Add(1)))
		return dsn, &rawDB{exec: func(t *testing.T, q string, args ...any) int64 {
			t.Helper()
			ctx := context.Background()
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			tag, err := c.Exec(ctx, rebind(q), args...)
			if err != nil {
				t.Fatalf("tamper %q: %v", q, err)
			}
			return tag.RowsAffected()
		}, text: func(t *testing.T, q string, args ...any) string {
			t.Helper()
			ctx := context.Background()
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			var v string
			if err := c.QueryRow(ctx, rebind(q), args...).Scan(&v); err != nil {
				t.Fatalf("%q: %v", q, err)
			}
			return v
		}}
	}}
}

func TestSQLite(t *testing.T) { runSuite(t, sqliteEnv()) }

func TestPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	e := postgresEnv(pg)
	runSuite(t, e)
	t.Run("store down", func(t *testing.T) { testStoreDown(t, pg, e) })
	t.Run("group commit is atomic", func(t *testing.T) { testPostgresAtomic(t, e) })
	t.Run("COPY stores what INSERT stores", func(t *testing.T) { testPostgresCopy(t, e) })
	t.Run("COPY batch is atomic", func(t *testing.T) { testPostgresCopyAtomic(t, e) })
}

// testPostgresAtomic: the pipelined batch commits all or nothing, which
// the writer relies on (events and their checkpoint in one transaction).
func testPostgresAtomic(t *testing.T, e env) {
	url, raw := e.fresh(t)
	db, err := openPostgres(context.Background(), url, false)
	if err != nil {
		t.Fatal(err)
	}
	defer db.close()
	ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
	ev.Time = time.Now()
	enc, _ := encodeEvent(ev)
	r := Record{Writer: "w", Seq: 1, Event: ev}
	body := sealEncoded(&r, enc, []byte(`"w"`))
	evs := []eventRow{{writer: "w", seq: 1, hash: r.Hash[:], prev: r.Prev[:], body: string(body), ix: enc.ix}}
	bad := []checkpointRow{{writer: "w", kind: "periodic", seq: 1, body: "{}", sig: nil}} // sig NOT NULL
	if err := db.commit(context.Background(), evs, bad); err == nil {
		t.Fatal("a batch with a failing statement committed")
	}
	if n := raw.text(t, "SELECT count(*)::text FROM audit_events"); n != "0" {
		t.Fatalf("%s events committed by a failed batch", n)
	}
}

func runSuite(t *testing.T, e env) {
	t.Run("append query verify", func(t *testing.T) { testAppendQueryVerify(t, e) })
	t.Run("tamper", func(t *testing.T) { testTamper(t, e) })
	t.Run("tamper witnessed", func(t *testing.T) { testTamperWitnessed(t, e) })
	t.Run("tamper witnessed later", func(t *testing.T) { testTamperWitnessedLater(t, e) })
	t.Run("verify during retention", func(t *testing.T) { testVerifyDuringRetention(t, e) })
	t.Run("retention", func(t *testing.T) { testRetention(t, e) })
	t.Run("sigkill", func(t *testing.T) { testKill(t, e) })
	t.Run("export catches up", func(t *testing.T) { testExportCatchUp(t, e) })
	t.Run("hostile text", func(t *testing.T) { testHostileText(t, e) })
	t.Run("refused alone", func(t *testing.T) { testRefusedAlone(t, e) })
}

// pageAll follows f's pages to the end (at most 1,000) and returns the
// seqs seen, failing on one seen twice.
func pageAll(t *testing.T, s Store, f Filter) map[int64]bool {
	t.Helper()
	seen := map[int64]bool{}
	for pages := 0; pages < 1000; pages++ {
		p, err := s.Query(context.Background(), f)
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		for _, r := range p.Records {
			if seen[r.Seq] {
				t.Fatalf("seq %d on two pages", r.Seq)
			}
			seen[r.Seq] = true
		}
		if p.Next == "" {
			return seen
		}
		f.Cursor = p.Next
	}
	t.Fatal("paging did not end")
	return nil
}

func newKey(t testing.TB) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func open(t testing.TB, url string, key ed25519.PrivateKey, opts ...Option) Store {
	t.Helper()
	s, err := Open(context.Background(), url, append([]Option{WithSigner(NewSigner(key))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openRO(t testing.TB, url string, key ed25519.PrivateKey) Store {
	t.Helper()
	s, err := Open(context.Background(), url, ReadOnly(), WithTrustedKeys(key.Public().(ed25519.PublicKey)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustVerify(t *testing.T, s Store) *Report {
	t.Helper()
	rep, err := s.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify failed:\n%s", rep)
	}
	return rep
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func statement(subject, target, sql string, class policies.OperationClass) Event {
	return Event{Kind: KindStatement, SessionID: "s-1", RequestID: "r-" + sql,
		Principal: policies.Principal{Issuer: "https://idp", Subject: subject, Groups: []string{"agents"}, Client: subject + "-client"},
		Target:    target, Source: "127.0.0.1:5000", Request: sql, Classes: []policies.OperationClass{class},
		Tables: []string{"orders"}, Decision: "allow", Rows: 3, Bytes: 120, Duration: 2 * time.Millisecond}
}

func testAppendQueryVerify(t *testing.T, e env) {
	url, _ := e.fresh(t)
	key := newKey(t)
	clock := &fakeClock{t: time.Date(2025, 3, 1, 1, 59, 0, 0, time.UTC)}
	s := open(t, url, key, WithCheckpoints(7, time.Hour), WithClock(clock.Now))
	ctx := context.Background()

	// 02:00–02:10: two agents on two targets; one denied write.
	var wg sync.WaitGroup
	for i := range 40 {
		clock.Add(15 * time.Second)
		ev := statement("agent-a", "orders-db", fmt.Sprintf("SELECT * FROM orders WHERE id = %d", i), policies.ClassRead)
		if i%2 == 1 {
			ev = statement("agent-b", "billing-db", fmt.Sprintf("SELECT %d", i), policies.ClassRead)
		}
		if i == 20 {
			ev = statement("agent-a", "orders-db", "DELETE FROM orders", policies.ClassWrite)
			ev.Decision, ev.Reason = "deny", "write needs a grant"
		}
		ev.Time = clock.Now()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Append(ctx, ev); err != nil {
				t.Error(err)
			}
		}()
		if i%5 == 0 {
			wg.Wait() // some batches of one, some of several
		}
	}
	wg.Wait()

	rec, err := s.Commit(ctx, Event{Kind: KindGrantCreated, Principal: policies.Principal{Subject: "agent-a"}, Target: "orders-db", GrantID: "g-1", Time: clock.Now()})
	if err != nil || rec.Seq != 41 || rec.Writer != s.Writer() {
		t.Fatalf("Commit = %+v, %v; want seq 41 of %s", rec, err, s.Writer())
	}

	since, until := time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC), time.Date(2025, 3, 1, 2, 5, 0, 0, time.UTC)
	page, err := s.Query(ctx, Filter{Target: "orders-db", Since: since, Until: until})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Records) != 10 {
		t.Fatalf("orders-db 02:00–02:05: %d events, want 10", len(page.Records))
	}
	for i, r := range page.Records {
		if r.Principal.Subject != "agent-a" || r.Target != "orders-db" || r.Time.Before(since) || !r.Time.Before(until) {
			t.Errorf("record %d: %+v", i, r)
		}
		if i > 0 && r.Time.After(page.Records[i-1].Time) {
			t.Errorf("not newest first at %d", i)
		}
	}
	checks := []struct {
		name string
		f    Filter
		want int
	}{
		{"principal by client", Filter{Principal: "agent-b-client"}, 20},
		{"decision", Filter{Decision: "deny"}, 1},
		{"class write", Filter{Class: policies.ClassWrite}, 1},
		{"text case-insensitive", Filter{Text: "delete from"}, 1},
		{"text with like metachar", Filter{Text: "%"}, 0},
		{"grant", Filter{GrantID: "g-1"}, 1},
		{"kind", Filter{Kind: KindGrantCreated}, 1},
	}
	for _, c := range checks {
		p, err := s.Query(ctx, c.f)
		if err != nil || len(p.Records) != c.want {
			t.Errorf("%s: %d records (%v), want %d", c.name, len(p.Records), err, c.want)
		}
	}

	// Paging walks every event once, newest first.
	if seen := pageAll(t, s, Filter{Limit: 6}); len(seen) != 41 {
		t.Errorf("paging saw %d events, want 41", len(seen))
	}

	mustVerify(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, openRO(t, url, key))
	if len(rep.Chains) != 1 || !rep.Chains[0].Closed || rep.Chains[0].Sealed != 41 {
		t.Errorf("after Close: %s", rep)
	}
}
