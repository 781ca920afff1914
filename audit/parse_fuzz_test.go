package audit

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/policies"
)

// FuzzIndexMatchesBody: the index columns built from an event at append
// are the ones verify builds from its stored body, whatever bytes its text
// holds, and every column is text both stores accept (UTF-8, no NUL).
func FuzzIndexMatchesBody(f *testing.F) {
	f.Add("SELECT 1\x00agent\x00orders-db", "SELECT 1", int64(1732700000), uint32(0xffffffff))
	f.Add("", "a\x00b\xff\xfe", int64(0), uint32(0))
	f.Add("\xed\xa0\x80\x00\xc0\xaf", "\xf4\x90\x80\x80 \x00", int64(1<<40), uint32(0x55555555))
	f.Fuzz(func(t *testing.T, s, raw string, n int64, bits uint32) {
		e := fuzzEvent(s, n, bits)
		// fuzzEvent splits s on NUL; raw keeps it.
		e.Request, e.Principal.Client, e.Reason = raw, raw, e.Reason+raw
		r := Record{Writer: "w", Seq: 1, Event: e}
		body, err := seal(&r)
		if err != nil {
			return // not encodable (a year past 9999): refused at append
		}
		got, err := decodeBody(body)
		if err != nil {
			t.Fatalf("a sealed body does not decode: %v\n%s", err, body)
		}
		want := indexOf(e)
		if col := indexOf(got.Event).diff(want); col != "" {
			t.Fatalf("column %s built from the decoded body differs from the one built at append", col)
		}
		for i, v := range want.args() {
			if s, ok := v.(string); ok && (!utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0) {
				t.Fatalf("column %d holds %q", i, s)
			}
		}
	})
}

// FuzzCursor: a cursor reads back as written when its writer id is text
// a store holds, and is refused otherwise; any text parseCursor accepts
// writes back to the same cursor.
func FuzzCursor(f *testing.F) {
	f.Add(int64(1732700000000000000), "w-1:replica:2", int64(42), "MTc6dzo0Mg")
	f.Add(int64(-1), "", int64(0), "")
	f.Add(int64(0), "w\xff", int64(-5), "::")
	f.Fuzz(func(t *testing.T, ts int64, writer string, seq int64, raw string) {
		c := cursor{ts, writer, seq}
		got, err := parseCursor(c.String())
		switch {
		case validText(writer) != nil:
			var pe *ParamError
			if !errors.As(err, &pe) {
				t.Fatalf("cursor with writer %q: %v, want a ParamError", writer, err)
			}
		case err != nil || got != c:
			t.Fatalf("cursor %+v read back as %+v, %v", c, got, err)
		}
		if c, err := parseCursor(raw); err == nil {
			if again, err := parseCursor(c.String()); err != nil || again != c {
				t.Fatalf("%q: %+v, written back and read as %+v, %v", raw, c, again, err)
			}
		}
	})
}

// FuzzFilterFromQuery: GET /v1/audit's parameters are either refused with
// a ParamError (a 400) or make a filter the store answers without error:
// no bad parameter reaches the database as an error of its own.
func FuzzFilterFromQuery(f *testing.F) {
	s := open(f, "sqlite://"+filepath.Join(f.TempDir(), "audit.db"), newKey(f))
	defer s.Close()
	for _, q := range []string{"SELECT 50%_off \\ FROM t", "SELECT 'a\x00b'", "DELETE FROM orders"} {
		ev := statement("alice", "orders-db", q, policies.ClassRead)
		if err := s.Append(context.Background(), ev); err != nil {
			f.Fatal(err)
		}
	}
	f.Add("principal=alice&target=orders-db&since=2h&until=2262-01-01&limit=2")
	f.Add("q=50%25_&kind=statement&decision=allow&class=read")
	f.Add("q=%00&cursor=MTc6dzo0Mg")
	f.Add("since=15:04&until=1677-09-22T00:00:00Z&q=%5C%25")
	f.Add("grant_id=%FF&principal=a&principal=b")
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := FilterFromQuery(q, now)
		if err != nil {
			var pe *ParamError
			if !errors.As(err, &pe) {
				t.Fatalf("%q refused with %T %v, want a ParamError", raw, err, err)
			}
			return
		}
		if flt.Limit < 0 || flt.Limit > MaxQueryLimit {
			t.Fatalf("%q: limit %d accepted", raw, flt.Limit)
		}
		if _, err := s.Query(context.Background(), flt); err != nil {
			t.Fatalf("%q accepted, then the store failed: %v", raw, err)
		}
	})
}
