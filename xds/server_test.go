package xds

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// adsConfig is a config with every xDS type: a TLS Postgres target (SDS
// secret) and an HTTP target (RDS), at absolute certificate paths so the
// file can live in a temporary directory.
func adsConfig(t *testing.T, pgPort int) []byte {
	t.Helper()
	certs, err := filepath.Abs("testdata/certs")
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Appendf(nil, `
server: { xds: 127.0.0.1:18000, authz: 127.0.0.1:9001, extproc: 127.0.0.1:9002, api: 127.0.0.1:8080 }
envoy: { node: edge }
identity:
  issuers: [{ issuer: https://idp.sluice.test, audiences: [sluice] }]
targets:
  - name: orders-db
    kind: postgres
    port: %d
    upstream: 127.0.0.1:5432
    database: orders
    credentials: { user: app, password_env: ORDERS_PASSWORD }
    tls: { cert_file: %[2]s/server.crt, key_file: %[2]s/server.key, require: true }
  - name: cluster-api
    kind: http
    port: 16443
    upstream: https://127.0.0.1:6443
    upstream_ca_file: %[2]s/ca.crt
    credentials: { bearer_env: CLUSTER_TOKEN }
policies:
  - name: agents
    targets: [orders-db, cluster-api]
    principals: { groups: [agents] }
    allow: [read]
`, pgPort, certs)
}

// writeAtomically replaces path the way an editor or a ConfigMap does.
func writeAtomically(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// testServer is a Server serving ADS on loopback, with captured logs and
// a manual OpenTelemetry reader.
type testServer struct {
	*Server
	addr    string
	logs    *testenv.SyncBuffer
	metrics *sdkmetric.ManualReader
}

func startServer(t *testing.T, cfg *policies.Config) *testServer {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	s, err := NewServer(Options{Logger: newTestLogger(logs), Meter: mp.Meter("xds-test")})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(cfg); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return &testServer{Server: s, addr: lis.Addr().String(), logs: logs, metrics: reader}
}

// counter reads an OpenTelemetry Int64 sum data point by attribute.
func (ts *testServer) counter(t *testing.T, name, attr, value string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := ts.metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != name || !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				if v, ok := dp.Attributes.Value(attribute.Key(attr)); attr == "" || ok && v.AsString() == value {
					total += dp.Value
				}
			}
		}
	}
	return total
}

func dial(t *testing.T, addr string) discoveryv3.AggregatedDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sotwClient plays Envoy's side of a SotW ADS stream.
type sotwClient struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	in     chan *discoveryv3.DiscoveryResponse
	stash  []*discoveryv3.DiscoveryResponse
	node   *corev3.Node
}

func newSotwClient(t *testing.T, ctx context.Context, c discoveryv3.AggregatedDiscoveryServiceClient) *sotwClient {
	t.Helper()
	stream, err := c.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sc := &sotwClient{t: t, stream: stream, in: make(chan *discoveryv3.DiscoveryResponse, 64), node: &corev3.Node{Id: "edge", Cluster: "sluice"}}
	go func() {
		defer close(sc.in)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			sc.in <- r
		}
	}()
	return sc
}

func (c *sotwClient) send(req *discoveryv3.DiscoveryRequest) {
	c.t.Helper()
	req.Node = c.node
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// next returns the next response of typeURL, keeping others for later.
func (c *sotwClient) next(typeURL string) *discoveryv3.DiscoveryResponse {
	c.t.Helper()
	for i, r := range c.stash {
		if r.GetTypeUrl() == typeURL {
			c.stash = slices.Delete(c.stash, i, i+1)
			return r
		}
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case r, ok := <-c.in:
			if !ok {
				c.t.Fatalf("stream ended waiting for %s", typeURL)
			}
			if r.GetTypeUrl() == typeURL {
				return r
			}
			c.stash = append(c.stash, r)
		case <-timeout:
			c.t.Fatalf("no %s response within 10s", typeURL)
		}
	}
}

// quiet fails if a response of typeURL arrives within d.
func (c *sotwClient) quiet(typeURL string, d time.Duration) {
	c.t.Helper()
	timeout := time.After(d)
	for {
		for _, r := range c.stash {
			if r.GetTypeUrl() == typeURL {
				c.t.Fatalf("unexpected %s response, version %s nonce %s", typeURL, r.GetVersionInfo(), r.GetNonce())
			}
		}
		select {
		case r, ok := <-c.in:
			if !ok {
				return
			}
			c.stash = append(c.stash, r)
		case <-timeout:
			return
		}
	}
}

// ack accepts resp, keeping the subscription names.
func (c *sotwClient) ack(resp *discoveryv3.DiscoveryResponse, names ...string) {
	c.send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: names})
}

// fetch subscribes to typeURL, waits for the answer and ACKs it.
func (c *sotwClient) fetch(typeURL, version string, names ...string) *discoveryv3.DiscoveryResponse {
	c.t.Helper()
	c.send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: version, ResourceNames: names})
	r := c.next(typeURL)
	c.ack(r, names...)
	return r
}

func resourceNames(t *testing.T, rs []*anypb.Any) []string {
	t.Helper()
	var out []string
	for _, a := range rs {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m.(interface{ GetName() string }).GetName())
	}
	slices.Sort(out)
	return out
}

func listenerPort(t *testing.T, resp *discoveryv3.DiscoveryResponse, name string) uint32 {
	t.Helper()
	for _, a := range resp.GetResources() {
		l := unpack[*listenerv3.Listener](t, a)
		if l.GetName() == name {
			return l.GetAddress().GetSocketAddress().GetPortValue()
		}
	}
	t.Fatalf("no listener %s in response", name)
	return 0
}

// TestADSEndToEnd plays an Envoy over a real gRPC stream: it subscribes
// to CDS, LDS, then the RDS and SDS names the listeners reference, ACKs
// each; a config file change (through policies.Watcher) arrives as a new
// version; a NACK is counted, logged with Envoy's reason, exported as a
// metric, and not answered with the same snapshot again.
func TestADSEndToEnd(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sluice.yaml")
	writeAtomically(t, path, adsConfig(t, 15432))
	cfg, err := policies.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	watcher := policies.NewWatcher(path, newTestLogger(ts.logs), ts.Update)
	watchDone := make(chan error, 1)
	go func() { watchDone <- watcher.Run(ctx) }()
	<-watcher.Ready()

	c := newSotwClient(t, ctx, dial(t, ts.addr))
	v1 := ts.Version()

	cds := c.fetch(resource.ClusterType, "")
	if cds.GetVersionInfo() != v1 {
		t.Errorf("CDS version %q, want %q", cds.GetVersionInfo(), v1)
	}
	if got, want := resourceNames(t, cds.GetResources()), []string{"cluster-api", "orders-db", AuthzCluster, ExtProcCluster}; !slices.Equal(got, want) {
		t.Errorf("clusters = %v, want %v", got, want)
	}

	lds := c.fetch(resource.ListenerType, "")
	if got := resourceNames(t, lds.GetResources()); !slices.Equal(got, []string{"cluster-api", "orders-db"}) {
		t.Errorf("listeners = %v", got)
	}
	var got Resources
	for _, a := range lds.GetResources() {
		got.Listeners = append(got.Listeners, unpack[*listenerv3.Listener](t, a))
	}
	var routeNames, secretNames []string
	for _, h := range collect[*hcmv3.HttpConnectionManager](t, &got) {
		routeNames = append(routeNames, h.GetRds().GetRouteConfigName())
	}
	for _, s := range collect[*tlsv3.SdsSecretConfig](t, &got) {
		secretNames = append(secretNames, s.GetName())
	}
	slices.Sort(secretNames)
	if !slices.Equal(routeNames, []string{"cluster-api"}) || !slices.Equal(secretNames, []string{"orders-db-downstream-cert"}) {
		t.Fatalf("listeners reference routes %v, secrets %v", routeNames, secretNames)
	}
	// The upstream CA secret is referenced by the cluster-api cluster.
	secretNames = append(secretNames, "cluster-api-upstream-ca")
	slices.Sort(secretNames)

	rds := c.fetch(resource.RouteType, "", routeNames...)
	if got := resourceNames(t, rds.GetResources()); !slices.Equal(got, routeNames) {
		t.Errorf("routes = %v", got)
	}
	sds := c.fetch(resource.SecretType, "", secretNames...)
	if got := resourceNames(t, sds.GetResources()); !slices.Equal(got, secretNames) {
		t.Errorf("secrets = %v", got)
	}
	eventually(t, "4 ACKs", func() bool { return ts.Stats().ACKs == 4 })

	// The config file changes: the watcher applies it, a new version is
	// pushed on the open stream.
	writeAtomically(t, path, adsConfig(t, 15532))
	cds2 := c.next(resource.ClusterType)
	v2 := cds2.GetVersionInfo()
	if v2 == v1 || !strings.HasPrefix(v2, "2-") {
		t.Fatalf("after the change CDS version %q (was %q)", v2, v1)
	}
	// The cache pushes from inside SetSnapshot, a moment before Update
	// records the version.
	eventually(t, "Version() to report "+v2, func() bool { return ts.Version() == v2 })
	c.ack(cds2)
	lds2 := c.next(resource.ListenerType)
	if lds2.GetVersionInfo() != v2 || listenerPort(t, lds2, "orders-db") != 15532 {
		t.Fatalf("LDS %s does not carry the new port", lds2.GetVersionInfo())
	}
	eventually(t, "the watcher to count the reload", func() bool { return watcher.Applied() == 1 })

	// Envoy rejects the listeners: old version, the response's nonce.
	const reason = "sluice test: listener orders-db rejected"
	c.send(&discoveryv3.DiscoveryRequest{
		TypeUrl:       resource.ListenerType,
		VersionInfo:   v1,
		ResponseNonce: lds2.GetNonce(),
		ErrorDetail:   &status.Status{Code: 13, Message: reason},
	})
	c.ack(c.next(resource.RouteType), routeNames...)
	c.ack(c.next(resource.SecretType), secretNames...)
	eventually(t, "the NACK to be counted", func() bool { return ts.NACKs() == 1 })
	logs := ts.logs.String()
	for _, want := range []string{"NACK", reason, "type_url=" + resource.ListenerType, "nonce=" + lds2.GetNonce(), "version=" + v2, "accepted_version=" + v1, "code=13"} {
		if !strings.Contains(logs, want) {
			t.Errorf("NACK log lacks %q:\n%s", want, logs)
		}
	}
	if n := ts.counter(t, "sluice_xds_nacks", "type_url", resource.ListenerType); n != 1 {
		t.Errorf("sluice_xds_nacks{type_url=Listener} = %d, want 1", n)
	}
	// go-control-plane alone would resend the rejected snapshot at once.
	c.quiet(resource.ListenerType, 500*time.Millisecond)

	// The next change reaches the Envoy that NACKed.
	writeAtomically(t, path, adsConfig(t, 15632))
	lds3 := c.next(resource.ListenerType)
	if v3 := lds3.GetVersionInfo(); !strings.HasPrefix(v3, "3-") || listenerPort(t, lds3, "orders-db") != 15632 {
		t.Fatalf("LDS after the NACK: version %q", v3)
	}
	c.ack(lds3)

	eventually(t, "3 published snapshots", func() bool { return ts.Stats().Published == 3 })
	if st := ts.Stats(); st.NACKs != 1 || st.Streams != 1 {
		t.Errorf("stats = %+v, want 1 NACK, 1 stream", st)
	}
	eventually(t, "the last ACK", func() bool { return ts.counter(t, "sluice_xds_acks", "", "") >= 8 })
	if n := ts.counter(t, "sluice_xds_snapshots_published", "", ""); n != 3 {
		t.Errorf("sluice_xds_snapshots_published = %d", n)
	}
	if n := ts.counter(t, "sluice_xds_streams", "mode", "sotw"); n != 1 {
		t.Errorf("sluice_xds_streams{mode=sotw} = %d", n)
	}
	if testing.Verbose() {
		t.Logf("logs:\n%s", ts.logs)
	}
	cancel()
	if err := <-watchDone; err != nil {
		t.Errorf("watcher: %v", err)
	}
}

// TestDeltaADS subscribes over incremental ADS: resources arrive with the
// snapshot's version, an ACK is counted, and so is a NACK.
func TestDeltaADS(t *testing.T) {
	cfg, err := policies.LoadFile(demoConfig)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := dial(t, ts.addr).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "edge"}
	recv := func(typeURL string) *discoveryv3.DeltaDiscoveryResponse {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.GetTypeUrl() != typeURL {
			t.Fatalf("got %s, want %s", r.GetTypeUrl(), typeURL)
		}
		if r.GetSystemVersionInfo() != ts.Version() {
			t.Errorf("system_version_info %q, want %q", r.GetSystemVersionInfo(), ts.Version())
		}
		return r
	}
	deltaNames := func(r *discoveryv3.DeltaDiscoveryResponse) []string {
		var out []string
		for _, x := range r.GetResources() {
			if x.GetVersion() == "" || x.GetResource() == nil {
				t.Errorf("resource %s without version or body", x.GetName())
			}
			out = append(out, x.GetName())
		}
		slices.Sort(out)
		return out
	}

	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	cds := recv(resource.ClusterType)
	if got, want := deltaNames(cds), []string{"cluster-api", "orders-db", AuthzCluster, ExtProcCluster}; !slices.Equal(got, want) {
		t.Errorf("clusters = %v, want %v", got, want)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType, ResponseNonce: cds.GetNonce()}); err != nil {
		t.Fatal(err)
	}

	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	lds := recv(resource.ListenerType)
	if got := deltaNames(lds); !slices.Equal(got, []string{"cluster-api", "orders-db"}) {
		t.Errorf("listeners = %v", got)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node: node, TypeUrl: resource.ListenerType, ResponseNonce: lds.GetNonce(),
		ErrorDetail: &status.Status{Code: 13, Message: "delta test rejection"},
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delta ACK and NACK", func() bool { st := ts.Stats(); return st.ACKs == 1 && st.NACKs == 1 })
	logs := ts.logs.String()
	if !strings.Contains(logs, "delta test rejection") || !strings.Contains(logs, "mode=delta") || !strings.Contains(logs, "version="+ts.Version()) {
		t.Errorf("delta NACK log:\n%s", logs)
	}
	if n := ts.counter(t, "sluice_xds_streams", "mode", "delta"); n != 1 {
		t.Errorf("sluice_xds_streams{mode=delta} = %d", n)
	}
}
