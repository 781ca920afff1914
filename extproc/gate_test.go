package extproc

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
)

const gateTestConfig = `
server: { xds: 127.0.0.1:18000, authz: 127.0.0.1:9001, extproc: 127.0.0.1:9002, api: 127.0.0.1:8080 }
envoy: { node: t, extproc_message_timeout: 400ms }
identity:
  issuers: [{ issuer: https://idp.example.com, audiences: [sluice] }]
targets:
  - { name: orders-db, kind: postgres, port: 15432, upstream: "127.0.0.1:5432", database: orders, credentials: { user: app } }
approvers: { groups: [dba] }
policies:
  - name: p
    targets: [orders-db]
    principals: { groups: [agents] }
    allow: [read]
    require_grant: [write]
    wait: 10s
`

// ctxSink records events like a store: an Append whose context has ended
// fails, and block makes every Append wait for its context.
type ctxSink struct {
	mu     sync.Mutex
	events []audit.Event
	block  bool
	fail   bool
}

func (s *ctxSink) Append(ctx context.Context, e audit.Event) error {
	s.mu.Lock()
	block, fail := s.block, s.fail
	s.mu.Unlock()
	if block {
		<-ctx.Done()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if fail {
		return errors.New("store down")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
	return nil
}

func (s *ctxSink) statements() []audit.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []audit.Event
	for _, e := range s.events {
		if e.Kind == audit.KindStatement {
			out = append(out, e)
		}
	}
	return out
}

func testGate(t *testing.T, s audit.Sink) *PolicyGate {
	t.Helper()
	cfg, err := policies.Load("t.yaml", []byte(gateTestConfig))
	if err != nil {
		t.Fatal(err)
	}
	return &PolicyGate{Analyzer: sql.New(), Config: func() *policies.Config { return cfg },
		Grants: authz.GrantsFrom(grants.NewEmbeddedStore()), Audit: s, Now: time.Now}
}

func gateStatement(p postgres.Protocol, q string) postgres.Statement {
	return postgres.Statement{Protocol: p, SQL: q, Target: "orders-db", SessionID: "s1",
		Principal: policies.Principal{Issuer: "https://idp.example.com", Subject: "agent-1", Groups: []string{"agents"}}, Memory: &postgres.Memory{}}
}

// decideWithin runs Decide and fails the test if it has not answered
// within d.
func decideWithin(t *testing.T, g *PolicyGate, ctx context.Context, st postgres.Statement, d time.Duration) postgres.Verdict {
	t.Helper()
	done := make(chan postgres.Verdict, 1)
	go func() { done <- g.Decide(ctx, st) }()
	select {
	case v := <-done:
		return v
	case <-time.After(d):
		t.Fatalf("Decide(%q) did not answer within %s", st.SQL, d)
	}
	return postgres.Verdict{}
}

// TestGateAuditFailureRefuses: a statement whose record fails is refused
// with 57P03 and words that say nothing was forwarded, over every protocol
// that hands the server SQL: a Query, a Parse (whose allow is recorded
// too, since the server parses and plans its text) and an Execute.
func TestGateAuditFailureRefuses(t *testing.T) {
	s := &ctxSink{}
	g := testGate(t, s)
	for _, p := range []postgres.Protocol{postgres.ProtocolSimple, postgres.ProtocolExtended, postgres.ProtocolExecute} {
		v := g.Decide(context.Background(), gateStatement(p, "SELECT 1"))
		if !v.Allowed() {
			t.Fatalf("%s: %+v", p, v)
		}
	}
	got := s.statements()
	if len(got) != 3 || got[1].Decision != "allow" || !strings.Contains(got[1].Reason, "parse") || got[1].RequestID == "" {
		t.Errorf("records %+v, want one allow each, the Parse's marked", got)
	}

	s.mu.Lock()
	s.fail = true
	s.mu.Unlock()
	for _, p := range []postgres.Protocol{postgres.ProtocolSimple, postgres.ProtocolExtended, postgres.ProtocolExecute} {
		v := g.Decide(context.Background(), gateStatement(p, "SELECT 1"))
		if v.Allowed() || v.SQLState != "57P03" || !strings.Contains(v.Reason, "audit store is unavailable") ||
			!strings.Contains(v.Reason, "not forwarded") {
			t.Errorf("%s with the store down: %+v", p, v)
		}
	}
}

// TestGateAuditDeadline: a store that hangs does not hold the statement
// past Envoy's message timeout (400ms here): the gate refuses it, with
// 57P03, at its own deadline of three quarters of it (the verdict names
// it; how long it took is logged, not asserted).
func TestGateAuditDeadline(t *testing.T) {
	s := &ctxSink{block: true}
	g := testGate(t, s)
	start := time.Now()
	v := decideWithin(t, g, context.Background(), gateStatement(postgres.ProtocolSimple, "SELECT 1"), 2*time.Second)
	t.Logf("refused after %s", time.Since(start))
	if v.Allowed() || v.SQLState != "57P03" || !strings.Contains(v.Detail, "did not answer within 300ms") {
		t.Errorf("verdict %+v", v)
	}
}

// TestGateHeldStatementConnectionEnds: a statement held for approval whose
// connection ends is refused, and the refusal is recorded although the
// connection's context is gone.
func TestGateHeldStatementConnectionEnds(t *testing.T) {
	s := &ctxSink{}
	g := testGate(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	v := decideWithin(t, g, ctx, gateStatement(postgres.ProtocolSimple, "UPDATE items SET name = 'x' WHERE id = 1"), 5*time.Second)
	if v.Allowed() || !strings.Contains(v.Reason, "connection ended") {
		t.Fatalf("verdict %+v", v)
	}
	got := s.statements()
	if len(got) != 1 || got[0].Decision == "allow" || !strings.Contains(got[0].Reason, "connection ended") || got[0].GrantID == "" {
		t.Errorf("records %+v, want the held statement's refusal", got)
	}
}

// TestGateUnfinishedResultRecordedAtOnce: a run the session ended before
// it was answered is recorded as incomplete, with the rows and bytes so
// far, before Finished returns (the session's end is recorded next).
func TestGateUnfinishedResultRecordedAtOnce(t *testing.T) {
	s := &ctxSink{}
	g := testGate(t, s)
	v := g.Decide(context.Background(), gateStatement(postgres.ProtocolSimple, "SELECT 1"))
	if !v.Allowed() || v.Finished == nil {
		t.Fatalf("verdict %+v", v)
	}
	v.Finished(postgres.Outcome{Rows: 7, Bytes: 70, Unfinished: "envoy closed the stream"})
	s.mu.Lock()
	defer s.mu.Unlock()
	last := s.events[len(s.events)-1]
	if last.Kind != audit.KindStatementResult || last.Rows != 7 || last.Bytes != 70 ||
		!strings.Contains(last.Error, "incomplete") || !strings.Contains(last.Error, "envoy closed the stream") {
		t.Errorf("last record %+v, want the incomplete result", last)
	}
}

// TestGateWaitsForBackgroundRecords: a finished run's result is recorded
// in the background; Wait, which shutdown calls before the audit store
// closes, returns only once it is appended (or its context ends).
func TestGateWaitsForBackgroundRecords(t *testing.T) {
	s := &heldSink{appending: make(chan audit.Event, 1), release: make(chan struct{})}
	g := testGate(t, s)
	g.recordOutcome(audit.Event{Kind: audit.KindStatement, Request: "SELECT 1"}, nil, postgres.Outcome{Rows: 1})
	<-s.appending
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := g.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with a record in flight: %v, want its context's deadline", err)
	}
	close(s.release)
	if err := g.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if k := s.kinds(); len(k) != 1 || k[0] != audit.KindStatementResult {
		t.Errorf("recorded %v, want the one statement.result", k)
	}
}
