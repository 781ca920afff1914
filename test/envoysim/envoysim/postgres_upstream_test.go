package envoysim

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	pgv3alpha "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	starttlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/starttls/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Contract §5, "Upstream REQUIRE": postgres_proxy asks the server for TLS
// itself, and the cluster's starttls socket switches when the server says
// "S". These tests play the server: a fake Postgres that answers the
// SSLRequest and then speaks TLS with a client certificate required.

// authOK is AuthenticationOk, what the fake server says once it has the
// StartupMessage.
var authOK = []byte{'R', 0, 0, 0, 8, 0, 0, 0, 0}

// fakePG answers the first 8 bytes with answer and, after "S", serves TLS
// with cfg; events reports what it saw, in order.
type fakePG struct {
	answer byte
	cfg    *tls.Config
	events chan string
	// hold, when set, delays the answer until it is closed.
	hold chan struct{}
}

func (f *fakePG) handle(c net.Conn) {
	first := make([]byte, 8)
	if _, err := io.ReadFull(c, first); err != nil {
		f.events <- "read: " + err.Error()
		return
	}
	if bytes.Equal(first, sslRequestPacket()) {
		f.events <- "SSLRequest"
	} else {
		f.events <- fmt.Sprintf("first bytes %q", first)
	}
	if f.hold != nil {
		<-f.hold
	}
	if _, err := c.Write([]byte{f.answer}); err != nil || f.answer != 'S' {
		rest, _ := io.ReadAll(c)
		f.events <- fmt.Sprintf("clear text after %q: %q", f.answer, rest)
		return
	}
	tc := tls.Server(c, f.cfg)
	if err := tc.Handshake(); err != nil {
		f.events <- "handshake failed"
		return
	}
	st := tc.ConnectionState()
	cn := ""
	if len(st.PeerCertificates) > 0 {
		cn = st.PeerCertificates[0].Subject.CommonName
	}
	f.events <- fmt.Sprintf("TLS sni=%q client=%q", st.ServerName, cn)
	var n uint32
	if err := binary.Read(tc, binary.BigEndian, &n); err != nil || n < 8 || n > 10000 {
		f.events <- fmt.Sprintf("startup length %d: %v", n, err)
		return
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(tc, body); err != nil {
		f.events <- "startup: " + err.Error()
		return
	}
	f.events <- fmt.Sprintf("startup %q", body[4:])
	_, _ = tc.Write(authOK)
	_, _ = io.Copy(io.Discard, tc)
}

func (f *fakePG) next(t *testing.T) string {
	t.Helper()
	select {
	case e := <-f.events:
		return e
	case <-time.After(testTimeout):
		t.Fatal("the server saw nothing more")
	}
	return ""
}

// serverTLS requires a client certificate signed by pki's CA.
func serverTLS(t *testing.T, pki *testPKI) *tls.Config {
	t.Helper()
	cert, err := tls.X509KeyPair(pki.serverCert, pki.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki.caPEM)
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// startTLSCluster is the cluster sluice generates for a Postgres target with
// TLS to the server: starttls, presenting pki's client certificate,
// verifying the server against caPEM and the SAN, with sni.
func startTLSCluster(t *testing.T, addr string, pki *testPKI, caPEM []byte, sni string, withCert bool) *clusterv3.Cluster {
	t.Helper()
	common := &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(caPEM),
			MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
				SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: exactMatcher("db.sluice.test"),
			}},
		}},
	}
	if withCert {
		common.TlsCertificates = []*tlsv3.TlsCertificate{{CertificateChain: inline(pki.clientCert), PrivateKey: inline(pki.clientKey)}}
	}
	c := staticCluster(t, "db", addr, false)
	c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.starttls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(t, &starttlsv3.UpstreamStartTlsConfig{
			CleartextSocketConfig: &rawbufferv3.RawBuffer{},
			TlsSocketConfig:       &tlsv3.UpstreamTlsContext{CommonTlsContext: common, Sni: sni},
		})}}
	return c
}

type pgUpstreamSetup struct {
	sim  *Sim
	pg   *fakePG
	proc *processor
}

// setupUpstreamSSL builds [first..., postgres_proxy(upstream_ssl REQUIRE),
// ext_proc (echo), tcp_proxy] over cluster, which the test makes from the
// fake server's address.
func setupUpstreamSSL(t *testing.T, pg *fakePG, cluster func(addr string) *clusterv3.Cluster, first ...*listenerv3.Filter) *pgUpstreamSetup {
	t.Helper()
	up := startUpstream(t, pg.handle)
	proc, procAddr := startProcessor(t, respond(echo))
	filters := append(first, netFilter(t, "envoy.filters.network.postgres_proxy", &pgv3alpha.PostgresProxy{
		StatPrefix: "pg", UpstreamSsl: pgv3alpha.PostgresProxy_REQUIRE, EnableSqlParsing: wrapperspb.Bool(false),
	}), extProc(t, procConfig("processor", "ep")), tcpProxy(t, "db"))
	sim := newSim(t)
	err := sim.Apply([]*listenerv3.Listener{tcpListener(t, "pg", filters...)},
		[]*clusterv3.Cluster{cluster(up.addr), staticCluster(t, "processor", procAddr, true)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &pgUpstreamSetup{sim: sim, pg: pg, proc: proc}
}

// TestPostgresUpstreamSSL: the client sends a clear-text StartupMessage; the
// server gets postgres_proxy's SSLRequest, answers "S", gets a TLS
// handshake with the client certificate and the configured SNI, then the
// client's StartupMessage inside TLS; the client never sees the "S", and
// gets the server's answer in clear text. ext_proc, after postgres_proxy,
// sees the SSLRequest, the "S" on the write path, then the StartupMessage.
func TestPostgresUpstreamSSL(t *testing.T) {
	pki := newPKI(t, "db.sluice.test")
	pg := &fakePG{answer: 'S', cfg: serverTLS(t, pki), events: make(chan string, 10)}
	ps := setupUpstreamSSL(t, pg, func(addr string) *clusterv3.Cluster {
		return startTLSCluster(t, addr, pki, pki.caPEM, "db.sluice.test", true)
	})
	c := dial(t, ps.sim, "pg")
	mustWrite(t, c, string(startupMessage("alice")))
	for _, want := range []string{"SSLRequest", `TLS sni="db.sluice.test" client="alice"`, `startup "user\x00alice\x00\x00"`} {
		if got := pg.next(t); got != want {
			t.Fatalf("server saw %s, want %s", got, want)
		}
	}
	if got := readN(t, c, len(authOK)); got != string(authOK) {
		t.Fatalf("client got %q, want AuthenticationOk", got)
	}
	for _, want := range []string{
		fmt.Sprintf("read %q", sslRequestPacket()),
		`write "S"`,
		fmt.Sprintf("read %q", startupMessage("alice")),
		fmt.Sprintf("write %q", authOK),
	} {
		r := recvReq(t, ps.proc.reqs)
		got := fmt.Sprintf("read %q", r.GetReadData().GetData())
		if r.GetWriteData() != nil {
			got = fmt.Sprintf("write %q", r.GetWriteData().GetData())
		}
		if got != want {
			t.Fatalf("ext_proc got %s, want %s", got, want)
		}
	}
	if n := ps.sim.Stats().Get("postgres.pg.sessions_upstream_ssl_success"); n != 1 {
		t.Errorf("sessions_upstream_ssl_success = %d", n)
	}
	ps.sim.RequireNoViolations(t)
}

// TestPostgresUpstreamSSLRefused: a server that answers "N", one whose
// certificate the cluster does not trust, one that requires a client
// certificate the cluster does not have, and a cluster without the starttls
// socket all end the connection, with nothing sent in clear after the
// SSLRequest and nothing for the client to read.
func TestPostgresUpstreamSSLRefused(t *testing.T) {
	pki, other := newPKI(t, "db.sluice.test"), newPKI(t, "db.sluice.test")
	cases := []struct {
		name    string
		answer  byte
		cluster func(t *testing.T, addr string) *clusterv3.Cluster
		server  string // the server's second event
		stat    string
	}{
		{"server answers N", 'N', func(t *testing.T, addr string) *clusterv3.Cluster {
			return startTLSCluster(t, addr, pki, pki.caPEM, "db.sluice.test", true)
		}, `clear text after 'N': ""`, "sessions_upstream_ssl_failed"},
		{"untrusted server certificate", 'S', func(t *testing.T, addr string) *clusterv3.Cluster {
			return startTLSCluster(t, addr, pki, other.caPEM, "db.sluice.test", true)
		}, "handshake failed", "sessions_upstream_ssl_success"},
		{"no client certificate", 'S', func(t *testing.T, addr string) *clusterv3.Cluster {
			return startTLSCluster(t, addr, pki, pki.caPEM, "db.sluice.test", false)
		}, "handshake failed", "sessions_upstream_ssl_success"},
		{"cluster without starttls", 'S', func(t *testing.T, addr string) *clusterv3.Cluster {
			return staticCluster(t, "db", addr, false)
		}, "handshake failed", "sessions_upstream_ssl_failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pg := &fakePG{answer: tc.answer, cfg: serverTLS(t, pki), events: make(chan string, 10)}
			ps := setupUpstreamSSL(t, pg, func(addr string) *clusterv3.Cluster { return tc.cluster(t, addr) })
			c := dial(t, ps.sim, "pg")
			mustWrite(t, c, string(startupMessage("alice")))
			if got := pg.next(t); got != "SSLRequest" {
				t.Fatalf("server saw %s first", got)
			}
			got, _ := readToEOF(t, c)
			if got != "" {
				t.Errorf("client read %q", got)
			}
			if ev := pg.next(t); ev != tc.server {
				t.Errorf("server saw %s, want %s", ev, tc.server)
			}
			waitStat(t, ps.sim, "postgres.pg."+tc.stat, 1)
		})
	}
}

// TestPostgresUpstreamSSLClientSpeaksEarly: client bytes that arrive while
// the server is being asked for TLS put postgres_proxy out of sync and pass
// on in clear text, and the server's "S" then reaches the client. Envoy does
// not guard against it, so the processor must (sluice closes).
func TestPostgresUpstreamSSLClientSpeaksEarly(t *testing.T) {
	pki := newPKI(t, "db.sluice.test")
	pg := &fakePG{answer: 'S', cfg: serverTLS(t, pki), events: make(chan string, 10), hold: make(chan struct{})}
	ps := setupUpstreamSSL(t, pg, func(addr string) *clusterv3.Cluster {
		return startTLSCluster(t, addr, pki, pki.caPEM, "db.sluice.test", true)
	})
	c := dial(t, ps.sim, "pg")
	mustWrite(t, c, string(startupMessage("alice")))
	if got := pg.next(t); got != "SSLRequest" {
		t.Fatalf("server saw %s first", got)
	}
	recvReq(t, ps.proc.reqs) // the SSLRequest
	mustWrite(t, c, "early")
	if r := recvReq(t, ps.proc.reqs); string(r.GetReadData().GetData()) != "early" {
		t.Fatalf("ext_proc got %v", r)
	}
	close(pg.hold)
	if got := readN(t, c, 1); got != "S" {
		t.Fatalf("client read %q", got)
	}
	if n := ps.sim.Stats().Get("postgres.pg.sessions_upstream_ssl_success"); n != 0 {
		t.Errorf("sessions_upstream_ssl_success = %d", n)
	}
}

// TestPostgresUpstreamSSLAfterExtAuthz: ext_authz after postgres_proxy
// swallows the SSLRequest postgres_proxy injects. ext_authz sends its Check
// on the first bytes it sees (the injected SSLRequest) and, once allowed,
// resumes with the connection's read buffer (continueReading), which
// postgres_proxy had drained: the SSLRequest never reaches the server and
// the connection waits forever. This is why sluice puts ext_authz first.
func TestPostgresUpstreamSSLAfterExtAuthz(t *testing.T) {
	pki := newPKI(t, "db.sluice.test")
	_, authzAddr := startAuthorizer(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{Status: &status.Status{}}, nil
	})
	for _, authzFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("ext_authz first %v", authzFirst), func(t *testing.T) {
			pg := &fakePG{answer: 'S', cfg: serverTLS(t, pki), events: make(chan string, 10)}
			up := startUpstream(t, pg.handle)
			_, procAddr := startProcessor(t, respond(echo))
			authz := extAuthz(t, &extauthzv3.ExtAuthz{StatPrefix: "az", GrpcService: grpcService("authz")})
			pgf := netFilter(t, "envoy.filters.network.postgres_proxy", &pgv3alpha.PostgresProxy{
				StatPrefix: "pg", UpstreamSsl: pgv3alpha.PostgresProxy_REQUIRE, EnableSqlParsing: wrapperspb.Bool(false),
			})
			filters := []*listenerv3.Filter{authz, pgf}
			if !authzFirst {
				filters = []*listenerv3.Filter{pgf, authz}
			}
			filters = append(filters, extProc(t, procConfig("processor", "ep")), tcpProxy(t, "db"))
			sim := newSim(t)
			if err := sim.Apply([]*listenerv3.Listener{tcpListener(t, "pg", filters...)}, []*clusterv3.Cluster{
				startTLSCluster(t, up.addr, pki, pki.caPEM, "db.sluice.test", true),
				staticCluster(t, "processor", procAddr, true), staticCluster(t, "authz", authzAddr, true),
			}, nil); err != nil {
				t.Fatal(err)
			}
			c := dial(t, sim, "pg")
			mustWrite(t, c, string(startupMessage("alice")))
			waitStat(t, sim, "ext_authz.az.ok", 1)
			if authzFirst {
				if got := pg.next(t); got != "SSLRequest" {
					t.Fatalf("server saw %s", got)
				}
				return
			}
			// Nothing is in flight once the Check is answered; a short wait
			// only lets a wrongly forwarded SSLRequest arrive.
			select {
			case ev := <-pg.events:
				t.Fatalf("server saw %s", ev)
			case <-time.After(300 * time.Millisecond):
			}
		})
	}
}

func exactMatcher(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

// TestPostgresUpstreamSSLBehindDownstreamTLS: both sides in TLS, as sluice
// configures a target with a client certificate: ext_authz first, the
// client's SSLRequest terminated on the listener's starttls socket, then
// the decrypted StartupMessage kept while the server is asked for TLS.
// ext_proc never sees the client's SSLRequest, only postgres_proxy's.
func TestPostgresUpstreamSSLBehindDownstreamTLS(t *testing.T) {
	pki := newPKI(t, "db.sluice.test")
	_, authzAddr := startAuthorizer(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{Status: &status.Status{}}, nil
	})
	pg := &fakePG{answer: 'S', cfg: serverTLS(t, pki), events: make(chan string, 10)}
	up := startUpstream(t, pg.handle)
	proc, procAddr := startProcessor(t, respond(echo))
	l := tcpListener(t, "pg",
		extAuthz(t, &extauthzv3.ExtAuthz{StatPrefix: "az", GrpcService: grpcService("authz")}),
		netFilter(t, "envoy.filters.network.postgres_proxy", &pgv3alpha.PostgresProxy{
			StatPrefix: "pg", DownstreamSsl: pgv3alpha.PostgresProxy_ALLOW, UpstreamSsl: pgv3alpha.PostgresProxy_REQUIRE,
			EnableSqlParsing: wrapperspb.Bool(false),
		}),
		extProc(t, procConfig("processor", "ep")), tcpProxy(t, "db"))
	l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.starttls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(t, &starttlsv3.StartTlsConfig{
			CleartextSocketConfig: &rawbufferv3.RawBuffer{},
			TlsSocketConfig:       downstreamTLS(pki, false),
		})}}
	sim := newSim(t)
	if err := sim.Apply([]*listenerv3.Listener{l}, []*clusterv3.Cluster{
		startTLSCluster(t, up.addr, pki, pki.caPEM, "db.sluice.test", true),
		staticCluster(t, "processor", procAddr, true), staticCluster(t, "authz", authzAddr, true),
	}, nil); err != nil {
		t.Fatal(err)
	}
	c := dial(t, sim, "pg")
	mustWrite(t, c, string(sslRequest()))
	if s := readN(t, c, 1); s != "S" {
		t.Fatalf("SSLRequest answered %q", s)
	}
	cfg := pki.clientTLS.Clone()
	cfg.Certificates = nil
	tc := tls.Client(c, cfg)
	if _, err := tc.Write(startupMessage("alice")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SSLRequest", `TLS sni="db.sluice.test" client="alice"`, `startup "user\x00alice\x00\x00"`} {
		if got := pg.next(t); got != want {
			t.Fatalf("server saw %s, want %s", got, want)
		}
	}
	if got := readN(t, tc, len(authOK)); got != string(authOK) {
		t.Fatalf("client got %q", got)
	}
	if r := recvReq(t, proc.reqs); !bytes.Equal(r.GetReadData().GetData(), sslRequestPacket()) {
		t.Fatalf("ext_proc's first chunk %q", r.GetReadData().GetData())
	}
	sim.RequireNoViolations(t)
}
