package envoysim

import (
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
)

// adsServer is a go-control-plane snapshot cache and server, recording every
// request and the nonce of every response.
type adsServer struct {
	cache cachev3.SnapshotCache
	addr  string

	mu     sync.Mutex
	reqs   []*discoveryv3.DiscoveryRequest
	nonces map[string][]string // by type URL, in order sent
	seen   chan struct{}
}

func startADS(t *testing.T) *adsServer {
	t.Helper()
	a := &adsServer{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), nonces: map[string][]string{}, seen: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := serverv3.NewServer(ctx, a.cache, serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			a.mu.Lock()
			a.reqs = append(a.reqs, req)
			a.mu.Unlock()
			select {
			case a.seen <- struct{}{}:
			default:
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			a.mu.Lock()
			a.nonces[resp.GetTypeUrl()] = append(a.nonces[resp.GetTypeUrl()], resp.GetNonce())
			a.mu.Unlock()
		},
	})
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	a.addr = serveGRPC(t, g)
	return a
}

func (a *adsServer) set(t *testing.T, version string, res map[resource.Type][]types.Resource) {
	t.Helper()
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Consistent(); err != nil {
		t.Fatal(err)
	}
	if err := a.cache.SetSnapshot(context.Background(), "node-1", snap); err != nil {
		t.Fatal(err)
	}
}

// await waits for a recorded request matching match and returns it.
func (a *adsServer) await(t *testing.T, what string, match func(*discoveryv3.DiscoveryRequest) bool) *discoveryv3.DiscoveryRequest {
	t.Helper()
	deadline := time.After(testTimeout)
	for i := 0; ; {
		a.mu.Lock()
		for ; i < len(a.reqs); i++ {
			if match(a.reqs[i]) {
				r := a.reqs[i]
				a.mu.Unlock()
				return r
			}
		}
		a.mu.Unlock()
		select {
		case <-a.seen:
		case <-deadline:
			t.Fatalf("ADS server never saw %s", what)
		}
	}
}

func (a *adsServer) nonceSent(typeURL, nonce string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range a.nonces[typeURL] {
		if n == nonce {
			return true
		}
	}
	return false
}

// Checklist 8 and issue item 1: the first request, ACK, NACK with the previous
// version, the nonce and error_detail code 13, go-control-plane's resend of
// the rejected snapshot, and a new version that leaves live connections alone.
func TestADSAckNack(t *testing.T) {
	ads := startADS(t)
	up := startUpstream(t, echoHandler)
	cluster := staticCluster(t, "upstream", up.addr, false)
	db := tcpListener(t, "db", tcpProxy(t, "upstream"))
	ads.set(t, "v1", map[resource.Type][]types.Resource{resource.ClusterType: {cluster}, resource.ListenerType: {db}})

	s := newSim(t, WithNode(&corev3.Node{Id: "node-1"}))
	if err := s.ConnectADS(ads.addr); err != nil {
		t.Fatal(err)
	}
	for _, typeURL := range []string{resource.ClusterType, resource.ListenerType} {
		first := ads.await(t, "first request "+typeURL, func(r *discoveryv3.DiscoveryRequest) bool { return r.GetTypeUrl() == typeURL })
		if first.GetVersionInfo() != "" || first.GetResponseNonce() != "" || first.GetNode().GetId() != "node-1" || len(first.GetResourceNames()) != 0 {
			t.Errorf("first %s request: %v", typeURL, first)
		}
		ack := ads.await(t, "ACK of v1 "+typeURL, func(r *discoveryv3.DiscoveryRequest) bool {
			return r.GetTypeUrl() == typeURL && r.GetVersionInfo() == "v1"
		})
		if ack.GetErrorDetail() != nil || !ads.nonceSent(typeURL, ack.GetResponseNonce()) {
			t.Errorf("ACK %v", ack)
		}
	}
	if err := s.WaitFor(ctxT(t), func() bool { return s.ListenerAddr("db") != "" }); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s, "db")
	mustWrite(t, c, "1")
	readN(t, c, 1)

	bad := tcpListener(t, "bad", extProc(t, procConfig("processor", "")), tcpProxy(t, "upstream"))
	ads.set(t, "v2", map[resource.Type][]types.Resource{resource.ClusterType: {cluster}, resource.ListenerType: {db, bad}})
	var nacks []*discoveryv3.DiscoveryRequest
	for len(nacks) < 2 {
		nacks = append(nacks, ads.await(t, "a NACK of v2", func(r *discoveryv3.DiscoveryRequest) bool {
			if r.GetTypeUrl() != resource.ListenerType || r.GetErrorDetail() == nil {
				return false
			}
			for _, n := range nacks {
				if n == r {
					return false
				}
			}
			return true
		}))
	}
	for _, n := range nacks {
		if n.GetVersionInfo() != "v1" || n.GetErrorDetail().GetCode() != 13 ||
			!strings.Contains(n.GetErrorDetail().GetMessage(), "bad: ") || !ads.nonceSent(resource.ListenerType, n.GetResponseNonce()) {
			t.Errorf("NACK %v", n)
		}
	}
	if nacks[0].GetResponseNonce() == nacks[1].GetResponseNonce() {
		t.Error("the cache did not resend the rejected snapshot with a new nonce")
	}
	if st := s.XDS(ListenerType); st.AcceptedVersion != "v1" || st.NACKs < 2 {
		t.Errorf("sim xDS state %+v", st)
	}

	ads.set(t, "v3", map[resource.Type][]types.Resource{resource.ClusterType: {cluster},
		resource.ListenerType: {db, tcpListener(t, "db2", tcpProxy(t, "upstream"))}})
	if err := s.WaitFor(ctxT(t), func() bool { return s.XDS(ListenerType).AcceptedVersion == "v3" }); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, "2")
	if readN(t, c, 1) != "2" {
		t.Fatal("the v1 connection broke")
	}
	c2 := dial(t, s, "db2")
	mustWrite(t, c2, "3")
	readN(t, c2, 1)
}

// SDS over ADS: a listener naming an SDS secret warms until the secret comes.
func TestADSSecretWarmsListener(t *testing.T) {
	ads := startADS(t)
	pki := newPKI(t, "db.sluice.test")
	up := startUpstream(t, echoHandler)
	cluster := staticCluster(t, "upstream", up.addr, false)
	l := tcpListener(t, "tls", tcpProxy(t, "upstream"))
	l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(t, &tlsv3.DownstreamTlsContext{
			CommonTlsContext: &tlsv3.CommonTlsContext{TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{
				Name: "server-cert", SdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
			}}},
		})}}
	ads.set(t, "v1", map[resource.Type][]types.Resource{resource.ClusterType: {cluster}, resource.ListenerType: {l}})
	s := newSim(t, WithNode(&corev3.Node{Id: "node-1"}))
	if err := s.ConnectADS(ads.addr); err != nil {
		t.Fatal(err)
	}
	sds := ads.await(t, "an SDS request", func(r *discoveryv3.DiscoveryRequest) bool { return r.GetTypeUrl() == resource.SecretType })
	if len(sds.GetResourceNames()) != 1 || sds.GetResourceNames()[0] != "server-cert" {
		t.Fatalf("SDS request %v", sds)
	}
	if s.ListenerAddr("tls") != "" {
		t.Fatal("listener active before its secret arrived")
	}
	secret := &tlsv3.Secret{Name: "server-cert", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pki.serverCert}},
		PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pki.serverKey}},
	}}}
	ads.set(t, "v2", map[resource.Type][]types.Resource{resource.ClusterType: {cluster}, resource.ListenerType: {l}, resource.SecretType: {secret}})
	if err := s.WaitFor(ctxT(t), func() bool { return s.ListenerAddr("tls") != "" }); err != nil {
		t.Fatal(err)
	}
	cfg := pki.clientTLS.Clone()
	cfg.Certificates = nil
	c, err := tls.Dial("tcp", s.ListenerAddr("tls"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := c.Read(b); err != nil || string(b) != "x" {
		t.Fatalf("read %q, %v", b, err)
	}
}
