package audit

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

func TestQueryAPI(t *testing.T) {
	key := newKey(t)
	s := open(t, "sqlite://"+filepath.Join(t.TempDir(), "audit.db"), key)
	defer s.Close()
	t0 := time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)
	for i, ev := range []Event{
		statement("agent-a", "orders-db", "SELECT * FROM customers", policies.ClassRead),
		statement("agent-b", "orders-db", "SELECT 1", policies.ClassRead),
		statement("agent-a", "billing-db", "SELECT 2", policies.ClassRead),
		statement("agent-a", "orders-db", "SELECT * FROM orders", policies.ClassRead),
	} {
		ev.Time = t0.Add(time.Duration(i) * 3 * time.Minute)
		if err := s.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	tokens := map[string]policies.Principal{
		"auditor": {Subject: "alice", Groups: []string{"security", "staff"}},
		"agent":   {Subject: "agent-a", Groups: []string{"agents"}},
	}
	h := NewQueryAPI(QueryAPIOptions{Store: s,
		Authenticate: func(r *http.Request) (policies.Principal, error) {
			p, ok := tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
			if !ok {
				return p, errors.New("invalid token")
			}
			return p, nil
		},
		AuditorGroups: func() []string { return []string{"security"} },
	})
	get := func(token, query string) (int, map[string]any) {
		req := httptest.NewRequest("GET", "/v1/audit?"+query, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var body map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: body %q: %v", query, rec.Body.String(), err)
		}
		return rec.Code, body
	}
	if code, body := get("", ""); code != 401 || body["error"] != "unauthenticated" {
		t.Errorf("no token: %d %v", code, body)
	}
	if code, body := get("agent", ""); code != 403 || body["error"] != "forbidden" {
		t.Errorf("agent: %d %v", code, body)
	}
	if code, body := get("auditor", "since=yesterday"); code != 400 || !strings.Contains(body["reason"].(string), "since") {
		t.Errorf("bad since: %d %v", code, body)
	}
	// Which agent touched orders-db between 02:00 and 02:10 UTC, and what
	// did it read?
	code, body := get("auditor", "target=orders-db&since=2025-03-01T02:00:00Z&until=2025-03-01T02:10:00Z&class=read")
	if code != 200 {
		t.Fatalf("query: %d %v", code, body)
	}
	evs := body["events"].([]any)
	if len(evs) != 3 {
		t.Fatalf("got %d events, want 3: %v", len(evs), body)
	}
	first := evs[0].(map[string]any)
	if first["request"] != "SELECT * FROM orders" || first["principal"].(map[string]any)["subject"] != "agent-a" ||
		first["seq"].(float64) != 4 || len(first["hash"].(string)) != 64 || first["tables"].([]any)[0] != "orders" {
		t.Errorf("newest event = %v", first)
	}
	code, body = get("auditor", "principal=agent-a&limit=1")
	if code != 200 || len(body["events"].([]any)) != 1 || body["next_cursor"] == nil {
		t.Fatalf("page 1: %d %v", code, body)
	}
	code, body = get("auditor", "principal=agent-a&limit=5&cursor="+body["next_cursor"].(string))
	if code != 200 || len(body["events"].([]any)) != 2 || body["next_cursor"] != nil {
		t.Errorf("page 2: %d %v", code, body)
	}
}

// recordingSink keeps what it is given, or refuses everything when err
// is set.
type recordingSink struct {
	events []Event
	err    error
}

func (s *recordingSink) Append(_ context.Context, e Event) error {
	if s.err != nil {
		return s.err
	}
	s.events = append(s.events, e)
	return nil
}

// TestQueryAPIRecordsReads: every authenticated read of the trail, and
// every refused one, is itself recorded before the answer; a read that
// cannot be recorded is refused.
func TestQueryAPIRecordsReads(t *testing.T) {
	s := open(t, "sqlite://"+filepath.Join(t.TempDir(), "audit.db"), newKey(t))
	defer s.Close()
	rec := &recordingSink{}
	h := NewQueryAPI(QueryAPIOptions{Store: s, Record: rec,
		Authenticate: func(r *http.Request) (policies.Principal, error) {
			switch r.Header.Get("Authorization") {
			case "Bearer auditor":
				return policies.Principal{Subject: "alice", Groups: []string{"security"}}, nil
			case "Bearer agent":
				return policies.Principal{Subject: "agent-a", Groups: []string{"agents"}}, nil
			}
			return policies.Principal{}, errors.New("invalid token")
		},
		AuditorGroups: func() []string { return []string{"security"} },
	})
	get := func(token, query string) int {
		req := httptest.NewRequest("GET", "/v1/audit?"+query, nil)
		req.RemoteAddr = "192.0.2.7:4242"
		req.Header.Set("Authorization", "Bearer "+token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	if code := get("auditor", "target=orders-db&since=15m"); code != 200 {
		t.Fatalf("auditor: %d", code)
	}
	if code := get("agent", "target=orders-db"); code != 403 {
		t.Fatalf("agent: %d", code)
	}
	if code := get("forged", ""); code != 401 {
		t.Fatalf("forged token: %d", code)
	}
	if len(rec.events) != 2 {
		t.Fatalf("recorded %d events, want 2 (the unauthenticated request names nobody): %+v", len(rec.events), rec.events)
	}
	read, refused := rec.events[0], rec.events[1]
	if read.Kind != KindAuditQuery || read.Principal.Subject != "alice" || read.Decision != "allow" ||
		read.Request != "GET /v1/audit?target=orders-db&since=15m" || read.Source != "192.0.2.7:4242" {
		t.Errorf("auditor's read recorded as %+v", read)
	}
	if refused.Kind != KindAuditQuery || refused.Principal.Subject != "agent-a" || refused.Decision != "deny" ||
		!strings.Contains(refused.Reason, "auditor group") {
		t.Errorf("agent's refused read recorded as %+v", refused)
	}
	rec.err = errors.New("store down")
	if code := get("auditor", "target=orders-db"); code != 503 {
		t.Errorf("read that could not be recorded answered %d, want 503", code)
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2025-03-01T02:00:00Z":      time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC),
		"2025-03-01T04:00:00+02:00": time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC),
		"2025-03-01 02:10":          time.Date(2025, 3, 1, 2, 10, 0, 0, time.UTC),
		"02:00":                     time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC),
		"90m":                       now.Add(-90 * time.Minute),
	} {
		got, err := ParseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseTime("yesterday", now); err == nil {
		t.Error("ParseTime(yesterday) succeeded")
	}
}

// TestQueryAPIBadInput: every parameter that is unknown, repeated or not
// valid is answered 400 naming it, and the refused read is recorded.
func TestQueryAPIBadInput(t *testing.T) {
	s := open(t, "sqlite://"+filepath.Join(t.TempDir(), "audit.db"), newKey(t))
	defer s.Close()
	if err := s.Append(context.Background(), statement("alice", "orders-db", "SELECT 1", policies.ClassRead)); err != nil {
		t.Fatal(err)
	}
	rec := &recordingSink{}
	h := NewQueryAPI(QueryAPIOptions{Store: s, Record: rec,
		Authenticate: func(r *http.Request) (policies.Principal, error) {
			return policies.Principal{Subject: "alice", Groups: []string{"security"}}, nil
		},
		AuditorGroups: func() []string { return []string{"security"} },
		Now:           func() time.Time { return time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC) },
	})
	get := func(query string) (int, string) {
		req := httptest.NewRequest("GET", "/v1/audit?"+query, nil)
		req.Header.Set("Authorization", "Bearer auditor")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		var body map[string]string
		_ = json.Unmarshal(w.Body.Bytes(), &body)
		return w.Code, body["reason"]
	}
	for _, c := range []struct{ query, want string }{
		{"principle=alice", "principle: unknown parameter"},
		{"principal=alice&principal=bob", "principal: given more than once"},
		{"until=3000-01-01T00:00:00Z", "until: 3000-01-01T00:00:00Z is outside the times the store can represent"},
		{"since=1500-01-01", "since: 1500-01-01T00:00:00Z is outside"},
		{"until=tomorrow", "until: expected an RFC 3339 time"},
		{"since=2025-03-01T02:00:00Z&until=2025-03-01T02:00:00Z", "until: 2025-03-01T02:00:00Z is not after since"},
		{"since=2025-03-01T03:00Z&until=2025-03-01T02:00Z", "is not after since"},
		{"limit=0", "limit: expected 1 to 1000"},
		{"limit=1001", "limit: expected 1 to 1000"},
		{"limit=ten", "limit: expected 1 to 1000"},
		{"cursor=not-a-cursor", "cursor: invalid cursor"},
		{"class=reads", "class: unknown operation class"},
		{"kind=statment", `kind: unknown kind "statment"`},
		{"decision=allowed", `decision: unknown decision "allowed"`},
		{"q=%FF%FE", "q: is not valid UTF-8"},
		{"principal=a%00b", "principal: contains a NUL byte"},
		{"target=orders%C0", "target: is not valid UTF-8"},
		{"grant_id=%00", "grant_id: contains a NUL byte"},
		{"cursor=" + cursor{1, "w\xff", 1}.String(), "cursor: invalid cursor"},
		{"q=" + strings.Repeat("%25", 10001), "q: is 10001 bytes; at most 10000"},
	} {
		code, reason := get(c.query)
		if code != 400 || !strings.Contains(reason, c.want) {
			t.Errorf("%s: %d %q, want 400 with %q", c.query, code, reason, c.want)
		}
	}
	for _, q := range []string{"kind=grant.approved&decision=approved", "decision=approval_required&class=DDL", "until=2262-01-01T00:00:00Z&since=1700-01-01"} {
		if code, reason := get(q); code != 200 {
			t.Errorf("%s: %d %s", q, code, reason)
		}
	}
	if len(rec.events) != 23 {
		t.Fatalf("recorded %d reads, want 23 (20 refused, 3 answered)", len(rec.events))
	}
	if e := rec.events[0]; e.Kind != KindAuditQuery || e.Decision != "deny" || e.Request != "GET /v1/audit?principle=alice" ||
		!strings.Contains(e.Reason, "invalid query: principle: unknown parameter") {
		t.Errorf("refused read recorded as %+v", e)
	}
	rec.err = errors.New("store down")
	if code, _ := get("principle=alice"); code != 503 {
		t.Errorf("a refused read that could not be recorded answered %d, want 503", code)
	}
}

// TestParseTimeForms: the RFC 3339 forms the doc promises, and the limits.
func TestParseTimeForms(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	want := time.Date(2025, 1, 31, 2, 0, 0, 0, time.UTC)
	for _, in := range []string{"2025-01-31T02:00:00Z", "2025-01-31T02:00Z", "2025-01-31T04:00+02:00", "2025-01-31T04:00:00+02:00",
		"2025-01-31T02:00", "2025-01-31T02:00:00", "2025-01-31 02:00", "2025-01-31 04:00+02:00", "2025-01-31 02:00:00Z", "2025-01-31T02:00:00.000Z"} {
		got, err := ParseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"3000-01-01T00:00:00Z", "2262-04-12", "1677-09-20T00:00Z", "0001-01-01T00:00:00Z"} {
		if got, err := ParseTime(in, now); err == nil || !strings.Contains(err.Error(), "outside the times the store can represent") {
			t.Errorf("ParseTime(%q) = %v, %v; want refused as out of range", in, got, err)
		}
	}
}
