package envoysim

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"testing"

	pgv3alpha "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	starttlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/starttls/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func sslRequest() []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, 8)
	binary.BigEndian.PutUint32(b[4:], pgSSLRequestCode)
	return b
}

func startupMessage(user string) []byte {
	body := binary.BigEndian.AppendUint32(nil, 196608) // protocol 3.0
	body = append(body, "user\x00"+user+"\x00\x00"...)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

type pgSetup struct {
	sim  *Sim
	got  chan []byte
	proc *processor
	pki  *testPKI
}

// setupPostgres builds [postgres_proxy, (ext_proc,) tcp_proxy], with the
// starttls transport socket when starttls is set.
func setupPostgres(t *testing.T, mode pgv3alpha.PostgresProxy_SSLMode, starttls, withProc bool) *pgSetup {
	t.Helper()
	ps := &pgSetup{got: make(chan []byte, 100), pki: newPKI(t, "db.sluice.test")}
	up := startUpstream(t, recordHandler(ps.got))
	clusters := []*clusterv3.Cluster{staticCluster(t, "upstream", up.addr, false)}
	filters := []*listenerv3.Filter{netFilter(t, "envoy.filters.network.postgres_proxy", &pgv3alpha.PostgresProxy{
		StatPrefix: "pg", DownstreamSsl: mode, EnableSqlParsing: wrapperspb.Bool(false),
	})}
	if withProc {
		var addr string
		ps.proc, addr = startProcessor(t, respond(echo))
		clusters = append(clusters, staticCluster(t, "processor", addr, true))
		filters = append(filters, extProc(t, procConfig("processor", "ep")))
	}
	l := tcpListener(t, "pg", append(filters, tcpProxy(t, "upstream"))...)
	if starttls {
		l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.starttls",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(t, &starttlsv3.StartTlsConfig{
				CleartextSocketConfig: &rawbufferv3.RawBuffer{},
				TlsSocketConfig:       downstreamTLS(ps.pki, false),
			})}}
	}
	ps.sim = newSim(t)
	if err := ps.sim.Apply([]*listenerv3.Listener{l}, clusters, nil); err != nil {
		t.Fatal(err)
	}
	return ps
}

// Contract §5: by default the filter is a pass-through: the upstream gets the
// client's exact bytes.
func TestPostgresPassesBytesThrough(t *testing.T) {
	ps := setupPostgres(t, pgv3alpha.PostgresProxy_DISABLE, false, false)
	c := dial(t, ps.sim, "pg")
	msg := append(startupMessage("alice"), 'Q', 0, 0, 0, 13, 's', 'e', 'l', 'e', 'c', 't', ' ', '1', 0)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, ps.got, len(msg)); got != string(msg) {
		t.Fatalf("upstream got %q", got)
	}
}

// Contract §5: downstream DISABLE forwards the SSLRequest; the rest is opaque.
func TestPostgresDisableForwardsSSLRequest(t *testing.T) {
	ps := setupPostgres(t, pgv3alpha.PostgresProxy_DISABLE, false, false)
	c := dial(t, ps.sim, "pg")
	if _, err := c.Write(sslRequest()); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, ps.got, 8); got != string(sslRequest()) {
		t.Fatalf("upstream got %q", got)
	}
}

// Contract §5: with REQUIRE (and ALLOW) the SSLRequest is answered "S" and
// consumed, TLS is terminated with the listener's certificate through the
// starttls transport socket, and the filters after postgres (ext_proc) see the
// decrypted StartupMessage but never the SSLRequest.
func TestPostgresTerminatesSSL(t *testing.T) {
	for _, mode := range []pgv3alpha.PostgresProxy_SSLMode{pgv3alpha.PostgresProxy_REQUIRE, pgv3alpha.PostgresProxy_ALLOW} {
		t.Run(mode.String(), func(t *testing.T) {
			ps := setupPostgres(t, mode, true, true)
			c := dial(t, ps.sim, "pg")
			if _, err := c.Write(sslRequest()); err != nil {
				t.Fatal(err)
			}
			if s := readN(t, c, 1); s != "S" {
				t.Fatalf("SSLRequest answered %q", s)
			}
			cfg := ps.pki.clientTLS.Clone()
			cfg.Certificates = nil
			tc := tls.Client(c, cfg)
			if err := tc.Handshake(); err != nil {
				t.Fatalf("TLS handshake: %v", err)
			}
			if _, err := tc.Write(startupMessage("alice")); err != nil {
				t.Fatal(err)
			}
			want := string(startupMessage("alice"))
			if got := collect(t, ps.got, len(want)); got != want {
				t.Fatalf("upstream got %q", got)
			}
			first := recvReq(t, ps.proc.reqs)
			if !bytes.Equal(first.GetReadData().GetData(), startupMessage("alice")) {
				t.Fatalf("ext_proc's first chunk %q", first.GetReadData().GetData())
			}
			if n := ps.sim.Stats().Get("postgres.pg.sessions_terminated_ssl"); n != 1 {
				t.Errorf("sessions_terminated_ssl = %d", n)
			}
			ps.sim.RequireNoViolations(t)
		})
	}
}

// Contract §5: REQUIRE refuses a clear-text StartupMessage with FATAL 28000
// and closes; nothing reaches the upstream.
func TestPostgresRequireRefusesCleartext(t *testing.T) {
	ps := setupPostgres(t, pgv3alpha.PostgresProxy_REQUIRE, true, false)
	c := dial(t, ps.sim, "pg")
	if _, err := c.Write(startupMessage("alice")); err != nil {
		t.Fatal(err)
	}
	got, err := readToEOF(t, c)
	if err != nil {
		t.Fatal(err)
	}
	want := pgErrorResponse("FATAL", "28000", "connection denied by Envoy proxy: downstream ssl required.")
	if got != string(want) {
		t.Fatalf("client got %q, want %q", got, want)
	}
	if !bytes.Contains(want, []byte("C28000\x00")) {
		t.Fatal("ErrorResponse lacks SQLSTATE 28000")
	}
	if b, ok := <-ps.got; ok {
		t.Fatalf("upstream received %q", b)
	}
}

// Contract §5: ALLOW lets a clear-text session through.
func TestPostgresAllowAcceptsCleartext(t *testing.T) {
	ps := setupPostgres(t, pgv3alpha.PostgresProxy_ALLOW, true, false)
	c := dial(t, ps.sim, "pg")
	if _, err := c.Write(startupMessage("bob")); err != nil {
		t.Fatal(err)
	}
	want := string(startupMessage("bob"))
	if got := collect(t, ps.got, len(want)); got != want {
		t.Fatalf("upstream got %q", got)
	}
}

// Contract §5: termination needs the starttls transport socket; without it the
// filter answers "S" and then closes.
func TestPostgresTerminationWithoutStartTLSCloses(t *testing.T) {
	ps := setupPostgres(t, pgv3alpha.PostgresProxy_REQUIRE, false, false)
	c := dial(t, ps.sim, "pg")
	if _, err := c.Write(sslRequest()); err != nil {
		t.Fatal(err)
	}
	got, err := readToEOF(t, c)
	if err != nil || got != "S" {
		t.Fatalf("client got %q, %v", got, err)
	}
}
