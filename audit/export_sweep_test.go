package audit

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// fillChains writes n chains of per events each straight into the
// events table (the sweep reads only columns, never verifies).
func fillChains(t *testing.T, db dialect, n, per int, t0 time.Time) {
	t.Helper()
	ctx := context.Background()
	for w := range n {
		var evs []eventRow
		for i := range per {
			ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
			ev.Time = t0.Add(time.Duration(w*per+i) * time.Millisecond)
			enc, err := encodeEvent(ev)
			if err != nil {
				t.Fatal(err)
			}
			writer := fmt.Sprintf("w%03d", w)
			r := Record{Writer: writer, Seq: int64(i + 1), Event: ev}
			body := sealEncoded(&r, enc, []byte(`"`+writer+`"`))
			evs = append(evs, eventRow{writer: writer, seq: r.Seq, hash: r.Hash[:], prev: r.Prev[:], body: string(body), ix: enc.ix})
		}
		if err := db.commit(ctx, evs, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// idleChainsFound runs the sweep's query as exporter "x" would.
func idleChainsFound(t *testing.T, db dialect, cutoff time.Time) []string {
	t.Helper()
	sh := &shipper{db: db, exp: NewJSONLWriter("x", nil), own: "none", now: func() time.Time { return cutoff }}
	ws, err := sh.idleChains(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

func checkIdleChains(t *testing.T, db dialect) {
	ctx := context.Background()
	t0 := time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)
	fillChains(t, db, 30, 20, t0)
	// Chains w000–w014 ended before t0+300ms (each chain spans 20 ms).
	got := idleChainsFound(t, db, t0.Add(300*time.Millisecond))
	if len(got) != 15 || got[0] != "w000" || got[14] != "w014" {
		t.Fatalf("idle chains = %v, want w000…w014", got)
	}
	// A chain shipped to its head is not listed; one shipped part-way is.
	if _, err := db.exec(ctx, "INSERT INTO audit_export_cursors (exporter, writer, seq) VALUES ('x', 'w000', 20), ('x', 'w001', 19), ('y', 'w002', 20)"); err != nil {
		t.Fatal(err)
	}
	got = idleChainsFound(t, db, t0.Add(300*time.Millisecond))
	if len(got) != 14 || got[0] != "w001" {
		t.Fatalf("idle chains after cursors = %v, want w001…w014", got)
	}
}

// TestIdleChainsSQLite: the sweep lists idle, unshipped chains through the
// primary key, never scanning the events table.
func TestIdleChainsSQLite(t *testing.T) {
	db, err := openSQLite(context.Background(), filepath.Join(t.TempDir(), "audit.db"), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.close()
	checkIdleChains(t, db)
	rs, err := db.query(context.Background(), "EXPLAIN QUERY PLAN "+idleChainsSQL, "x", int64(0))
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var plan []string
	for rs.Next() {
		var id, parent, unused int
		var detail string
		if err := rs.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	t.Logf("plan:\n%s", strings.Join(plan, "\n"))
	for _, step := range plan {
		// "SCAN audit_events" without an index, or with the time index,
		// would read every event.
		if strings.Contains(step, "audit_events") && (strings.HasPrefix(step, "SCAN") || strings.Contains(step, "audit_events_time")) {
			t.Errorf("the sweep scans the events table: %q", step)
		}
	}
}

// TestIdleChainsPostgres: the same on Postgres (EXPLAIN ANALYZE).
func TestIdleChainsPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	url := pg.CreateDatabase("sweep")
	db, err := openPostgres(context.Background(), url, false)
	if err != nil {
		t.Fatal(err)
	}
	defer db.close()
	checkIdleChains(t, db)
	if _, err := db.exec(context.Background(), "ANALYZE audit_events"); err != nil {
		t.Fatal(err)
	}
	rs, err := db.query(context.Background(), "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) "+idleChainsSQL, "x", time.Date(2025, 3, 1, 2, 0, 0, 300e6, time.UTC).UnixNano())
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var plan []string
	for rs.Next() {
		var line string
		if err := rs.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	t.Logf("plan:\n%s", strings.Join(plan, "\n"))
	for _, step := range plan {
		if strings.Contains(step, "Seq Scan on public.audit_events") || strings.Contains(step, "audit_events_time") {
			t.Errorf("the sweep scans the events table: %q", step)
		}
	}
}
