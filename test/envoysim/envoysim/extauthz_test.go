package envoysim

import (
	"context"
	"crypto/tls"
	"net"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func allow(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{}}, nil
}

type authzSetup struct {
	sim    *Sim
	az     *authorizer
	got    chan []byte
	closed chan ConnInfo
}

func setupAuthz(t *testing.T, check func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error), mutate func(*extauthzv3.ExtAuthz)) *authzSetup {
	t.Helper()
	az, authAddr := startAuthorizer(t, check)
	got := make(chan []byte, 100)
	up := startUpstream(t, recordHandler(got))
	closed := make(chan ConnInfo, 10)
	s := newSim(t, WithConnectionLog(func(ci ConnInfo) { closed <- ci }))
	cfg := &extauthzv3.ExtAuthz{StatPrefix: "az", GrpcService: grpcService("authz")}
	if mutate != nil {
		mutate(cfg)
	}
	if err := s.Apply([]*listenerv3.Listener{tcpListener(t, "db", extAuthz(t, cfg), tcpProxy(t, "upstream"))},
		[]*clusterv3.Cluster{staticCluster(t, "authz", authAddr, true), staticCluster(t, "upstream", up.addr, false)}, nil); err != nil {
		t.Fatal(err)
	}
	return &authzSetup{sim: s, az: az, got: got, closed: closed}
}

// Checklist 5: the Check is sent on the first data, not at accept; the bytes
// wait in the buffer until the OK and then reach the upstream; the TCP
// CheckRequest carries the addresses and no request attributes.
func TestExtAuthzChecksOnFirstData(t *testing.T) {
	release := make(chan struct{})
	as := setupAuthz(t, func(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		<-release
		return allow(ctx, req)
	}, func(c *extauthzv3.ExtAuthz) { c.GrpcService.Timeout = ms(int(testTimeout.Milliseconds())) })
	c := dial(t, as.sim, "db")
	mustWrite(t, c, "first")
	req := <-as.az.reqs
	mustWrite(t, c, "second") // still waiting in the connection buffer
	close(release)
	if s := collect(t, as.got, 11); s != "firstsecond" {
		t.Fatalf("upstream got %q", s)
	}
	a := req.GetAttributes()
	local := c.LocalAddr().(*net.TCPAddr)
	if sa := a.GetSource().GetAddress().GetSocketAddress(); sa.GetAddress() != local.IP.String() || int(sa.GetPortValue()) != local.Port {
		t.Errorf("source.address = %v, want %v", sa, local)
	}
	remote := c.RemoteAddr().(*net.TCPAddr)
	if sa := a.GetDestination().GetAddress().GetSocketAddress(); int(sa.GetPortValue()) != remote.Port {
		t.Errorf("destination.address = %v, want %v", sa, remote)
	}
	if a.GetRequest() != nil || len(a.GetContextExtensions()) != 0 {
		t.Errorf("TCP check has request attributes: %v", a)
	}
	if n := len(as.az.reqs); n != 0 {
		t.Errorf("%d more Check calls", n)
	}
}

// Checklist 5: a denial closes the connection without flushing; the buffered
// bytes never reach the upstream; the response's metadata is still set under
// envoy.filters.network.ext_authz.
func TestExtAuthzDeniedClosesWithoutFlush(t *testing.T) {
	as := setupAuthz(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		md, _ := structpb.NewStruct(map[string]any{"reason": "no grant"})
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)}, DynamicMetadata: md}, nil
	}, nil)
	c := dial(t, as.sim, "db")
	mustWrite(t, c, "secret")
	if _, err := readToEOF(t, c); err != nil {
		t.Fatal(err)
	}
	if b, ok := <-as.got; ok {
		t.Fatalf("upstream received %q", b)
	}
	ci := <-as.closed
	if ci.CloseDetails != "ext_authz_close" {
		t.Errorf("close details %q", ci.CloseDetails)
	}
	md := ci.DynamicMetadata.GetFilterMetadata()[extAuthzNamespace]
	if md.GetFields()["reason"].GetStringValue() != "no grant" {
		t.Errorf("denied metadata %v", md)
	}
	if _, ok := md.GetFields()["ext_authz_duration"]; ok {
		t.Error("ext_authz_duration is only added on OK")
	}
	st := as.sim.Stats()
	for name, want := range map[string]int64{"ext_authz.az.denied": 1, "ext_authz.az.cx_closed": 1, "ext_authz.az.ok": 0, "ext_authz.az.active": 0} {
		if v := st.Get(name); v != want {
			t.Errorf("%s = %d, want %d", name, v, want)
		}
	}
}

// Checklist 5: on OK the metadata is set with ext_authz_duration added.
func TestExtAuthzOKSetsMetadataWithDuration(t *testing.T) {
	as := setupAuthz(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		md, _ := structpb.NewStruct(map[string]any{"user": "alice"})
		return &authv3.CheckResponse{Status: &rpcstatus.Status{}, DynamicMetadata: md}, nil
	}, nil)
	c := dial(t, as.sim, "db")
	mustWrite(t, c, "x")
	collect(t, as.got, 1)
	_ = c.Close()
	md := (<-as.closed).DynamicMetadata.GetFilterMetadata()[extAuthzNamespace]
	if md.GetFields()["user"].GetStringValue() != "alice" {
		t.Errorf("metadata %v", md)
	}
	if _, ok := md.GetFields()["ext_authz_duration"]; !ok {
		t.Errorf("no ext_authz_duration in %v", md)
	}
}

// Contract §2: an error (here: an unreachable authorizer) closes unless
// failure_mode_allow, and error_response with a non-zero code is an error.
func TestExtAuthzErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		check     func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error)
		failOpen  bool
		wantBytes bool
	}{
		{"error_response/closed", errorResponse, false, false},
		{"error_response/fail_open", errorResponse, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			as := setupAuthz(t, tc.check, func(c *extauthzv3.ExtAuthz) { c.FailureModeAllow = tc.failOpen })
			c := dial(t, as.sim, "db")
			mustWrite(t, c, "x")
			if tc.wantBytes {
				if s := collect(t, as.got, 1); s != "x" {
					t.Fatalf("upstream got %q", s)
				}
				if as.sim.Stats().Get("ext_authz.az.failure_mode_allowed") != 1 {
					t.Error("failure_mode_allowed != 1")
				}
			} else {
				if _, err := readToEOF(t, c); err != nil {
					t.Fatal(err)
				}
				if b, ok := <-as.got; ok {
					t.Fatalf("upstream received %q", b)
				}
			}
			if as.sim.Stats().Get("ext_authz.az.error") != 1 {
				t.Error("error != 1")
			}
		})
	}
}

func errorResponse(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.Unavailable)},
		HttpResponse: &authv3.CheckResponse_ErrorResponse{ErrorResponse: &authv3.DeniedHttpResponse{}},
	}, nil
}

// Checklist 5: destination.service is the SNI tls_inspector found; the source
// principal is the client certificate's URI SAN, the destination principal the
// listener certificate's DNS SAN.
func TestExtAuthzDestinationServiceIsSNI(t *testing.T) {
	pki := newPKI(t, "db.sluice.test")
	az, authAddr := startAuthorizer(t, allow)
	got := make(chan []byte, 100)
	up := startUpstream(t, recordHandler(got))
	s := newSim(t)
	l := tcpListener(t, "db",
		extAuthz(t, &extauthzv3.ExtAuthz{StatPrefix: "az", GrpcService: grpcService("authz"), IncludeTlsSession: true}),
		tcpProxy(t, "upstream"))
	l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(t, &tlsinspectorv3.TlsInspector{})}}}
	l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(t, downstreamTLS(pki, true))}}
	if err := s.Apply([]*listenerv3.Listener{l},
		[]*clusterv3.Cluster{staticCluster(t, "authz", authAddr, true), staticCluster(t, "upstream", up.addr, false)}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", s.ListenerAddr("db"), pki.clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if s := collect(t, got, 1); s != "x" {
		t.Fatalf("upstream got %q", s)
	}
	a := (<-az.reqs).GetAttributes()
	if svc := a.GetDestination().GetService(); svc != "db.sluice.test" {
		t.Errorf("destination.service = %q", svc)
	}
	if p := a.GetSource().GetPrincipal(); p != "spiffe://sluice.test/agent/alice" {
		t.Errorf("source.principal = %q", p)
	}
	if p := a.GetDestination().GetPrincipal(); p != "db.sluice.test" {
		t.Errorf("destination.principal = %q", p)
	}
	if sni := a.GetTlsSession().GetSni(); sni != "db.sluice.test" {
		t.Errorf("tls_session.sni = %q", sni)
	}
}

func downstreamTLS(pki *testPKI, requireClientCert bool) *tlsv3.DownstreamTlsContext {
	return &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(requireClientCert),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificates: []*tlsv3.TlsCertificate{{
				CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pki.serverCert}},
				PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pki.serverKey}},
			}},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pki.caPEM}},
			}},
		},
	}
}
