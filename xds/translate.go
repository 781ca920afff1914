package xds

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sluicehq/sluice/policies"
)

// maxMessageTimeout is the PGV upper bound of both ext_proc filters'
// message_timeout (envoy-contract.md section 1.1).
const maxMessageTimeout = time.Hour

// Resources is one complete, deterministic set of Envoy resources for one
// node: every slice is sorted by resource name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
	Routes    []*routev3.RouteConfiguration
	Secrets   []*tlsv3.Secret
}

// Translate builds the Envoy resources for cfg (see the package doc for
// what each target becomes). It reads the TLS files the config names. It
// does not validate the result: Validate does, and Server.Update does both.
func Translate(cfg *policies.Config) (*Resources, error) {
	if cfg == nil {
		return nil, errors.New("xds: nil config")
	}
	t := &translator{cfg: cfg, res: &Resources{}}
	t.sluiceClusters()

	targets := make([]*policies.Target, len(cfg.Targets))
	for i := range cfg.Targets {
		targets[i] = &cfg.Targets[i]
	}
	slices.SortFunc(targets, func(a, b *policies.Target) int { return cmp.Compare(a.Name, b.Name) })
	for _, tg := range targets {
		switch tg.Kind {
		case policies.KindPostgres:
			t.postgres(tg)
		case policies.KindHTTP:
			t.http(tg)
		default:
			t.fail(fmt.Errorf("target %q: unknown kind %q", tg.Name, tg.Kind))
		}
	}
	if len(t.errs) > 0 {
		return nil, fmt.Errorf("xds: %w", errors.Join(t.errs...))
	}
	t.res.sort()
	return t.res, nil
}

// translator accumulates resources and errors for one Translate call, so
// the builders read as straight-line code.
type translator struct {
	cfg *policies.Config
	res *Resources
	// authzCluster and extprocCluster name sluice's gRPC clusters (the same
	// name when both services share an address).
	authzCluster, extprocCluster string
	errs                         []error
}

func (t *translator) fail(err error) { t.errs = append(t.errs, err) }

// typed packs m into an Any with a deterministic encoding, so equal configs
// produce byte-equal resources, hashes and versions.
func (t *translator) typed(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		t.fail(fmt.Errorf("pack %T: %w", m, err))
	}
	return a
}

func (r *Resources) sort() {
	slices.SortFunc(r.Listeners, func(a, b *listenerv3.Listener) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.Clusters, func(a, b *clusterv3.Cluster) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.Routes, func(a, b *routev3.RouteConfiguration) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.Secrets, func(a, b *tlsv3.Secret) int { return cmp.Compare(a.Name, b.Name) })
}

// adsSource is the ConfigSource for RDS and SDS: over the same ADS stream
// as LDS and CDS, which the bootstrap configures.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// sdsSecret references the SDS secret name over ADS.
func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsSource()}
}

// grpcService points a filter at one of sluice's gRPC clusters. timeout 0
// leaves the field unset: for ext_proc it would bound the whole stream,
// which lives as long as the Postgres session or HTTP request; the
// per-message bound is message_timeout.
func grpcService(cluster string, timeout time.Duration) *corev3.GrpcService {
	g := &corev3.GrpcService{
		TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster}},
	}
	if timeout > 0 {
		g.Timeout = durationpb.New(timeout)
	}
	return g
}

// durationOrNil leaves a zero duration unset, so Envoy's default applies
// to a config built without policies' defaults.
func durationOrNil(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}

// capMessageTimeout keeps a message_timeout inside the PGV range. A wait
// longer than an hour therefore ends at an hour: Envoy closes the
// connection (fail-closed), it never lets the statement through.
func capMessageTimeout(d time.Duration) time.Duration {
	return min(d, maxMessageTimeout)
}

// extProcTimeout is envoy.extproc_message_timeout, or policies' default
// for a config built without defaults: an unset message_timeout would mean
// no timer for network ext_proc and an instant timeout for HTTP ext_proc.
func extProcTimeout(cfg *policies.Config) time.Duration {
	if cfg.Envoy.ExtProcMessageTimeout > 0 {
		return cfg.Envoy.ExtProcMessageTimeout
	}
	return policies.DefaultExtProcMessageTimeout
}

// socketAddress is host:port as Envoy's core Address.
func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// listener is a target's listener with one filter chain.
func (t *translator) listener(tg *policies.Target, chain *listenerv3.FilterChain) *listenerv3.Listener {
	addr := socketAddress(t.cfg.Envoy.ListenAddress, uint32(tg.Port))
	if ip, err := netip.ParseAddr(t.cfg.Envoy.ListenAddress); err == nil && ip.Is6() && ip.IsUnspecified() {
		// "Every address" means IPv4 too, as 0.0.0.0 means for IPv4.
		addr.GetSocketAddress().Ipv4Compat = true
	}
	return &listenerv3.Listener{
		Name:         ListenerName(tg.Name),
		Address:      addr,
		FilterChains: []*listenerv3.FilterChain{chain},
	}
}

// filter wraps a typed config as a named network filter.
func (t *translator) filter(name string, m proto.Message) *listenerv3.Filter {
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: t.typed(m)}}
}

// transportSocket wraps a typed config as a named transport socket.
func (t *translator) transportSocket(name string, m proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: name, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: t.typed(m)}}
}
