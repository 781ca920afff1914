package xds

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// sluiceMaxStreams raises the circuit breakers of sluice's gRPC clusters.
// Envoy's defaults (1,024 pending and 1,024 active requests per cluster)
// would cap an Envoy at 1,024 concurrent Postgres sessions, since network
// ext_proc holds one gRPC stream per connection; past the cap the stream
// fails to open and the connection is closed (fail-closed, but an outage).
const sluiceMaxStreams = 1 << 16

// sluiceClusters adds the HTTP/2 clusters of sluice's ext_authz and ext_proc
// services, at SluiceHost() and the ports of server.authz and
// server.extproc. When both ports are equal, both services are reached over
// one cluster named SharedGRPCCluster.
func (t *translator) sluiceClusters() {
	host := t.cfg.SluiceHost()
	authzPort, err1 := portOf(t.cfg.Server.Authz)
	extprocPort, err2 := portOf(t.cfg.Server.ExtProc)
	if err1 != nil || err2 != nil {
		t.fail(fmt.Errorf("sluice gRPC addresses: server.authz %q, server.extproc %q: expected host:port", t.cfg.Server.Authz, t.cfg.Server.ExtProc))
		return
	}
	if authzPort == extprocPort {
		t.authzCluster, t.extprocCluster = SharedGRPCCluster, SharedGRPCCluster
		t.res.Clusters = append(t.res.Clusters, t.grpcCluster(SharedGRPCCluster, host, authzPort))
		return
	}
	t.authzCluster, t.extprocCluster = AuthzCluster, ExtProcCluster
	t.res.Clusters = append(t.res.Clusters,
		t.grpcCluster(AuthzCluster, host, authzPort),
		t.grpcCluster(ExtProcCluster, host, extprocPort))
}

// grpcCluster is an HTTP/2 cluster to one of sluice's gRPC services.
func (t *translator) grpcCluster(name, host string, port uint32) *clusterv3.Cluster {
	c := t.cluster(name, host, port)
	h2 := &upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolExt: t.typed(h2)}
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxPendingRequests: wrapperspb.UInt32(sluiceMaxStreams),
		MaxRequests:        wrapperspb.UInt32(sluiceMaxStreams),
	}}}
	return c
}

// cluster is a one-endpoint cluster with its load assignment inline: STATIC
// for an IP address, STRICT_DNS for a host name (a compose service, a
// Kubernetes service, a database's DNS name), so no EDS resource is needed.
func (t *translator) cluster(name, host string, port uint32) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:           name,
		ConnectTimeout: durationOrNil(t.cfg.Envoy.ConnectTimeout),
		LbPolicy:       clusterv3.Cluster_ROUND_ROBIN,
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: socketAddress(host, port),
					}},
				}},
			}},
		},
	}
	if _, err := netip.ParseAddr(host); err == nil {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	} else {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		// Container networks often have no IPv6 route; Envoy's default
		// (AUTO) prefers AAAA records.
		c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
	}
	return c
}

// portOf is the port of a host:port address.
func portOf(addr string) (uint32, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad port %q", p)
	}
	return uint32(n), nil
}

// hostPort splits a target's host:port upstream.
func hostPort(addr string) (string, uint32, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := portOf(addr)
	if err != nil {
		return "", 0, err
	}
	if host == "" {
		return "", 0, fmt.Errorf("no host in %q", addr)
	}
	return host, port, nil
}
