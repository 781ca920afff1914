package xds

import (
	"errors"
	"fmt"
	"slices"

	postgresv3alpha "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	netauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Validate is what Envoy would check first, done before anything is
// published, so a bad config is refused by sluice instead of NACKed by every
// Envoy. It checks:
//
//   - every resource's PGV rules (ValidateAll);
//   - every google.protobuf.Any inside, at any depth (typed_config,
//     typed_per_filter_config, transport sockets,
//     typed_extension_protocol_options), unpacked and validated too: PGV
//     does not descend into Any (envoy-contract.md section 7), and a type
//     sluice's binary does not know is refused;
//   - the checks Envoy makes in C++ only: network ext_proc needs a
//     grpc_service and not both directions SKIP; HTTP ext_proc needs a
//     service, and FULL_DUPLEX_STREAMED needs trailers SEND; tcp_proxy's
//     delayed connect modes need max_early_data_bytes; the HCM's last HTTP
//     filter is the router; a downstream TLS context has a certificate;
//     postgres_proxy terminating TLS needs a starttls transport socket
//     (section 5); postgres_proxy asking the server for TLS (upstream_ssl
//     REQUIRE) needs its tcp_proxy cluster to have a starttls transport
//     socket and no ext_authz after it, which would swallow the SSLRequest
//     postgres_proxy injects;
//   - sluice's fail-closed rule: no ext_authz or ext_proc has
//     failure_mode_allow set (design.md section 2);
//   - references: every cluster, route configuration and SDS secret a
//     resource names exists, and no two resources of a type share a name.
func (r *Resources) Validate() error {
	v := &validator{refs: map[string]map[string]string{}, clusters: map[string]*clusterv3.Cluster{}}
	for _, c := range r.Clusters {
		v.clusters[c.GetName()] = c
	}
	defined := map[string]map[string]bool{"cluster": {}, "route": {}, "secret": {}, "listener": {}}
	def := func(kind, name string) {
		if defined[kind][name] {
			v.errorf("%s %q is defined twice", kind, name)
		}
		defined[kind][name] = true
	}
	for _, l := range r.Listeners {
		def("listener", l.GetName())
		v.resource("listener", l.GetName(), l)
	}
	for _, c := range r.Clusters {
		def("cluster", c.GetName())
		v.resource("cluster", c.GetName(), c)
	}
	for _, rc := range r.Routes {
		def("route", rc.GetName())
		v.resource("route", rc.GetName(), rc)
	}
	for _, s := range r.Secrets {
		def("secret", s.GetName())
		v.resource("secret", s.GetName(), s)
	}
	for _, kind := range []string{"cluster", "route", "secret"} {
		names := make([]string, 0, len(v.refs[kind]))
		for n := range v.refs[kind] {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			if !defined[kind][n] {
				v.errorf("%s references %s %q, which does not exist", v.refs[kind][n], kind, n)
			}
		}
	}
	if len(v.errs) > 0 {
		return fmt.Errorf("xds: invalid resources: %w", errors.Join(v.errs...))
	}
	return nil
}

type validatable interface{ ValidateAll() error }

// validator walks resources. refs maps a kind to referenced names and the
// first place each was referenced from.
type validator struct {
	errs []error
	refs map[string]map[string]string
	// where is the resource being walked, for messages.
	where string
	// clusters are the resources' clusters by name, for checks that span
	// a listener and its upstream.
	clusters map[string]*clusterv3.Cluster
}

func (v *validator) errorf(format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf(format, args...))
}

func (v *validator) ref(kind, name, path string) {
	if v.refs[kind] == nil {
		v.refs[kind] = map[string]string{}
	}
	if _, ok := v.refs[kind][name]; !ok {
		v.refs[kind][name] = v.where + path
	}
}

func (v *validator) resource(kind, name string, m proto.Message) {
	v.where = fmt.Sprintf("%s %q", kind, name)
	if err := m.(validatable).ValidateAll(); err != nil {
		v.errorf("%s: %w", v.where, err)
	}
	v.walk("", m.ProtoReflect())
}

// walk checks m and descends into every message field, list element and
// map value, unpacking Any.
func (v *validator) walk(path string, m protoreflect.Message) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		v.unpack(path, a)
		return
	}
	v.check(path, m.Interface())
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			list := val.List()
			for i := range list.Len() {
				v.walk(fmt.Sprintf("%s[%d]", p, i), list.Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
			var keys []string
			val.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k.String())
				return true
			})
			slices.Sort(keys)
			for _, k := range keys {
				v.walk(fmt.Sprintf("%s[%q]", p, k), val.Map().Get(protoreflect.ValueOfString(k).MapKey()).Message())
			}
		case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
			v.walk(p, val.Message())
		}
		return true
	})
}

// unpack validates the message inside an Any and walks it.
func (v *validator) unpack(path string, a *anypb.Any) {
	m, err := a.UnmarshalNew()
	if err != nil {
		v.errorf("%s%s: typed config %s: %w", v.where, path, a.GetTypeUrl(), err)
		return
	}
	if vm, ok := m.(validatable); ok {
		if err := vm.ValidateAll(); err != nil {
			v.errorf("%s%s (%s): %w", v.where, path, a.GetTypeUrl(), err)
		}
	}
	v.walk(path+"<"+string(m.ProtoReflect().Descriptor().Name())+">", m.ProtoReflect())
}

// check makes the per-type checks PGV cannot express and records
// references.
func (v *validator) check(path string, m proto.Message) {
	at := v.where + path
	switch x := m.(type) {
	case *corev3.GrpcService:
		if c := x.GetEnvoyGrpc().GetClusterName(); c != "" {
			v.ref("cluster", c, path)
		}
	case *routev3.RouteAction:
		if c := x.GetCluster(); c != "" {
			v.ref("cluster", c, path)
		}
	case *tlsv3.SdsSecretConfig:
		v.ref("secret", x.GetName(), path)
	case *hcmv3.HttpConnectionManager:
		if n := x.GetRds().GetRouteConfigName(); n != "" {
			v.ref("route", n, path)
		}
		fs := x.GetHttpFilters()
		if len(fs) == 0 || fs[len(fs)-1].GetName() != filterRouter {
			v.errorf("%s: the last HTTP filter must be %s", at, filterRouter)
		}
	case *tcpproxyv3.TcpProxy:
		if c := x.GetCluster(); c != "" {
			v.ref("cluster", c, path)
		}
		if x.GetUpstreamConnectMode() != tcpproxyv3.UpstreamConnectMode_IMMEDIATE && x.GetMaxEarlyDataBytes() == nil {
			v.errorf("%s: upstream_connect_mode %s needs max_early_data_bytes", at, x.GetUpstreamConnectMode())
		}
	case *netextprocv3.NetworkExternalProcessor:
		if x.GetGrpcService() == nil {
			v.errorf("%s: network ext_proc: a grpc_service must be configured", at)
		}
		pm := x.GetProcessingMode()
		if pm.GetProcessRead() == netextprocv3.ProcessingMode_SKIP && pm.GetProcessWrite() == netextprocv3.ProcessingMode_SKIP {
			v.errorf("%s: network ext_proc: process_read and process_write cannot both be SKIP", at)
		}
		v.failClosed(at, x.GetFailureModeAllow())
	case *httpextprocv3.ExternalProcessor:
		if x.GetGrpcService() == nil && x.GetHttpService() == nil {
			v.errorf("%s: ext_proc: one of grpc_service or http_service must be set", at)
		}
		pm := x.GetProcessingMode()
		if pm.GetRequestBodyMode() == httpextprocv3.ProcessingMode_FULL_DUPLEX_STREAMED && pm.GetRequestTrailerMode() != httpextprocv3.ProcessingMode_SEND ||
			pm.GetResponseBodyMode() == httpextprocv3.ProcessingMode_FULL_DUPLEX_STREAMED && pm.GetResponseTrailerMode() != httpextprocv3.ProcessingMode_SEND {
			v.errorf("%s: ext_proc: FULL_DUPLEX_STREAMED body mode needs trailer mode SEND", at)
		}
		v.failClosed(at, x.GetFailureModeAllow())
	case *netauthzv3.ExtAuthz:
		if x.GetGrpcService() == nil {
			v.errorf("%s: network ext_authz: grpc_service is required", at)
		}
		v.failClosed(at, x.GetFailureModeAllow())
	case *httpauthzv3.ExtAuthz:
		if x.GetGrpcService() == nil && x.GetHttpService() == nil {
			v.errorf("%s: ext_authz: a grpc_service or http_service is required", at)
		}
		v.failClosed(at, x.GetFailureModeAllow())
	case *tlsv3.DownstreamTlsContext:
		c := x.GetCommonTlsContext()
		if len(c.GetTlsCertificates())+len(c.GetTlsCertificateSdsSecretConfigs()) == 0 {
			v.errorf("%s: a downstream TLS context needs a certificate", at)
		}
	case *listenerv3.FilterChain:
		v.startTLS(at, x)
	}
}

func (v *validator) failClosed(at string, allow bool) {
	if allow {
		v.errorf("%s: failure_mode_allow must be false: sluice fails closed", at)
	}
}

// startTLS checks what postgres_proxy's TLS needs and Envoy finds out only
// per connection, by closing it: terminating the client's TLS needs the
// chain's starttls transport socket; asking the server for TLS needs the
// upstream cluster's starttls transport socket (startUpstreamSecureTransport)
// and no ext_authz after postgres_proxy, since ext_authz resumes with the
// connection's read buffer and so drops the SSLRequest postgres_proxy
// injects (envoy-contract.md section 5).
func (v *validator) startTLS(at string, chain *listenerv3.FilterChain) {
	upstreamSSL := false
	for _, f := range chain.GetFilters() {
		switch f.GetName() {
		case filterPostgres:
			pg := &postgresv3alpha.PostgresProxy{}
			if !f.GetTypedConfig().MessageIs(pg) || f.GetTypedConfig().UnmarshalTo(pg) != nil {
				continue
			}
			if pg.GetDownstreamSsl() != postgresv3alpha.PostgresProxy_DISABLE && chain.GetTransportSocket().GetName() != socketStartTLS {
				v.errorf("%s: postgres_proxy downstream_ssl %s needs transport socket %s", at, pg.GetDownstreamSsl(), socketStartTLS)
			}
			upstreamSSL = pg.GetUpstreamSsl() != postgresv3alpha.PostgresProxy_DISABLE
		case filterNetAuthz:
			if upstreamSSL {
				v.errorf("%s: network ext_authz after postgres_proxy with upstream_ssl would drop the SSLRequest postgres_proxy injects; put it first", at)
			}
		case filterTCPProxy:
			tcp := &tcpproxyv3.TcpProxy{}
			if !upstreamSSL || !f.GetTypedConfig().MessageIs(tcp) || f.GetTypedConfig().UnmarshalTo(tcp) != nil {
				continue
			}
			if c := v.clusters[tcp.GetCluster()]; c != nil && c.GetTransportSocket().GetName() != socketStartTLS {
				v.errorf("%s: postgres_proxy upstream_ssl needs cluster %q to have transport socket %s", at, tcp.GetCluster(), socketStartTLS)
			}
		}
	}
}
