package envoysim

import (
	"strings"
	"testing"

	pgv3alpha "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Issue item 2: strict acceptance. Each listener is rejected with a reason and
// is not bound.
func TestStrictAcceptanceRejects(t *testing.T) {
	ep := func(mut func(*extprocv3.NetworkExternalProcessor)) *listenerv3.Filter {
		c := procConfig("processor", "ep")
		mut(c)
		return extProc(t, c)
	}
	tp := func(mut func(*tcpproxyv3.TcpProxy)) *listenerv3.Filter {
		c := &tcpproxyv3.TcpProxy{StatPrefix: "tcp", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "upstream"}}
		mut(c)
		return netFilter(t, "envoy.filters.network.tcp_proxy", c)
	}
	noop := func(*extprocv3.NetworkExternalProcessor) {}
	for _, tc := range []struct {
		name    string
		filters []*listenerv3.Filter
		want    string
	}{
		{"unimplemented typed_config type", []*listenerv3.Filter{
			netFilter(t, "http_ext_proc", &httpextprocv3.ExternalProcessor{}), tcpProxy(t, "upstream")},
			"Didn't find a registered implementation for 'http_ext_proc'"},
		{"unregistered type URL", []*listenerv3.Filter{
			{Name: "mystery", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/no.Such"}}},
			tcpProxy(t, "upstream")},
			"Didn't find a registered implementation for 'mystery' with type URL: 'no.Such'"},
		{"typed_config fails PGV (stat_prefix)", []*listenerv3.Filter{
			ep(func(c *extprocv3.NetworkExternalProcessor) { c.StatPrefix = "" }), tcpProxy(t, "upstream")},
			"Proto constraint validation failed"},
		{"C++ check: grpc_service", []*listenerv3.Filter{
			ep(func(c *extprocv3.NetworkExternalProcessor) { c.GrpcService = nil }), tcpProxy(t, "upstream")},
			"A grpc_service must be configured"},
		{"C++ check: both directions SKIP", []*listenerv3.Filter{
			ep(func(c *extprocv3.NetworkExternalProcessor) {
				c.ProcessingMode = &extprocv3.ProcessingMode{ProcessRead: extprocv3.ProcessingMode_SKIP, ProcessWrite: extprocv3.ProcessingMode_SKIP}
			}), tcpProxy(t, "upstream")},
			"both read and write paths are skipped"},
		{"unimplemented field: connection_attributes", []*listenerv3.Filter{
			ep(func(c *extprocv3.NetworkExternalProcessor) { c.ConnectionAttributes = []string{"source.address"} }), tcpProxy(t, "upstream")},
			"connection_attributes"},
		{"unimplemented field: tcp_proxy hash_policy", []*listenerv3.Filter{
			tp(func(c *tcpproxyv3.TcpProxy) {
				c.HashPolicy = []*typev3.HashPolicy{{PolicySpecifier: &typev3.HashPolicy_SourceIp_{SourceIp: &typev3.HashPolicy_SourceIp{}}}}
			})},
			"hash_policy not implemented by envoysim"},
		{"unimplemented upstream_connect_mode", []*listenerv3.Filter{
			tp(func(c *tcpproxyv3.TcpProxy) {
				c.UpstreamConnectMode = tcpproxyv3.UpstreamConnectMode_ON_DOWNSTREAM_DATA
				c.MaxEarlyDataBytes = wrapperspb.UInt32(1024)
			})},
			"upstream_connect_mode"},
		{"terminal filter not last", []*listenerv3.Filter{tcpProxy(t, "upstream"), ep(noop)},
			"must be the last filter in a network filter chain"},
		{"non-terminal filter last", []*listenerv3.Filter{ep(noop)},
			"is the last filter in a network filter chain"},
		{"forwarded metadata the sim does not produce", []*listenerv3.Filter{
			netFilter(t, "pg", &pgv3alpha.PostgresProxy{StatPrefix: "pg"}),
			ep(func(c *extprocv3.NetworkExternalProcessor) {
				c.MetadataOptions = &extprocv3.MetadataOptions{ForwardingNamespaces: &extprocv3.MetadataOptions_MetadataNamespaces{
					Untyped: []string{postgresNamespace}}}
			}), tcpProxy(t, "upstream")},
			"postgres_proxy SQL parsing metadata is not implemented"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			err := s.Apply([]*listenerv3.Listener{tcpListener(t, "bad", tc.filters...)}, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "Error adding/updating listener(s) bad: ") {
				t.Errorf("error not in Envoy's form: %v", err)
			}
			if s.ListenerAddr("bad") != "" {
				t.Error("a rejected listener is bound")
			}
		})
	}
}

// Contract §7: valid listeners of a response are applied even when others
// are rejected (lds_api.cc), but a Listener failing its own PGV rules fails
// the whole response.
func TestListenerPartialAcceptance(t *testing.T) {
	s := newSim(t)
	good := tcpListener(t, "good", tcpProxy(t, "upstream"))
	bad := tcpListener(t, "bad", extProc(t, procConfig("processor", "")), tcpProxy(t, "upstream"))
	err := s.Apply([]*listenerv3.Listener{good, bad}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "bad: ") || strings.Contains(err.Error(), "good: ") {
		t.Fatalf("error %v", err)
	}
	if s.ListenerAddr("good") == "" {
		t.Fatal("the valid listener was not applied")
	}

	s2 := newSim(t)
	malformed := tcpListener(t, "malformed", tcpProxy(t, "upstream"))
	malformed.FilterChains[0].Filters[0].Name = "" // Filter.name has min_len 1
	if err := s2.Apply([]*listenerv3.Listener{tcpListener(t, "good", tcpProxy(t, "upstream")), malformed}, nil, nil); err == nil {
		t.Fatal("a PGV failure was accepted")
	}
	if s2.ListenerAddr("good") != "" {
		t.Fatal("a response failing decoding was partly applied")
	}
}

// Issue item 1: a new version does not drop live connections, on unchanged
// listeners nor on a listener updated in place.
func TestUpdateKeepsLiveConnections(t *testing.T) {
	up := startUpstream(t, echoHandler)
	s := newSim(t)
	clusters := []*clusterv3.Cluster{staticCluster(t, "upstream", up.addr, false)}
	v1 := []*listenerv3.Listener{tcpListener(t, "a", tcpProxy(t, "upstream")), tcpListener(t, "b", tcpProxy(t, "upstream"))}
	if err := s.Apply(v1, clusters, nil); err != nil {
		t.Fatal(err)
	}
	addrA := s.ListenerAddr("a")
	ca, cb := dial(t, s, "a"), dial(t, s, "b")
	for _, c := range []interface{ Write([]byte) (int, error) }{ca, cb} {
		_, _ = c.Write([]byte("1"))
	}
	readN(t, ca, 1)
	readN(t, cb, 1)

	changedB := tcpListener(t, "b", netFilter(t, "envoy.filters.network.tcp_proxy", &tcpproxyv3.TcpProxy{
		StatPrefix: "tcp_v2", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "upstream"}}))
	v2 := []*listenerv3.Listener{v1[0], changedB, tcpListener(t, "c", tcpProxy(t, "upstream"))}
	if err := s.Apply(v2, clusters, nil); err != nil {
		t.Fatal(err)
	}
	if s.ListenerAddr("a") != addrA {
		t.Fatal("the unchanged listener was rebound")
	}
	mustWrite(t, ca, "2")
	mustWrite(t, cb, "2")
	if readN(t, ca, 1) != "2" || readN(t, cb, 1) != "2" {
		t.Fatal("a live connection broke")
	}
	cnew := dial(t, s, "b")
	mustWrite(t, cnew, "3")
	readN(t, cnew, 1)
	if n := s.Stats().Get("tcp.tcp_v2.downstream_cx_total"); n != 1 {
		t.Fatalf("new connections on the updated listener: tcp.tcp_v2.downstream_cx_total = %d", n)
	}
}
