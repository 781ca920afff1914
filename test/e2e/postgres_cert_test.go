package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/test/testenv"
)

// certRole is the target role that logs in with a certificate only
// (pg_hba.conf "hostssl all cert_app 127.0.0.1/32 cert").
const certRole = "cert_app"

// certTarget makes the target's upstream accept certificate authentication
// only, for certRole, which may read items. creds returns the client
// certificate and key sluice's config names (none: no certificate);
// withCA names the server's CA as upstream_ca_file. Envoy terminates the
// agents' TLS with a certificate from the same PKI (the policies require
// it with TLS to the target).
func certTarget(creds func(t testing.TB, pg *testenv.Postgres) (cert, key string), withCA bool) func(t testing.TB, pg *testenv.Postgres) (string, string) {
	return func(t testing.TB, pg *testenv.Postgres) (string, string) {
		pg.SetCertAuth(t, certRole)
		pg.AdminExec(t, "orders", "GRANT SELECT ON items TO "+certRole)
		c := fmt.Sprintf("{ user: %s", certRole)
		if creds != nil {
			cert, key := creds(t, pg)
			c += fmt.Sprintf(", client_cert_file: %q, client_key_file: %q", cert, key)
		}
		c += " }"
		srvCert, srvKey := pg.PKI.ServerCert("envoy")
		extra := fmt.Sprintf("    tls: { cert_file: %q, key_file: %q }\n", srvCert, srvKey)
		if withCA {
			extra += fmt.Sprintf("    upstream_ca_file: %q\n", pg.PKI.CAFile)
		}
		return c, extra
	}
}

// roleCert is the certificate of role from the server's own PKI.
func roleCert(role string) func(t testing.TB, pg *testenv.Postgres) (string, string) {
	return func(_ testing.TB, pg *testenv.Postgres) (string, string) { return pg.PKI.ClientCert(role) }
}

// TestPostgresCertAuth: the target accepts sluice only with a client
// certificate over TLS. The agent logs in as usual, with its token as the
// password, with psql (libpq: in clear text to Envoy, then over TLS) and
// pgx; Envoy asks the server for TLS, presents the certificate, verifies
// the server against the CA, and the statements run as the certificate's
// role inside TLS. The audit trail records a cert login per session.
func TestPostgresCertAuth(t *testing.T) {
	p, _ := startPGPathWith(t, pgOptions{policies: defaultPolicies, tls: true, target: certTarget(roleCert(certRole), true)})
	tok := p.token("agent-1")
	const sslQuery = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
	for _, mode := range []string{"sslmode=disable", "sslmode=require"} {
		out, stderr, err := p.psql(tok, mode, "-c", "SELECT name FROM items ORDER BY id", "-c", "SELECT current_user", "-c", sslQuery)
		if err != nil {
			t.Fatalf("psql %s: %v\n%s", mode, err, stderr)
		}
		if want := "anvil\nrocket skates\nbird seed\n" + certRole + "\nt\n"; out != want {
			t.Errorf("psql %s printed %q, want %q", mode, out, want)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := p.pgx(ctx, tok)
	if err != nil {
		t.Fatalf("pgx: %v", err)
	}
	var n int
	var user string
	var ssl bool
	if err := c.QueryRow(ctx, "SELECT count(*), current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) FROM items WHERE id > $1", 0).Scan(&n, &user, &ssl); err != nil {
		t.Fatal(err)
	}
	if n != 3 || user != certRole || !ssl {
		t.Errorf("pgx read %d rows as %s, ssl %v; want 3 as %s over TLS", n, user, ssl, certRole)
	}
	c.Close(ctx)

	p.quiesce()
	events := p.audit.take()
	for src, seq := range sessions(events) {
		if seq != "session.start authn:allow session.end" {
			t.Errorf("session %s: audit %q", src, seq)
		}
	}
	for _, e := range events {
		if e.Kind == "authn" && !strings.HasSuffix(e.Reason, "upstream cert") {
			t.Errorf("authn event reason %q, want the cert mode", e.Reason)
		}
	}
	if got := p.sim.Stats().Get("postgres.orders-db.sessions_upstream_ssl_success"); got != 3 {
		t.Errorf("sessions_upstream_ssl_success = %d, want 3", got)
	}
	p.sim.RequireNoViolations(t)
}

// TestPostgresCertAuthRefused: when the target refuses the certificate
// (none configured, or one for another role), the agent gets the server's
// reason in a FATAL that says it is the target refusing sluice, with psql
// and pgx, and the connection ends; it never hangs.
func TestPostgresCertAuthRefused(t *testing.T) {
	cases := []struct {
		name  string
		creds func(t testing.TB, pg *testenv.Postgres) (string, string)
		says  string
	}{
		{"no client certificate", nil, "connection requires a valid client certificate"},
		{"certificate of another role", roleCert("someone_else"), `certificate authentication failed for user "` + certRole + `"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := startPGPathWith(t, pgOptions{policies: defaultPolicies, tls: true, target: certTarget(tc.creds, true)})
			want := "sluice: target orders-db refused the connection: " + tc.says
			_, stderr, err := p.psql(p.token("agent-1"), "", "-c", "SELECT 1")
			if err == nil || !strings.Contains(stderr, "FATAL:  "+want) {
				t.Errorf("psql: %v\n%s", err, stderr)
			}
			err = pgxRefused(t, p)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Severity != "FATAL" || pe.Code != "28000" || pe.Message != want {
				t.Errorf("pgx: %v, want FATAL 28000 %q", err, want)
			}
			p.quiesce()
			p.sim.RequireNoViolations(t)
		})
	}
}

// pgxRefused connects with pgx as agent-1, for up to 20 seconds, and
// returns why it could not; logging in fails the test.
func pgxRefused(t *testing.T, p *pgPath) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := p.pgx(ctx, p.token("agent-1"))
	if err == nil {
		c.Close(ctx)
		t.Fatal("pgx logged in")
	}
	return err
}

// TestPostgresCertAuthNoTLS: a certificate the server's CA did not sign,
// and a server that answers Envoy's SSLRequest 'N' (ssl off), both end the
// connection before any login: the TLS handshake fails, or postgres_proxy
// (upstream_ssl REQUIRE) closes rather than speak clear text. Envoy gives
// no write slot to say why in either case, so the client sees the
// connection close, promptly; nothing reaches the server in clear text.
func TestPostgresCertAuthNoTLS(t *testing.T) {
	foreign := func(t testing.TB, pg *testenv.Postgres) (string, string) {
		return testenv.NewPKI(t, "a CA the server does not know", pg.SocketDir).ClientCert(certRole)
	}
	cases := []struct {
		name string
		o    pgOptions
		stat string
	}{
		{"certificate from an unknown CA", pgOptions{policies: defaultPolicies, tls: true, target: certTarget(foreign, true)},
			"postgres.orders-db.sessions_upstream_ssl_success"},
		{"server without TLS", pgOptions{policies: defaultPolicies, target: func(t testing.TB, pg *testenv.Postgres) (string, string) {
			pki := testenv.NewPKI(t, "Envoy's CA", pg.SocketDir)
			cert, key := pki.ClientCert(certRole)
			srvCert, srvKey := pki.ServerCert("envoy")
			return fmt.Sprintf("{ user: app, client_cert_file: %q, client_key_file: %q }", cert, key),
				fmt.Sprintf("    tls: { cert_file: %q, key_file: %q }\n", srvCert, srvKey)
		}}, "postgres.orders-db.sessions_upstream_ssl_failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := startPGPathWith(t, tc.o)
			start := time.Now()
			_, stderr, err := p.psql(p.token("agent-1"), "", "-c", "SELECT 1")
			if err == nil || !strings.Contains(stderr, "server closed the connection unexpectedly") {
				t.Errorf("psql: %v\n%s", err, stderr)
			}
			err = pgxRefused(t, p)
			if errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 15*time.Second {
				t.Errorf("the refusal took %s: %v", time.Since(start), err)
			}
			if got := p.sim.Stats().Get(tc.stat); got != 2 {
				t.Errorf("%s = %d, want 2", tc.stat, got)
			}
			p.quiesce()
			p.sim.RequireNoViolations(t)
		})
	}
}
