package envoysim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	starttlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/starttls/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
)

const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// clusterEntry is one accepted Cluster. It is immutable once built; an update
// builds a new entry, so connections keep the config they started with.
type clusterEntry struct {
	name           string
	proto          *clusterv3.Cluster
	connectTimeout time.Duration
	endpoints      []string // host:port
	random         bool
	http2          bool
	tls            *tlsv3.UpstreamTlsContext
	// startTLS is the TLS context of a starttls transport socket: the
	// connection starts in clear text and switches when a filter calls
	// startUpstreamSecureTransport (postgres_proxy's upstream_ssl).
	startTLS    *tlsv3.UpstreamTlsContext
	secretNames []string
	rr          atomic.Uint64
}

// buildCluster is the per-cluster part of CDS acceptance.
func buildCluster(c *clusterv3.Cluster) (*clusterEntry, error) {
	if err := checkFields(c, "name", "type", "connect_timeout", "load_assignment", "lb_policy",
		"typed_extension_protocol_options", "http2_protocol_options", "transport_socket",
		"dns_lookup_family", "alt_stat_name", "metadata", "dns_refresh_rate", "respect_dns_ttl",
		"per_connection_buffer_limit_bytes",
		// TCP keepalive only matters for dead peers.
		"upstream_connection_options", "circuit_breakers"); err != nil {
		return nil, err
	}
	if err := checkCircuitBreakers(c.GetCircuitBreakers()); err != nil {
		return nil, err
	}
	ce := &clusterEntry{name: c.GetName(), proto: c, connectTimeout: 5 * time.Second}
	if d := c.GetConnectTimeout(); d != nil {
		ce.connectTimeout = d.AsDuration()
	}
	switch c.GetType() {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
	default:
		return nil, fmt.Errorf("cluster type %s is not implemented by envoysim (STATIC, STRICT_DNS and LOGICAL_DNS with an inline load_assignment are)", c.GetType())
	}
	eps, err := endpointsOf(c.GetLoadAssignment())
	if err != nil {
		return nil, err
	}
	ce.endpoints = eps
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
	case clusterv3.Cluster_RANDOM:
		ce.random = true
	case clusterv3.Cluster_LEAST_REQUEST:
		if len(eps) > 1 {
			return nil, errors.New("lb_policy LEAST_REQUEST with more than one endpoint is not implemented by envoysim")
		}
	default:
		return nil, fmt.Errorf("lb_policy %s is not implemented by envoysim", c.GetLbPolicy())
	}
	if c.GetHttp2ProtocolOptions() != nil {
		ce.http2 = true
	}
	for key, a := range c.GetTypedExtensionProtocolOptions() {
		if key != httpProtocolOptionsKey {
			return nil, fmt.Errorf("typed_extension_protocol_options[%s] is not implemented by envoysim", key)
		}
		m, err := unpackTyped(key, a)
		if err != nil {
			return nil, err
		}
		hpo, ok := m.(*httpv3.HttpProtocolOptions)
		if !ok {
			return nil, fmt.Errorf("typed_extension_protocol_options[%s] has type %s", key, typeName(a))
		}
		if err := checkFields(hpo, "explicit_http_config", "common_http_protocol_options"); err != nil {
			return nil, err
		}
		ex := hpo.GetExplicitHttpConfig()
		switch {
		case ex.GetHttp2ProtocolOptions() != nil:
			ce.http2 = true
		case ex.GetHttpProtocolOptions() != nil:
		default:
			return nil, errors.New("HttpProtocolOptions: only explicit_http_config with http_protocol_options or http2_protocol_options is implemented by envoysim")
		}
	}
	if ts := c.GetTransportSocket(); ts != nil {
		m, err := unpackTyped(ts.GetName(), ts.GetTypedConfig())
		if err != nil {
			return nil, err
		}
		switch m := m.(type) {
		case *rawbufferv3.RawBuffer:
		case *tlsv3.UpstreamTlsContext:
			names, err := checkUpstreamTLS(m)
			if err != nil {
				return nil, err
			}
			ce.tls, ce.secretNames = m, names
		case *starttlsv3.UpstreamStartTlsConfig:
			// starttls_socket.cc: the raw socket until startSecureTransport,
			// then the TLS socket, both created with the connection.
			if err := checkFields(m, "cleartext_socket_config", "tls_socket_config"); err != nil {
				return nil, err
			}
			up := m.GetTlsSocketConfig()
			if up == nil {
				up = &tlsv3.UpstreamTlsContext{}
			}
			names, err := checkUpstreamTLS(up)
			if err != nil {
				return nil, err
			}
			ce.startTLS, ce.secretNames = up, names
		default:
			return nil, fmt.Errorf("cluster transport socket %s is not implemented by envoysim", typeName(ts.GetTypedConfig()))
		}
	}
	return ce, nil
}

func endpointsOf(cla *endpointv3.ClusterLoadAssignment) ([]string, error) {
	if err := checkFields(cla, "cluster_name", "endpoints"); err != nil {
		return nil, err
	}
	var out []string
	for _, lle := range cla.GetEndpoints() {
		if err := checkFields(lle, "lb_endpoints", "locality"); err != nil {
			return nil, err
		}
		for _, lbe := range lle.GetLbEndpoints() {
			if err := checkFields(lbe, "endpoint", "health_status"); err != nil {
				return nil, err
			}
			switch lbe.GetHealthStatus() {
			case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT:
				continue // Envoy does not route to these hosts
			}
			ep := lbe.GetEndpoint()
			if err := checkFields(ep, "address", "hostname"); err != nil {
				return nil, err
			}
			sa := ep.GetAddress().GetSocketAddress()
			if sa == nil {
				return nil, errors.New("endpoint: only socket_address is implemented by envoysim")
			}
			if err := checkFields(sa, "address", "port_value", "protocol"); err != nil {
				return nil, err
			}
			if sa.GetProtocol() != corev3.SocketAddress_TCP {
				return nil, errors.New("endpoint: only TCP is implemented by envoysim")
			}
			out = append(out, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
		}
	}
	return out, nil
}

// pick chooses an endpoint by the cluster's load-balancing policy.
func (ce *clusterEntry) pick() (string, error) {
	if len(ce.endpoints) == 0 {
		return "", fmt.Errorf("cluster %s has no healthy endpoint", ce.name)
	}
	if ce.random {
		return ce.endpoints[rand.IntN(len(ce.endpoints))], nil
	}
	i := ce.rr.Add(1) - 1
	return ce.endpoints[i%uint64(len(ce.endpoints))], nil
}

func (s *Sim) cluster(name string) *clusterEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clusters[name]
}

// dial connects to an endpoint of ce, with the cluster's transport socket. It
// returns once the connection is usable (after the TLS handshake, when Envoy
// raises Connected). A starttls socket is in clear text until switched, so
// its connection comes back raw; upstreamStartTLS gives the switch's TLS
// config.
func (s *Sim) dial(ctx context.Context, ce *clusterEntry) (net.Conn, error) {
	addr, err := ce.pick()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, ce.connectTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if ce.tls == nil {
		return c, nil
	}
	cfg, err := s.clientTLSConfig(ce.tls)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return tc, nil
}

// applyClusters is CDS state of the world: valid clusters are added or updated,
// clusters missing from the set are removed, and the error names the rejected
// ones ("Error adding/updating cluster(s) ...").
func (s *Sim) applyClusters(clusters []*clusterv3.Cluster) error {
	for _, c := range clusters {
		// PGV failures fail decoding of the whole response: nothing is applied.
		if err := validate(c); err != nil {
			s.stats.counter("cluster_manager.cds.update_rejected").Add(1)
			return fmt.Errorf("cluster %s: %w", c.GetName(), err)
		}
	}
	next := map[string]*clusterEntry{}
	var msgs []string
	for _, c := range clusters {
		if _, dup := next[c.GetName()]; dup {
			msgs = append(msgs, fmt.Sprintf("%s: duplicate cluster %s found", c.GetName(), c.GetName()))
			continue
		}
		ce, err := buildCluster(c)
		if err != nil {
			msgs = append(msgs, fmt.Sprintf("%s: %v", c.GetName(), err))
			s.mu.Lock()
			if old := s.clusters[c.GetName()]; old != nil {
				next[c.GetName()] = old // a rejected update keeps the old cluster
			}
			s.mu.Unlock()
			continue
		}
		next[c.GetName()] = ce
	}
	s.mu.Lock()
	for name, old := range s.clusters {
		if ne, ok := next[name]; ok && proto.Equal(ne.proto, old.proto) {
			next[name] = old // unchanged: keep round-robin state and gRPC channels
			continue
		}
		for key, cc := range s.grpcConns {
			if strings.HasPrefix(key, name+"|") {
				// In-flight streams keep their channel; new ones get a new channel.
				s.oldGRPC = append(s.oldGRPC, cc)
				delete(s.grpcConns, key)
			}
		}
	}
	s.clusters = next
	s.notifyLocked()
	s.mu.Unlock()
	s.stats.counter("cluster_manager.cds.update_attempt").Add(1)
	if len(msgs) > 0 {
		s.stats.counter("cluster_manager.cds.update_rejected").Add(1)
		return fmt.Errorf("Error adding/updating cluster(s) %s", strings.Join(msgs, "\n"))
	}
	s.stats.counter("cluster_manager.cds.update_success").Add(1)
	return nil
}

// envoyDefaultCircuitBreaker is Envoy's default for max_connections,
// max_pending_requests and max_requests (cluster.proto).
const envoyDefaultCircuitBreaker = 1024

// checkCircuitBreakers accepts circuit breakers that only raise Envoy's
// limits. The sim enforces no limit, which behaves like Envoy as long as a
// test stays below the limit; a config that lowers a limit could trip in a
// test where the sim would not, so it is NACKed.
func checkCircuitBreakers(cb *clusterv3.CircuitBreakers) error {
	for _, th := range cb.GetThresholds() {
		for name, v := range map[string]*wrapperspb.UInt32Value{
			"max_connections": th.GetMaxConnections(), "max_pending_requests": th.GetMaxPendingRequests(),
			"max_requests": th.GetMaxRequests(),
		} {
			if v != nil && v.GetValue() < envoyDefaultCircuitBreaker {
				return fmt.Errorf("circuit_breakers %s=%d lowers Envoy's default (%d); envoysim enforces no limit, so it accepts only raised ones", name, v.GetValue(), envoyDefaultCircuitBreaker)
			}
		}
		if th.GetMaxRetries() != nil || th.GetRetryBudget() != nil || th.GetTrackRemaining() || th.GetMaxConnectionPools() != nil {
			return errors.New("circuit_breakers: only max_connections, max_pending_requests and max_requests are implemented by envoysim")
		}
	}
	return nil
}

// upstreamStartTLS resolves the client TLS config a starttls cluster's
// connection switches to, nil for other clusters. Envoy builds the TLS
// socket when the connection is created, with the secrets of that moment.
func (s *Sim) upstreamStartTLS(ce *clusterEntry) (*tls.Config, error) {
	if ce.startTLS == nil {
		return nil, nil
	}
	return s.clientTLSConfig(ce.startTLS)
}
