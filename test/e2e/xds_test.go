package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/envoysim/envoysim"
	"github.com/sluicehq/sluice/test/testenv"
	"github.com/sluicehq/sluice/xds"
)

func freePort(t *testing.T) int {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// serveGRPC starts a gRPC server on a free loopback port.
func serveGRPC(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveGRPCOn(t, lis, register)
	return lis.Addr().String()
}

// serveGRPCOn serves register's services on lis until the test ends.
func serveGRPCOn(t *testing.T, lis net.Listener, register func(*grpc.Server)) {
	g := grpc.NewServer()
	register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
}

// startSim starts a stand-in with opts, subscribes it to sluice's ADS at
// xdsAddr and waits, up to 20 s, until the listener named ready is active.
// The stand-in closes when the test ends.
func startSim(t *testing.T, xdsAddr, ready string, opts ...envoysim.Option) *envoysim.Sim {
	t.Helper()
	sim := envoysim.New(opts...)
	t.Cleanup(func() { sim.Close() })
	if err := sim.ConnectADS(xdsAddr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := sim.WaitFor(ctx, func() bool { return sim.ListenerAddr(ready) != "" }); err != nil {
		t.Fatalf("listener %s not active: %v", ready, err)
	}
	return sim
}

const postgresTargets = `
server: { xds: %[1]s, authz: %[2]s, extproc: %[3]s, api: 127.0.0.1:%[4]d }
envoy: { node: e2e, listen_address: 127.0.0.1 }
identity:
  issuers: [{ issuer: https://idp.example.com, audiences: [sluice] }]
targets:
  - { name: orders-db, kind: postgres, port: %[5]d, upstream: "%[7]s", database: orders, credentials: { user: app } }
  - name: secure-db
    kind: postgres
    port: %[6]d
    upstream: "%[7]s"
    database: orders
    credentials: { user: app }
    tls: { cert_file: %[8]s/demo-server.crt, key_file: %[8]s/demo-server.key }
  - { name: off-db, kind: postgres, port: %[9]d, upstream: "%[7]s", database: orders, credentials: { user: app }, disabled: true }
policies:
  - { name: p, targets: [orders-db, secure-db, off-db], principals: { groups: [agents] }, allow: [read] }
`

// TestEnvoysimAcceptsSluiceXDS: the stand-in, which NACKs anything Envoy
// would treat differently from it, accepts every Postgres resource sluice
// emits, builds the listeners, and a connection through them reaches
// sluice's real ext_authz and is refused exactly where sluice is not yet
// complete (no ext_proc service: a gRPC error, fail closed).
func TestEnvoysimAcceptsSluiceXDS(t *testing.T) {
	upstream := startUpstream(t)
	certs, _ := filepath.Abs("../../policies/examples/certs")

	xdsSrv, err := xds.NewServer(xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := serveGRPC(t, xdsSrv.Register)
	// The ext_proc address serves nothing: Envoy's Process calls fail.
	extprocAddr := serveGRPC(t, func(*grpc.Server) {})

	// The config names the authz address, and the authz server needs the
	// config: bind its listener first.
	authzLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ordersPort, securePort, offPort := freePort(t), freePort(t), freePort(t)
	cfgText := fmt.Sprintf(postgresTargets, xdsAddr, authzLis.Addr().String(), extprocAddr, freePort(t), ordersPort, securePort, upstream, certs, offPort)
	cfg, err := policies.Load("e2e.yaml", []byte(cfgText))
	if err != nil {
		t.Fatal(err)
	}
	authzSrv, err := authz.NewServer(cfg, authz.Options{Grants: authz.GrantsFrom(grants.NewEmbeddedStore()), Audit: audit.LogSink{Log: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	authzSrv.Register(g)
	go g.Serve(authzLis)
	t.Cleanup(g.Stop)

	if err := xdsSrv.Update(cfg); err != nil {
		t.Fatal(err)
	}

	sim := envoysim.New(envoysim.WithNode(&corev3.Node{Id: "e2e"}), envoysim.WithLogf(simLog(t)), envoysim.WithCloseThroughFilterManager(true))
	t.Cleanup(func() { sim.Close() })
	if err := sim.ConnectADS(xdsAddr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	want := xdsSrv.Version()
	if err := sim.WaitFor(ctx, func() bool {
		return sim.XDS(envoysim.ListenerType).AcceptedVersion == want && sim.XDS(envoysim.ClusterType).AcceptedVersion == want &&
			sim.ListenerAddr("secure-db") != ""
	}); err != nil {
		t.Fatalf("the stand-in did not accept sluice's snapshot %s: listeners %+v, clusters %+v", want, sim.XDS(envoysim.ListenerType), sim.XDS(envoysim.ClusterType))
	}
	for _, typ := range []string{envoysim.ListenerType, envoysim.ClusterType, envoysim.SecretType} {
		if st := sim.XDS(typ); st.NACKs != 0 {
			t.Errorf("%s NACKed: %s", typ, st.LastNACK)
		}
	}
	if n := xdsSrv.NACKs(); n != 0 {
		t.Errorf("sluice counted %d NACKs", n)
	}

	// A Postgres client's first bytes: authorized by sluice (the listener
	// port names the target), then refused because no ext_proc answers.
	conn, err := net.Dial("tcp", sim.ListenerAddr("orders-db"))
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(startupMessage("agent-1", "orders"))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, conn); err != nil || n != 0 {
		t.Errorf("connection with no ext_proc: read %d bytes, err %v; want a clean close with nothing", n, err)
	}
	conn.Close()

	// The TLS target: Envoy answers SSLRequest with 'S' and terminates TLS
	// with the certificate sluice sent over SDS.
	sec, err := net.Dial("tcp", sim.ListenerAddr("secure-db"))
	if err != nil {
		t.Fatal(err)
	}
	defer sec.Close()
	sec.SetDeadline(time.Now().Add(10 * time.Second))
	sec.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}) // SSLRequest, code 80877103
	answer := make([]byte, 1)
	if _, err := io.ReadFull(sec, answer); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v; want S", answer, err)
	}
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(filepath.Join(certs, "demo-ca.crt"))
	pool.AppendCertsFromPEM(ca)
	tc := tls.Client(sec, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake with the SDS certificate: %v", err)
	}

	// A disabled target: ext_authz denies and Envoy closes.
	off, err := net.Dial("tcp", sim.ListenerAddr("off-db"))
	if err != nil {
		t.Fatal(err)
	}
	off.Write(startupMessage("agent-1", "orders"))
	off.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, off)
	off.Close()

	if err := sim.WaitFor(ctx, func() bool {
		st := sim.Stats()
		return st.Get("ext_authz.orders-db.ok") == 1 && st.Get("ext_authz.off-db.denied") == 1 &&
			st.Get("network_ext_proc.orders-db.streams_grpc_error")+st.Get("network_ext_proc.orders-db.stream_open_failures") == 1
	}); err != nil {
		var b strings.Builder
		sim.Stats().WriteTo(&b)
		t.Fatalf("stats:\n%s", b.String())
	}
	// The one chunk Envoy sent to a processor that does not exist is the
	// one violation; anything else means sluice or the wiring broke the
	// contract. With the ext_proc service in place (issue 6) this becomes
	// RequireNoViolations.
	for kind, n := range sim.Violations() {
		if want := map[string]int64{"unanswered_chunks": 1}[kind]; n != want {
			t.Errorf("violation %s = %d, want %d", kind, n, want)
		}
	}
}

// startUpstream is a TCP server that accepts and holds connections, as a
// Postgres waiting for a StartupMessage would.
func startUpstream(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return l.Addr().String()
}

// startupMessage is a Postgres v3 StartupMessage.
func startupMessage(user, db string) []byte {
	body := []byte{0, 3, 0, 0}
	for _, kv := range [][2]string{{"user", user}, {"database", db}} {
		body = append(body, kv[0]...)
		body = append(body, 0)
		body = append(body, kv[1]...)
		body = append(body, 0)
	}
	body = append(body, 0)
	n := len(body) + 4
	return append([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

// simLog is envoysim's log: every chunk and event, which is a lot (a
// pgbench run logs tens of thousands of lines), so only when
// SLUICE_E2E_SIM_LOG is set.
func simLog(t *testing.T) func(string, ...any) {
	if os.Getenv("SLUICE_E2E_SIM_LOG") == "" {
		return func(string, ...any) {}
	}
	return t.Logf
}
