package envoysim

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	starttlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/starttls/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// listenerConfig is an accepted Listener, ready to serve new connections.
type listenerConfig struct {
	proto            *listenerv3.Listener
	addr             string
	statPrefix       string
	tlsInspector     bool
	inspectorTimeout time.Duration
	chains           []*filterChainConfig
	defaultChain     *filterChainConfig
	secretNames      []string
	routeNames       []string // RDS route configurations the HCMs name
}

type transportKind int

const (
	transportRaw transportKind = iota
	transportTLS
	transportStartTLS
)

type filterChainConfig struct {
	name              string
	serverNames       []string
	transportProtocol string
	transport         transportKind
	tls               *tlsv3.DownstreamTlsContext
	factories         []filterFactory
	hcm               *hcmConfig // set when the chain is an http_connection_manager
}

// filterFactory installs one configured filter on a new connection, like
// Envoy's Network::FilterFactoryCb.
type filterFactory func(c *conn)

// chainBuild carries what one filter chain's builders need to share.
type chainBuild struct {
	sim *Sim
	// readsNamespaces are dynamic-metadata namespaces filters forward to
	// extension services; the sim rejects a chain that forwards one it does not
	// produce (postgres SQL metadata).
	readsNamespaces []string
	unproduced      []string
	hcm             *hcmConfig
}

type networkFilter struct {
	terminal bool
	build    func(cb *chainBuild, name string, m proto.Message) (filterFactory, error)
}

// networkFilters maps a typed_config type to its implementation. Envoy selects
// the factory by type URL; the filter name is a label.
func networkFilters() map[protoreflect.FullName]networkFilter {
	return map[protoreflect.FullName]networkFilter{
		extProcConfigName:  {build: buildExtProc},
		extAuthzConfigName: {build: buildExtAuthz},
		tcpProxyConfigName: {terminal: true, build: buildTCPProxy},
		postgresConfigName: {build: buildPostgres},
		hcmConfigName:      {terminal: true, build: buildHCM},
	}
}

// buildListener is the per-listener part of LDS acceptance (what Envoy's
// addOrUpdateListener checks beyond the PGV rules of the Listener message).
func (s *Sim) buildListener(l *listenerv3.Listener) (*listenerConfig, error) {
	if err := checkFields(l, "name", "address", "filter_chains", "default_filter_chain",
		"listener_filters", "listener_filters_timeout", "continue_on_listener_filters_timeout",
		// Accepted and ignored: they do not change what a connection observes.
		"stat_prefix", "traffic_direction", "metadata", "drain_type", "enable_reuse_port",
		"per_connection_buffer_limit_bytes", "tcp_backlog_size", "access_log"); err != nil {
		return nil, err
	}
	lc := &listenerConfig{proto: l, inspectorTimeout: 15 * time.Second}
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, errors.New("listener address: only socket_address is implemented by envoysim")
	}
	if err := checkFields(sa, "address", "port_value", "protocol"); err != nil {
		return nil, err
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return nil, errors.New("listener address: only TCP is implemented by envoysim")
	}
	lc.addr = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	lc.statPrefix = "listener." + strings.ReplaceAll(strings.ReplaceAll(lc.addr, ":", "_"), "[", "")
	if l.GetListenerFiltersTimeout() != nil {
		lc.inspectorTimeout = l.GetListenerFiltersTimeout().AsDuration()
	}
	for _, lf := range l.GetListenerFilters() {
		if err := checkFields(lf, "name", "typed_config"); err != nil {
			return nil, err
		}
		m, err := unpackTyped(lf.GetName(), lf.GetTypedConfig())
		if err != nil {
			return nil, err
		}
		ti, ok := m.(*tlsinspectorv3.TlsInspector)
		if !ok {
			return nil, fmt.Errorf("listener filter %s (%s) is not implemented by envoysim", lf.GetName(), typeName(lf.GetTypedConfig()))
		}
		if err := checkFields(ti, "initial_read_buffer_size", "max_client_hello_size"); err != nil {
			return nil, err
		}
		lc.tlsInspector = true
	}
	if len(l.GetFilterChains()) == 0 && l.GetDefaultFilterChain() == nil {
		return nil, fmt.Errorf("error adding listener '%s': no filter chains specified", l.GetName())
	}
	seen := map[string]bool{}
	for _, fc := range l.GetFilterChains() {
		c, names, err := s.buildFilterChain(fc)
		if err != nil {
			return nil, err
		}
		key := strings.Join(c.serverNames, ",") + "|" + c.transportProtocol
		if seen[key] {
			return nil, fmt.Errorf("error adding listener '%s': multiple filter chains with the same matching rules are defined", l.GetName())
		}
		seen[key] = true
		lc.chains = append(lc.chains, c)
		lc.secretNames = append(lc.secretNames, names...)
		lc.routeNames = append(lc.routeNames, c.routeNames()...)
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		c, names, err := s.buildFilterChain(fc)
		if err != nil {
			return nil, err
		}
		lc.defaultChain = c
		lc.secretNames = append(lc.secretNames, names...)
		lc.routeNames = append(lc.routeNames, c.routeNames()...)
	}
	return lc, nil
}

func (s *Sim) buildFilterChain(fc *listenerv3.FilterChain) (*filterChainConfig, []string, error) {
	if err := checkFields(fc, "filter_chain_match", "filters", "transport_socket", "name", "metadata",
		"transport_socket_connect_timeout"); err != nil {
		return nil, nil, err
	}
	c := &filterChainConfig{name: fc.GetName()}
	if m := fc.GetFilterChainMatch(); m != nil {
		if err := checkFields(m, "server_names", "transport_protocol"); err != nil {
			return nil, nil, err
		}
		c.serverNames = slices.Clone(m.GetServerNames())
		sort.Strings(c.serverNames)
		c.transportProtocol = m.GetTransportProtocol()
	}
	var secretNames []string
	if ts := fc.GetTransportSocket(); ts != nil {
		m, err := unpackTyped(ts.GetName(), ts.GetTypedConfig())
		if err != nil {
			return nil, nil, err
		}
		switch m := m.(type) {
		case *rawbufferv3.RawBuffer:
		case *tlsv3.DownstreamTlsContext:
			if secretNames, err = checkDownstreamTLS(m); err != nil {
				return nil, nil, err
			}
			c.transport, c.tls = transportTLS, m
		case *starttlsv3.StartTlsConfig:
			if err := checkFields(m, "cleartext_socket_config", "tls_socket_config"); err != nil {
				return nil, nil, err
			}
			if m.GetTlsSocketConfig() == nil {
				return nil, nil, errors.New("StartTlsConfig: tls_socket_config is required")
			}
			if secretNames, err = checkDownstreamTLS(m.GetTlsSocketConfig()); err != nil {
				return nil, nil, err
			}
			c.transport, c.tls = transportStartTLS, m.GetTlsSocketConfig()
		default:
			return nil, nil, fmt.Errorf("transport socket %s (%s) is not implemented by envoysim", ts.GetName(), typeName(ts.GetTypedConfig()))
		}
	}
	cb := &chainBuild{sim: s}
	kinds := networkFilters()
	filters := fc.GetFilters()
	for i, f := range filters {
		if err := checkFields(f, "name", "typed_config"); err != nil {
			return nil, nil, err
		}
		m, err := unpackTyped(f.GetName(), f.GetTypedConfig())
		if err != nil {
			return nil, nil, err
		}
		kind, ok := kinds[m.ProtoReflect().Descriptor().FullName()]
		if !ok {
			return nil, nil, fmt.Errorf("Didn't find a registered implementation for '%s' with type URL: '%s'", f.GetName(), typeName(f.GetTypedConfig()))
		}
		last := i == len(filters)-1
		switch {
		case kind.terminal && !last:
			return nil, nil, fmt.Errorf("Error: terminal filter named %s of type %s must be the last filter in a network filter chain.", f.GetName(), typeName(f.GetTypedConfig()))
		case !kind.terminal && last:
			return nil, nil, fmt.Errorf("Error: non-terminal filter named %s of type %s is the last filter in a network filter chain.", f.GetName(), typeName(f.GetTypedConfig()))
		}
		factory, err := kind.build(cb, f.GetName(), m)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f.GetName(), err)
		}
		c.factories = append(c.factories, factory)
	}
	if cb.hcm != nil {
		// The sim serves HCM with net/http, from the first byte of the
		// connection (after its transport socket), so nothing may precede it.
		if len(filters) != 1 {
			return nil, nil, errors.New("envoysim implements http_connection_manager only as the only network filter of its filter chain")
		}
		if c.transport == transportStartTLS {
			return nil, nil, errors.New("envoysim does not implement http_connection_manager behind a starttls transport socket")
		}
		c.hcm = cb.hcm
	}
	for _, ns := range cb.readsNamespaces {
		if slices.Contains(cb.unproduced, ns) {
			return nil, nil, fmt.Errorf("dynamic metadata namespace %q is forwarded to an extension service, but envoysim does not produce it (postgres_proxy SQL parsing metadata is not implemented)", ns)
		}
	}
	return c, secretNames, nil
}

func (c *filterChainConfig) routeNames() []string {
	if c.hcm == nil || c.hcm.rdsName == "" {
		return nil
	}
	return []string{c.hcm.rdsName}
}

// selectChain picks the filter chain for a connection: the most specific
// server_names match (exact, then the longest wildcard suffix, then a chain
// without server_names), then transport_protocol, then the default chain.
func (lc *listenerConfig) selectChain(sni, transportProtocol string) *filterChainConfig {
	best, bestRank := (*filterChainConfig)(nil), -1
	for _, c := range lc.chains {
		if c.transportProtocol != "" && c.transportProtocol != transportProtocol {
			continue
		}
		rank := -1
		if len(c.serverNames) == 0 {
			rank = 0
		}
		for _, n := range c.serverNames {
			switch {
			case sni != "" && n == sni:
				rank = max(rank, 1<<20)
			case sni != "" && strings.HasPrefix(n, "*.") && strings.HasSuffix(sni, n[1:]):
				rank = max(rank, len(n))
			}
		}
		if rank < 0 {
			continue
		}
		rank = rank*2 + boolInt(c.transportProtocol != "")
		if rank > bestRank {
			best, bestRank = c, rank
		}
	}
	if best == nil {
		return lc.defaultChain
	}
	return best
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
