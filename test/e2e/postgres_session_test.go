package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/test/testenv"
)

// TestPostgresSSLRequestAnsweredN: libpq's default sslmode=prefer asks for
// TLS first. The listener has no certificate, so the SSLRequest reaches
// sluice, which answers 'N' in the write slot the server's own answer to
// an SSLRequest gives, and the login goes on in clear.
func TestPostgresSSLRequestAnsweredN(t *testing.T) {
	p := startPGPath(t)
	out, stderr, err := p.psql(p.token("agent-1"), "sslmode=prefer", "-c", "SELECT count(*) FROM items")
	if err != nil || out != "3\n" {
		t.Fatalf("psql sslmode=prefer: %q %v\n%s", out, err, stderr)
	}
	_, stderr, err = p.psql(p.token("agent-1"), "sslmode=require", "-c", "SELECT 1")
	if err == nil || !strings.Contains(stderr, "server does not support SSL") {
		t.Errorf("psql sslmode=require: %v\n%s", err, stderr)
	}
	p.quiesce()
	p.sim.RequireNoViolations(t)
}

// TestPostgresCancelRequest: a client cancels a running statement the way
// libpq and pgx do, on a fresh connection carrying the backend key. Sluice
// forwards it because the key belongs to a session it authenticated.
func TestPostgresCancelRequest(t *testing.T) {
	p := startPGPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	qctx, qcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer qcancel()
	start := time.Now()
	_, err = c.Exec(qctx, "SELECT pg_sleep(20)")
	if time.Since(start) > 10*time.Second {
		t.Fatalf("the statement ran %s: the cancel did not reach the server", time.Since(start))
	}
	t.Logf("cancelled after %s: %v", time.Since(start), err)
	// pgx reports the context; the server's 57014 is what it read.
	var pe *pgconn.PgError
	if err == nil || (!errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &pe) && pe.Code == "57014")) {
		t.Errorf("cancelled statement: %v", err)
	}
	c.Close(ctx)

	p.quiesce()
	forwarded := 0
	for _, e := range p.audit.take() {
		if e.Kind == audit.KindSessionEnd && e.Reason == "cancel request forwarded" {
			forwarded++
		}
	}
	if forwarded != 1 {
		t.Errorf("%d cancel requests forwarded, want 1", forwarded)
	}

	// A cancel with a key sluice never saw is closed without reaching the
	// server: there is nothing to tell the client, which only waits for
	// the close.
	nc, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	raw, _ := (&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	nc.Write(raw)
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, nc); n != 0 || err != nil {
		t.Errorf("unknown cancel key: read %d bytes, %v; want a clean close", n, err)
	}
	p.quiesce()
	var ends []string
	for _, e := range p.audit.take() {
		if e.Kind == audit.KindSessionEnd {
			ends = append(ends, e.Reason)
		}
	}
	if len(ends) != 1 || !strings.Contains(ends[0], "key sluice did not see") {
		t.Errorf("session ends %q", ends)
	}
	// The refused cancel's one chunk is dropped by CLOSE, which the
	// stand-in counts as unanswered; nothing else may be.
	for kind, n := range p.sim.Violations() {
		if want := map[string]int64{"unanswered_chunks": 1}[kind]; n != want {
			t.Errorf("violation %s = %d, want %d", kind, n, want)
		}
	}
}

// TestPostgresAuditFailureFailsClosed: a login whose authentication event
// cannot be recorded is refused with a FATAL 57P03 that says so, as a
// statement refused for the same reason is; a session whose start cannot
// be recorded is closed before a byte reaches the target (there is no
// write slot to explain it in, and making one would open a backend on the
// target with nothing recorded).
func TestPostgresAuditFailureFailsClosed(t *testing.T) {
	p := startPGPath(t)
	p.pg.SetAuth(t, "app", p.upPass, testenv.AuthPassword)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	p.audit.failKind(audit.KindAuthn, true)
	_, err := p.pgx(ctx, p.token("agent-1"))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Severity != "FATAL" || pe.Code != "57P03" || !strings.Contains(pe.Message, "audit trail is unavailable") {
		t.Errorf("login with the audit trail down: %v, want FATAL 57P03", err)
	}
	p.audit.failKind(audit.KindAuthn, false)
	p.quiesce()
	p.sim.RequireNoViolations(t)
	if _, stderr, err := p.psql(p.token("agent-1"), "", "-c", "SELECT 1"); err != nil {
		t.Errorf("psql once the trail is back: %v\n%s", err, stderr)
	}

	p.audit.failKind(audit.KindSessionStart, true)
	_, err = p.pgx(ctx, p.token("agent-1"))
	if err == nil || errors.As(err, &pe) {
		t.Errorf("connection with session start unrecorded: %v, want a closed connection", err)
	}
	// The client may see the close before the stand-in has counted it.
	p.quiesce()
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := p.sim.WaitFor(wctx, func() bool { return p.sim.Stats().Get("network_ext_proc.orders-db.connections_closed") == 1 }); err != nil {
		t.Errorf("connections closed by ext_proc: %d, want 1", p.sim.Stats().Get("network_ext_proc.orders-db.connections_closed"))
	}
	// The one chunk of the refused connection (its StartupMessage) is
	// dropped by CLOSE, which the stand-in counts as unanswered; nothing
	// else may be.
	for kind, n := range p.sim.Violations() {
		if want := map[string]int64{"unanswered_chunks": 1}[kind]; n != want {
			t.Errorf("violation %s = %d, want %d", kind, n, want)
		}
	}
}
