package e2e

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/test/testenv"
)

// TestPostgresLoginEachAuthMode: the agent logs in with its OIDC token as
// the password, whatever the target asks of sluice (pg_hba.conf method),
// with psql (libpq) and pgx, and reads rows. Each connection's audit
// trail is session start, an allowed authentication, session end.
func TestPostgresLoginEachAuthMode(t *testing.T) {
	p := startPGPath(t)
	tok := p.token("agent-1")
	for _, method := range []string{testenv.AuthSCRAM, testenv.AuthPassword, testenv.AuthMD5, testenv.AuthTrust} {
		t.Run(method, func(t *testing.T) {
			p.pg.SetAuth(t, "app", p.upPass, method)

			out, stderr, err := p.psql(tok, "", "-c", "SELECT name FROM items ORDER BY id", "-c", "SELECT current_user")
			if err != nil {
				t.Fatalf("psql: %v\n%s", err, stderr)
			}
			if want := "anvil\nrocket skates\nbird seed\napp\n"; out != want {
				t.Errorf("psql printed %q, want %q", out, want)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := p.pgx(ctx, tok)
			if err != nil {
				t.Fatalf("pgx: %v", err)
			}
			// The extended protocol (pgx's default) and the simple one.
			var n int
			var user, db string
			if err := c.QueryRow(ctx, "SELECT count(*), current_user, current_database() FROM items WHERE id > $1", 0).Scan(&n, &user, &db); err != nil {
				t.Fatal(err)
			}
			if n != 3 || user != "app" || db != "orders" {
				t.Errorf("pgx read count %d as %s in %s, want 3 as app in orders", n, user, db)
			}
			var name string
			if err := c.QueryRow(ctx, "SELECT name FROM items WHERE id = 2", pgx.QueryExecModeSimpleProtocol).Scan(&name); err != nil || name != "rocket skates" {
				t.Errorf("simple protocol: %q, %v", name, err)
			}
			c.Close(ctx)

			p.quiesce()
			for src, seq := range sessions(p.audit.take()) {
				if seq != "session.start authn:allow session.end" {
					t.Errorf("session %s: audit %q", src, seq)
				}
			}
			p.sim.RequireNoViolations(t)
		})
	}
}

// TestPostgresRefusedTokens: a bad, expired, forged or untrusted token, or
// a principal no policy names, ends the login with a FATAL that says why
// (SQLSTATE 28P01 for the token, 28000 for the identity) before any query
// can run, in every auth mode.
func TestPostgresRefusedTokens(t *testing.T) {
	p := startPGPath(t)
	p.idp.AddClient(testenv.OIDCClient{ID: "expired", Secret: "s", Groups: []string{"agents"}, TTL: -time.Hour})
	p.idp.AddClient(testenv.OIDCClient{ID: "outsider", Secret: "s", Groups: []string{"contractors"}})
	other := testenv.StartOIDC(t)
	other.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents"}})
	good := p.token("agent-1")
	parts := strings.Split(good, ".")
	forged := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))

	cases := []struct {
		name, token, code, says string
	}{
		{"garbage", "not-a-token", "28P01", "not a JWT"},
		{"expired", p.token("expired"), "28P01", "expired"},
		{"forged signature", forged, "28P01", "signature"},
		{"unknown issuer", other.Token(t, "agent-1"), "28P01", "not trusted"},
		{"no policy names the principal", p.token("outsider"), "28000", "no policy grants outsider access to target orders-db"},
	}
	for _, method := range []string{testenv.AuthSCRAM, testenv.AuthPassword, testenv.AuthMD5, testenv.AuthTrust} {
		p.pg.SetAuth(t, "app", p.upPass, method)
		for _, tc := range cases {
			t.Run(method+"/"+tc.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				c, err := p.pgx(ctx, tc.token)
				if err == nil {
					c.Close(ctx)
					t.Fatal("login succeeded")
				}
				var pe *pgconn.PgError
				if !errors.As(err, &pe) {
					t.Fatalf("error %v is not a server error", err)
				}
				if pe.Severity != "FATAL" || pe.Code != tc.code || !strings.Contains(pe.Message, tc.says) || !strings.HasPrefix(pe.Message, "sluice: ") {
					t.Errorf("got %s %s %q, want FATAL %s saying %q", pe.Severity, pe.Code, pe.Message, tc.code, tc.says)
				}
			})
		}
		// psql (libpq) shows the agent the reason.
		_, stderr, err := p.psql(p.token("outsider"), "", "-c", "SELECT 1")
		if err == nil || !strings.Contains(stderr, "FATAL:  sluice: no policy grants outsider access to target orders-db") {
			t.Errorf("%s: psql as a principal no policy names: %v\n%s", method, err, stderr)
		}
		p.quiesce()
		for src, seq := range sessions(p.audit.take()) {
			if seq != "session.start authn:deny session.end" {
				t.Errorf("%s: session %s: audit %q", method, src, seq)
			}
		}
	}

	// psql shows the agent the reason too.
	p.pg.SetAuth(t, "app", p.upPass, testenv.AuthSCRAM)
	_, stderr, err := p.psql(p.token("expired"), "", "-c", "SELECT 1")
	if err == nil || !strings.Contains(stderr, "FATAL:  sluice: token expired at") {
		t.Errorf("psql with an expired token: %v\n%s", err, stderr)
	}
	p.quiesce()
	p.sim.RequireNoViolations(t)
}

// TestPostgresDeniedStatementInTransaction: a denied statement inside
// BEGIN leaves the transaction exactly as a server-side permission error
// does: failed, every statement refused with 25P02 until ROLLBACK. Both
// sequences run against the real server and must match step for step.
func TestPostgresDeniedStatementInTransaction(t *testing.T) {
	p := startPGPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)

	type step struct {
		code string
		tx   byte
	}
	run := func(offending string) []step {
		var steps []step
		for _, sql := range []string{"BEGIN", offending, "SELECT 1", "SELECT name FROM items", "ROLLBACK", "SELECT 1"} {
			_, err := c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
			code := "ok"
			var pe *pgconn.PgError
			if errors.As(err, &pe) {
				code = pe.Code
			} else if err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
			steps = append(steps, step{code, c.PgConn().TxStatus()})
		}
		return steps
	}
	server := run("SELECT * FROM secrets")
	denied := run("SELECT name FROM items /* sluice:deny */")
	want := []step{{"ok", 'T'}, {"42501", 'E'}, {"25P02", 'E'}, {"25P02", 'E'}, {"ok", 'I'}, {"ok", 'I'}}
	for i := range want {
		if server[i] != want[i] || denied[i] != server[i] {
			t.Errorf("step %d: server-side permission error %v, sluice's denial %v, want %v", i, server[i], denied[i], want[i])
		}
	}

	// What the agent reads is sluice's reason, not the replacement's.
	_, err = c.Exec(ctx, "SELECT 1 /* sluice:deny */", pgx.QueryExecModeSimpleProtocol)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" || pe.Message != "sluice: statement denied on orders-db" ||
		!strings.Contains(pe.Detail, "sluice:deny") || pe.Hint == "" || pe.Where != "" {
		t.Errorf("denial reads %+v", pe)
	}
	// The extended protocol is gated at Parse.
	_, err = c.Exec(ctx, "SELECT $1::int /* sluice:deny */", 1)
	if !errors.As(err, &pe) || pe.Code != "42501" || pe.Message != "sluice: statement denied on orders-db" {
		t.Errorf("extended-protocol denial reads %v", err)
	}
	var one int
	if err := c.QueryRow(ctx, "SELECT $1::int", 1).Scan(&one); err != nil || one != 1 {
		t.Errorf("after the denials: %d, %v", one, err)
	}

	// psql, in a transaction, as an agent would type it.
	out, stderr, err := p.psql(p.token("agent-1"), "", "-v", "ON_ERROR_STOP=0",
		"-c", "BEGIN", "-c", "SELECT 1 /* sluice:deny */", "-c", "SELECT 2", "-c", "ROLLBACK", "-c", "SELECT 3")
	if !strings.Contains(stderr, "ERROR:  sluice: statement denied on orders-db") ||
		!strings.Contains(stderr, "current transaction is aborted") || !strings.HasSuffix(out, "3\n") {
		t.Errorf("psql: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
	}
	c.Close(ctx)
	p.quiesce()
	p.sim.RequireNoViolations(t)
}

// TestPostgresDenialReasonQuoting: sluice's reason travels to the server
// inside the replacement DO block (for the server's log). Reasons full of
// quoting hazards still make the server raise exactly the denial, and the
// agent reads them intact.
func TestPostgresDenialReasonQuoting(t *testing.T) {
	reasons := []string{
		`it's "denied" \ -- '; END; $$ DROP TABLE items; $$`,
		`it's "denied" \ -- '; END; DROP TABLE items; E'\''`,
		"tab\tnewline\nnul\x00end",
		"",
	}
	var next atomic.Int32 // set by the test, read by the gate on sluice's goroutine
	p := startPGPath(t, postgres.GateFunc(func(_ context.Context, st postgres.Statement) postgres.Verdict {
		if strings.Contains(st.SQL, "deny") {
			r := reasons[next.Load()]
			return postgres.Deny(r, "detail "+r, "hint")
		}
		return postgres.Allow()
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	for i, r := range reasons {
		next.Store(int32(i))
		_, err := c.Exec(ctx, "SELECT 'deny'", pgx.QueryExecModeSimpleProtocol)
		var pe *pgconn.PgError
		want := strings.ReplaceAll(r, "\x00", "")
		if want == "" {
			want = "sluice: statement denied on orders-db"
		}
		if !errors.As(err, &pe) || pe.Code != "42501" || pe.Message != want || pe.Detail != strings.ReplaceAll("detail "+r, "\x00", "") {
			t.Errorf("reason %d: got %v, want 42501 %q", i, err, want)
		}
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil || n != 3 {
		t.Errorf("items after the denials: %d, %v", n, err)
	}
	c.Close(ctx)
	p.quiesce()
	p.sim.RequireNoViolations(t)
}
