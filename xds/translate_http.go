package xds

import (
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicehq/sluice/policies"
)

// http adds an HTTP target's listener (HCM: ext_authz → ext_proc →
// router), its route configuration (RDS), its upstream cluster and the TLS
// secrets it references.
func (t *translator) http(tg *policies.Target) {
	u, err := url.Parse(tg.Upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		t.fail(fmt.Errorf("target %q: upstream %q: expected http://host[:port] or https://host[:port]", tg.Name, tg.Upstream))
		return
	}
	host := u.Hostname()
	port := uint32(80)
	if u.Scheme == "https" {
		port = 443
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			t.fail(fmt.Errorf("target %q: upstream %q: bad port", tg.Name, tg.Upstream))
			return
		}
		port = uint32(n)
	}
	name := tg.Name

	authz := &httpauthzv3.ExtAuthz{
		Services:            &httpauthzv3.ExtAuthz_GrpcService{GrpcService: grpcService(t.authzCluster, t.cfg.Envoy.AuthzTimeout)},
		FailureModeAllow:    false,
		TransportApiVersion: corev3.ApiVersion_V3,
		// When sluice cannot answer (down, or past the timeout) Envoy
		// refuses with status_on_error, 403 by default: the agent would
		// read a permission denial into an outage. 503 says "try again"
		// (envoy-contract.md section 3).
		StatusOnError: statusOnError(),
	}
	extproc := &httpextprocv3.ExternalProcessor{
		GrpcService:      grpcService(t.extprocCluster, 0),
		FailureModeAllow: false,
		// As ext_authz's: an unreachable or failing processor is an
		// outage (503), not Envoy's default 500. A per-message timeout is
		// 504 in the builds envoy-contract.md section 4 describes, also a
		// transient failure.
		StatusOnError: statusOnError(),
		// Only what sluice needs is sent. Request bodies are buffered:
		// Envoy holds the request (headers included) until sluice answers
		// the whole body, and sluice answers only once the request's
		// event, with the body's digest, is durable, so nothing reaches
		// the upstream unaudited (a body over the connection's buffer
		// limit is refused with 413). Response bodies go to sluice only
		// where a policy masks them, streamed, so that a large list or a
		// watch is masked chunk by chunk; elsewhere they flow past sluice,
		// and the response's record has no digest, its size taken from
		// Content-Length (extproc/http.go).
		ProcessingMode: &httpextprocv3.ProcessingMode{
			RequestHeaderMode:   httpextprocv3.ProcessingMode_SEND,
			ResponseHeaderMode:  httpextprocv3.ProcessingMode_SEND,
			RequestBodyMode:     httpextprocv3.ProcessingMode_BUFFERED,
			ResponseBodyMode:    responseBodyMode(t.cfg, name),
			RequestTrailerMode:  httpextprocv3.ProcessingMode_SKIP,
			ResponseTrailerMode: httpextprocv3.ProcessingMode_SKIP,
		},
		MessageTimeout: durationpb.New(capMessageTimeout(extProcTimeout(t.cfg))),
		// sluice's HTTP ext_authz writes the target and principal to its
		// dynamic metadata; forwarding it ties the ext_proc stream to the
		// decision that admitted the request.
		MetadataOptions: &httpextprocv3.MetadataOptions{
			ForwardingNamespaces: &httpextprocv3.MetadataOptions_MetadataNamespaces{Untyped: []string{nsHTTPAuthz}},
		},
	}

	hcm := &hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteName(name),
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			t.httpFilter(filterHTTPAuthz, authz),
			t.httpFilter(filterHTTPExtProc, extproc),
			t.httpFilter(filterRouter, &routerv3.Router{}),
		},
		UpgradeConfigs: t.upgradeConfigs(tg, authz, extproc),
		// Envoy is the edge: the agent's address is the peer's, never an
		// X-Forwarded-For the agent wrote.
		UseRemoteAddress: wrapperspb.Bool(true),
		// sluice classifies requests by path, so the path it is shown must
		// be the path the upstream serves: normalized (RFC 3986 dot
		// segments, merged slashes), and an encoded slash, which an
		// upstream may decode into a different resource, is refused.
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
	}

	chain := &listenerv3.FilterChain{Filters: []*listenerv3.Filter{t.filter(filterHCM, hcm)}}
	if tg.TLS != nil {
		secret := DownstreamCertSecret(name)
		t.certSecret(secret, tg.TLS.CertFile, tg.TLS.KeyFile)
		chain.TransportSocket = t.transportSocket(socketTLS, &tlsv3.DownstreamTlsContext{
			CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(secret)},
				AlpnProtocols:                  []string{"h2", "http/1.1"},
			},
		})
	}
	t.res.Listeners = append(t.res.Listeners, t.listener(tg, chain))
	t.res.Routes = append(t.res.Routes, t.routeConfig(tg, u.Host))

	c := t.cluster(ClusterName(name), host, port)
	if u.Scheme == "https" {
		c.TransportSocket = t.transportSocket(socketTLS, t.upstreamTLS(tg, host))
	}
	t.res.Clusters = append(t.res.Clusters, c)
}

// Upgrade types HTTP targets accept. Kubernetes exec, attach and
// port-forward upgrade to SPDY/3.1 (kubectl before 1.31, and as its
// fallback) or WebSocket (the v4/v5.channel.k8s.io subprotocols); other
// HTTP APIs get WebSocket only. Envoy matches a type ignoring case and
// refuses any other type with 403 before a filter runs
// (envoy-contract.md section 3, "Upgrades").
const (
	upgradeWebSocket = "websocket"
	upgradeSPDY      = "spdy/3.1"
)

// upgradeConfigs lets Envoy forward the target's upgrades through a filter
// chain of their own: the same ext_authz, so that sluice decides each
// upgrade (exec, attach and port-forward are admin) and records the
// decision before anything is forwarded; and an ext_proc that is sent the
// request headers and the upstream's answer (the 101) but no body. The
// default chain's ext_proc cannot run upgrades: it buffers request bodies,
// and an upgrade's body (the tunnel) only starts after the 101, so Envoy
// would hold the request headers forever (envoy-contract.md section 4,
// "Upgrades"); and streaming the response body would send every byte of
// an exec session to sluice, which masks JSON, not terminal traffic. The
// tunnelled bytes pass unmasked (README).
func (t *translator) upgradeConfigs(tg *policies.Target, authz *httpauthzv3.ExtAuthz, extproc *httpextprocv3.ExternalProcessor) []*hcmv3.HttpConnectionManager_UpgradeConfig {
	upgradeProc := proto.Clone(extproc).(*httpextprocv3.ExternalProcessor)
	upgradeProc.ProcessingMode = &httpextprocv3.ProcessingMode{
		RequestHeaderMode:   httpextprocv3.ProcessingMode_SEND,
		ResponseHeaderMode:  httpextprocv3.ProcessingMode_SEND,
		RequestBodyMode:     httpextprocv3.ProcessingMode_NONE,
		ResponseBodyMode:    httpextprocv3.ProcessingMode_NONE,
		RequestTrailerMode:  httpextprocv3.ProcessingMode_SKIP,
		ResponseTrailerMode: httpextprocv3.ProcessingMode_SKIP,
	}
	types := []string{upgradeWebSocket}
	if tg.API == policies.APIKubernetes {
		types = append(types, upgradeSPDY)
	}
	out := make([]*hcmv3.HttpConnectionManager_UpgradeConfig, 0, len(types))
	for _, typ := range types {
		out = append(out, &hcmv3.HttpConnectionManager_UpgradeConfig{
			UpgradeType: typ,
			// The filters keep the default chain's names, so the route's
			// ext_authz settings (the target's context_extensions) apply.
			Filters: []*hcmv3.HttpFilter{
				t.httpFilter(filterHTTPAuthz, authz),
				t.httpFilter(filterHTTPExtProc, upgradeProc),
				t.httpFilter(filterRouter, &routerv3.Router{}),
			},
		})
	}
	return out
}

// routeConfig is an HTTP target's one route: everything to its cluster,
// with the target named in ext_authz's context_extensions (design.md
// section 7). The Host header is rewritten to the upstream's, since the
// agent addressed Envoy, and a virtual-hosted upstream routes on Host.
func (t *translator) routeConfig(tg *policies.Target, upstreamHost string) *routev3.RouteConfiguration {
	action := &routev3.RouteAction{
		ClusterSpecifier:     &routev3.RouteAction_Cluster{Cluster: ClusterName(tg.Name)},
		HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: upstreamHost},
	}
	if tg.RequestTimeout != nil {
		// 0 disables the timeout, as Kubernetes watches need.
		action.Timeout = durationpb.New(*tg.RequestTimeout)
	}
	perRoute := &httpauthzv3.ExtAuthzPerRoute{Override: &httpauthzv3.ExtAuthzPerRoute_CheckSettings{
		CheckSettings: &httpauthzv3.CheckSettings{
			ContextExtensions: map[string]string{ContextExtensionTarget: tg.Name},
		},
	}}
	return &routev3.RouteConfiguration{
		Name: RouteName(tg.Name),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    tg.Name,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:                 tg.Name,
				Match:                &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action:               &routev3.Route_Route{Route: action},
				TypedPerFilterConfig: map[string]*anypb.Any{filterHTTPAuthz: t.typed(perRoute)},
			}},
		}},
	}
}

// upstreamTLS verifies an https upstream: the chain against upstream_ca_file
// (sent as an SDS secret) or Envoy's system trust store, and the name
// against the upstream's identity. Envoy checks only the chain unless a SAN
// matcher is given, so one always is: upstream_sni when set, else the
// upstream's host (a DNS SAN for a name, an IP SAN for an address). SNI is
// upstream_sni or the host name; an IP address is never sent as SNI
// (RFC 6066 section 3).
func (t *translator) upstreamTLS(tg *policies.Target, host string) *tlsv3.UpstreamTlsContext {
	san := &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: exact(host)}
	sni := host
	if _, err := netip.ParseAddr(host); err == nil {
		san.SanType = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
		sni = ""
	}
	if tg.UpstreamSNI != "" {
		sni = tg.UpstreamSNI
		san = &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: exact(tg.UpstreamSNI)}
	}
	names := &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san}}

	common := &tlsv3.CommonTlsContext{}
	if tg.UpstreamCAFile != "" {
		secret := UpstreamCASecret(tg.Name)
		t.caSecret(secret, tg.UpstreamCAFile)
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         names,
				ValidationContextSdsSecretConfig: sdsSecret(secret),
			},
		}
	} else {
		names.TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: SystemTrustStore}}
		common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: names}
	}
	if tg.Credentials.ClientCertFile != "" {
		secret := UpstreamClientCertSecret(tg.Name)
		t.certSecret(secret, tg.Credentials.ClientCertFile, tg.Credentials.ClientKeyFile)
		common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{sdsSecret(secret)}
	}
	return &tlsv3.UpstreamTlsContext{CommonTlsContext: common, Sni: sni}
}

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

// httpFilter wraps a typed config as a named HTTP filter.
func (t *translator) httpFilter(name string, m proto.Message) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: t.typed(m)}}
}

// statusOnError is what Envoy answers when sluice's ext_authz or ext_proc
// cannot: 503 Service Unavailable, a transient failure the agent may retry.
func statusOnError() *typev3.HttpStatus {
	return &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable}
}

// responseBodyMode is STREAMED when some policy on the target masks
// results, NONE when none does: then no response byte goes to sluice.
func responseBodyMode(cfg *policies.Config, target string) httpextprocv3.ProcessingMode_BodySendMode {
	for _, p := range cfg.Policies {
		if len(p.Mask) > 0 && slices.Contains(p.Targets, target) {
			return httpextprocv3.ProcessingMode_STREAMED
		}
	}
	return httpextprocv3.ProcessingMode_NONE
}
