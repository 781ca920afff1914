package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/extproc"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/envoysim/envoysim"
	"github.com/sluicehq/sluice/test/testenv"
	"github.com/sluicehq/sluice/xds"
)

// pgPath is the whole Postgres path on loopback: a real Postgres 15, a
// real OIDC provider, sluice's xDS, ext_authz and network ext_proc
// services, and envoysim playing Envoy with the listeners sluice sent it.
type pgPath struct {
	t      *testing.T
	pg     *testenv.Postgres
	idp    *testenv.OIDCProvider
	sim    *envoysim.Sim
	audit  *recordingSink
	addr   string // the orders-db listener agents connect to
	port   string
	upPass string // the target role's password, which only sluice knows
}

const pgPathConfig = `
server: { xds: %[1]s, authz: %[2]s, extproc: %[3]s, api: 127.0.0.1:%[4]d }
envoy: { node: e2e-pg, listen_address: 127.0.0.1 }
identity:
  issuers: [{ issuer: "%[5]s", audiences: [sluice], groups_claim: groups }]
targets:
  - name: orders-db
    kind: postgres
    port: %[6]d
    upstream: "127.0.0.1:%[7]d"
    database: orders
    ` + defaultCredentials + `
%[8]s`

// defaultCredentials are the target's in pgPathConfig: sluice logs in as
// app with its password. pgOptions.target replaces them.
const defaultCredentials = "credentials: { user: app, password_env: SLUICE_E2E_ORDERS_PASSWORD }"

// defaultPolicies lets agents read; the tests that use them gate
// statements with postgres.MarkerGate.
const defaultPolicies = `policies:
  - { name: agents-read, targets: [orders-db], principals: { groups: [agents] }, allow: [read] }
`

// pgOptions vary the path: the policies block of the config, and the
// statement gate built from the running config, grant store and sink.
type pgOptions struct {
	policies string
	gate     func(cfg *policies.Config, grants authz.GrantStore, sink audit.Sink) postgres.Gate
	// tls starts Postgres with ssl=on and a PKI of its own
	// (testenv.WithTLS).
	tls bool
	// target, when set, gives the target's credentials (a YAML flow
	// mapping) and further keys (lines indented four spaces), once
	// Postgres runs with the orders database; by default sluice logs in
	// as app with its password.
	target func(t testing.TB, pg *testenv.Postgres) (credentials, extra string)
}

// upstreamPassword has characters that need care in SQL, URLs and SCRAM.
const upstreamPassword = "s3cr3t 'pa$$' ünï"

// startPGPath starts the path; gate, when given, replaces the default
// statement gate (postgres.MarkerGate).
func startPGPath(t *testing.T, gate ...postgres.Gate) *pgPath {
	t.Helper()
	o := pgOptions{policies: defaultPolicies}
	if len(gate) > 0 {
		o.gate = func(*policies.Config, authz.GrantStore, audit.Sink) postgres.Gate { return gate[0] }
	}
	p, _ := startPGPathWith(t, o)
	return p
}

// startPGPathWith starts the path with options and returns its grant store.
func startPGPathWith(t *testing.T, o pgOptions) (*pgPath, grants.Store) {
	t.Helper()
	var pgOpts []testenv.PostgresOption
	if o.tls {
		pgOpts = append(pgOpts, testenv.WithTLS())
	}
	pg := testenv.StartPostgres(t, pgOpts...)
	pg.CreateDatabase("orders")
	pg.SetAuth(t, "app", upstreamPassword, testenv.AuthSCRAM)
	pg.AdminExec(t, "orders",
		"CREATE TABLE items (id int PRIMARY KEY, name text)",
		"INSERT INTO items VALUES (1, 'anvil'), (2, 'rocket skates'), (3, 'bird seed')",
		"GRANT SELECT ON items TO app",
		"CREATE TABLE secrets (id int)", // app has no privilege on it
	)
	idp := testenv.StartOIDC(t)
	idp.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents"}})
	t.Setenv("SLUICE_E2E_ORDERS_PASSWORD", upstreamPassword)

	xdsSrv, err := xds.NewServer(xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := serveGRPC(t, xdsSrv.Register)
	authzLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	extprocLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listenPort := freePort(t)
	text := fmt.Sprintf(pgPathConfig, xdsAddr, authzLis.Addr(), extprocLis.Addr(), freePort(t), idp.Issuer, listenPort, pg.Port, o.policies)
	if o.target != nil {
		creds, extra := o.target(t, pg)
		text = strings.Replace(text, defaultCredentials+"\n", "credentials: "+creds+"\n"+extra, 1)
	}
	cfg, err := policies.Load("e2e-pg.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingSink{}
	store := grants.NewEmbeddedStore()
	authzSrv, err := authz.NewServer(cfg, authz.Options{Grants: authz.GrantsFrom(store), Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	// Wired as serve wires it: the verifier is the authz server's, so
	// both share one verified-token cache.
	opts := extproc.NetworkOptions{Config: cfg, Verifier: authzSrv, Audit: rec, Gate: postgres.MarkerGate{}}
	if o.gate != nil {
		opts.Gate = o.gate(cfg, authz.AuditedGrants(store, rec), rec)
	}
	netSrv, err := extproc.NewNetworkServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	serveGRPCOn(t, authzLis, authzSrv.Register)
	serveGRPCOn(t, extprocLis, netSrv.Register)
	if err := xdsSrv.Update(cfg); err != nil {
		t.Fatal(err)
	}

	// sluice's bootstrap turns connection_close_through_filter_manager on
	// (xds/bootstrap), and the Postgres path depends on it: when the server
	// ends a login with FATAL it closes at once, and tcp_proxy closes the
	// downstream. With the flag off Envoy would not wait for sluice's
	// answer to the chunk holding that FATAL, and the agent would see the
	// connection drop without the reason (envoy-contract.md section 0.1).
	sim := startSim(t, xdsAddr, "orders-db", envoysim.WithNode(&corev3.Node{Id: "e2e-pg"}), envoysim.WithLogf(simLog(t)),
		envoysim.WithCloseThroughFilterManager(true))
	addr := sim.ListenerAddr("orders-db")
	_, port, _ := net.SplitHostPort(addr)
	return &pgPath{t: t, pg: pg, idp: idp, sim: sim, audit: rec, addr: addr, port: port, upPass: upstreamPassword}, store
}

// token is an access token for client from the provider.
func (p *pgPath) token(client string) string { return p.idp.Token(p.t, client) }

// connString is a keyword/value string for the listener that libpq and
// pgx both read.
func (p *pgPath) connString(extra string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%s user=agent-1 dbname=anything sslmode=disable connect_timeout=10 %s", p.port, extra)
}

// pgx connects with the token as the password.
func (p *pgPath) pgx(ctx context.Context, token string) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(p.connString(""))
	if err != nil {
		return nil, err
	}
	cc.Password = token
	return pgx.ConnectConfig(ctx, cc)
}

// psql runs the real psql (libpq) with the token as PGPASSWORD.
func (p *pgPath) psql(token, extra string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command("psql", append([]string{p.connString(extra), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"}, args...)...)
	// No GSS encryption: libpq would try it first where Kerberos
	// credentials exist, and sluice must read every byte.
	cmd.Env = append(os.Environ(), "PGPASSWORD="+token, "PGGSSENCMODE=disable")
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		err = errors.New("psql timed out")
		<-done
	}
	return out.String(), errb.String(), err
}

// quiesce waits until every ext_proc stream the sim opened has closed, so
// the violation counters and the audit trail are complete.
func (p *pgPath) quiesce() {
	p.t.Helper()
	st := p.sim.Stats()
	deadline := time.Now().Add(15 * time.Second)
	for {
		started, closed := st.Get("network_ext_proc.orders-db.streams_started"), st.Get("network_ext_proc.orders-db.streams_closed")
		if started == closed && p.audit.openSessions() == 0 {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			st.WriteTo(&b)
			p.t.Fatalf("ext_proc streams still open: %d started, %d closed; audit sessions open %d\n%s", started, closed, p.audit.openSessions(), b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// recordingSink is an audit.Sink that keeps every event and can be made
// to fail.
type recordingSink struct {
	mu     sync.Mutex
	events []audit.Event
	fail   map[audit.Kind]bool
}

func (r *recordingSink) Append(_ context.Context, e audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail[e.Kind] {
		return errors.New("audit store unavailable (test)")
	}
	r.events = append(r.events, e)
	return nil
}

func (r *recordingSink) failKind(k audit.Kind, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail == nil {
		r.fail = map[audit.Kind]bool{}
	}
	r.fail[k] = on
}

// take returns the Postgres-session events recorded so far and forgets them.
func (r *recordingSink) take() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out, rest []audit.Event
	for _, e := range r.events {
		if e.Kind == audit.KindSessionStart || e.Kind == audit.KindSessionEnd || e.Kind == audit.KindAuthn {
			out = append(out, e)
		} else {
			rest = append(rest, e)
		}
	}
	r.events = rest
	return out
}

func (r *recordingSink) openSessions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		switch e.Kind {
		case audit.KindSessionStart:
			n++
		case audit.KindSessionEnd:
			n--
		}
	}
	return n
}

// sessions groups events by session and returns each one's kinds and
// decisions, e.g.
// "session.start authn:allow session.end".
func sessions(events []audit.Event) map[string]string {
	out := map[string]string{}
	for _, e := range events {
		s := string(e.Kind)
		if e.Kind == audit.KindAuthn {
			s += ":" + e.Decision
		}
		if out[e.SessionID] != "" {
			s = " " + s
		}
		out[e.SessionID] += s
	}
	return out
}
