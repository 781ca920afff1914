package audit

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// testRows seals n events on writer's chain from seq first, varied enough
// to exercise every column: empty and non-ASCII text, several classes, a
// grant id, a timestamp before 1970.
func testRows(t *testing.T, writer string, first int64, n int) []eventRow {
	t.Helper()
	evs := make([]eventRow, n)
	var prev Hash
	for i := range evs {
		ev := statement(fmt.Sprintf("agent-%d", i), "orders-db", fmt.Sprintf("SELECT 'ünïcødé ✓' /* %d */", i), policies.ClassRead)
		ev.Time = time.Date(2025, 3, 1, 2, 0, i, 123456789, time.UTC)
		switch i % 3 {
		case 0:
			ev.Classes = append(ev.Classes, policies.ClassWrite)
			ev.GrantID, ev.Reason, ev.Principal.OnBehalfOf = "g-1", "granted", "alice@example.com"
		case 1:
			ev.Time = time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC)
			ev.Request, ev.Target, ev.Decision = "", "", "deny"
		}
		enc, err := encodeEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		seq := first + int64(i)
		r := Record{Writer: writer, Seq: seq, Prev: prev, Event: ev}
		body := sealEncoded(&r, enc, []byte(fmt.Sprintf("%q", writer)))
		prev = r.Hash
		evs[i] = eventRow{writer: writer, seq: seq, hash: r.Hash[:], prev: r.Prev[:], body: string(body), ix: enc.ix}
	}
	return evs
}

// TestCopyEventsSize: the COPY buffer is sized exactly, so encoding a
// batch allocates once.
func TestCopyEventsSize(t *testing.T) {
	for _, n := range []int{0, 1, 7} {
		evs := testRows(t, "w", 1, n)
		if got, want := len(appendCopyEvents(nil, evs)), copyEventsSize(evs); got != want {
			t.Errorf("%d events: encoded %d bytes, sized %d", n, got, want)
		}
	}
}

// testPostgresCopy: a batch loaded with COPY reads back column for column
// as it was sent, as does one inserted by the pipeline. (The rest of the
// suite runs on COPY too: every batch without a checkpoint takes it.)
func testPostgresCopy(t *testing.T, e env) {
	ctx := context.Background()
	url, _ := e.fresh(t)
	db, err := openPostgres(ctx, url, false)
	if err != nil {
		t.Fatal(err)
	}
	defer db.close()
	copied, inserted := testRows(t, "copied", 1, 9), testRows(t, "inserted", 1, 9)
	if err := db.copyEvents(ctx, copied); err != nil {
		t.Fatal(err)
	}
	if err := db.commitPipelined(ctx, inserted, nil); err != nil {
		t.Fatal(err)
	}
	for _, sent := range [][]eventRow{copied, inserted} {
		got := readRows(t, db, sent[0].writer)
		if len(got) != len(sent) {
			t.Fatalf("chain %s: read %d rows, sent %d", sent[0].writer, len(got), len(sent))
		}
		for i, g := range got {
			w := sent[i]
			if g.seq != w.seq || !bytes.Equal(g.hash, w.hash) || !bytes.Equal(g.prev, w.prev) || g.body != w.body || g.ix != w.ix {
				t.Errorf("chain %s row %d:\n got %d %x %x %s %+v\nsent %d %x %x %s %+v", w.writer, i,
					g.seq, g.hash, g.prev, g.body, g.ix, w.seq, w.hash, w.prev, w.body, w.ix)
			}
		}
	}
}

func readRows(t *testing.T, q querier, writer string) []storedEvent {
	t.Helper()
	rs, err := q.query(context.Background(), selectEventSQL+" WHERE writer = ? ORDER BY seq", writer)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []storedEvent
	for rs.Next() {
		e, err := scanEvent(rs)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// testPostgresCopyAtomic: a COPY batch with one bad row stores none of
// its rows, and the connection it failed on serves the next batch.
func testPostgresCopyAtomic(t *testing.T, e env) {
	ctx := context.Background()
	url, raw := e.fresh(t)
	db, err := openPostgres(ctx, url+"&pool_max_conns=1", false)
	if err != nil {
		t.Fatal(err)
	}
	defer db.close()
	if err := db.copyEvents(ctx, testRows(t, "w", 1, 3)); err != nil {
		t.Fatal(err)
	}
	clash := testRows(t, "w", 4, 5)
	clash[3].seq = 2 // already stored: primary key violation
	err = db.copyEvents(ctx, clash)
	if err == nil || !strings.Contains(err.Error(), "23505") {
		t.Fatalf("COPY of a batch with a duplicate seq: %v, want a unique violation (23505)", err)
	}
	if n := raw.text(t, "SELECT count(*)::text FROM audit_events"); n != "3" {
		t.Fatalf("%s events stored, want the first batch's 3 only", n)
	}
	if err := db.copyEvents(ctx, testRows(t, "w", 4, 5)); err != nil {
		t.Fatalf("next batch on the same connection: %v", err)
	}
	if n := raw.text(t, "SELECT count(*)::text FROM audit_events"); n != "8" {
		t.Fatalf("%s events stored, want 8", n)
	}
}
