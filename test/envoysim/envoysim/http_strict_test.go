package envoysim

import (
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Strict acceptance for HTTP: what the sim does not implement is rejected
// with a reason, never silently played differently.
func TestHTTPStrictAcceptanceRejects(t *testing.T) {
	hcmWith := func(mut func(*hcmv3.HttpConnectionManager)) *listenerv3.Listener {
		l := hcmListener(t, "api", routerHTTPFilter(t))
		h := &hcmv3.HttpConnectionManager{}
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(h); err != nil {
			t.Fatal(err)
		}
		mut(h)
		l.FilterChains[0].Filters[0] = netFilter(t, "envoy.filters.network.http_connection_manager", h)
		return l
	}
	proc := func(mut func(*httpextprocv3.ExternalProcessor)) *listenerv3.Listener {
		c := procHTTPConfig("processor")
		mut(c)
		return hcmListener(t, "api", procHTTPFilter(t, c), routerHTTPFilter(t))
	}
	for _, tc := range []struct {
		name string
		l    *listenerv3.Listener
		want string
	}{
		{"upgrade type twice, ignoring case", hcmWith(func(h *hcmv3.HttpConnectionManager) {
			h.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}, {UpgradeType: "WebSocket"}}
		}), "Error: multiple upgrade configs with the same name: 'WebSocket'"},
		{"upgrade type CONNECT", hcmWith(func(h *hcmv3.HttpConnectionManager) {
			h.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}}
		}), "CONNECT) is not implemented by envoysim"},
		{"upgrade filters without a router", hcmWith(func(h *hcmv3.HttpConnectionManager) {
			h.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket",
				Filters: []*hcmv3.HttpFilter{authzHTTPFilter(t, authzHTTPConfig("authz"))}}}
		}), "is the last filter in a http upgrade filter chain"},
		{"upgrade filters with an unknown filter", hcmWith(func(h *hcmv3.HttpConnectionManager) {
			h.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket",
				Filters: []*hcmv3.HttpFilter{httpFilter(t, "lua", &wrapperspb.StringValue{}), routerHTTPFilter(t)}}}
		}), "Didn't find a registered implementation for 'lua'"},
		{"HCM field: xff_num_trusted_hops", hcmWith(func(h *hcmv3.HttpConnectionManager) { h.XffNumTrustedHops = 1 }),
			"xff_num_trusted_hops"},
		{"no router", hcmWith(func(h *hcmv3.HttpConnectionManager) {
			h.HttpFilters = []*hcmv3.HttpFilter{authzHTTPFilter(t, authzHTTPConfig("authz"))}
		}), "is the last filter in a http filter chain"},
		{"router not last", hcmWith(func(h *hcmv3.HttpConnectionManager) {
			h.HttpFilters = append(h.HttpFilters, authzHTTPFilter(t, authzHTTPConfig("authz")))
		}), "must be the last filter in a http filter chain"},
		{"unknown HTTP filter", hcmWith(func(h *hcmv3.HttpConnectionManager) {
			h.HttpFilters = append([]*hcmv3.HttpFilter{httpFilter(t, "lua", &wrapperspb.StringValue{})}, h.HttpFilters...)
		}), "Didn't find a registered implementation for 'lua'"},
		{"HCM behind another network filter", func() *listenerv3.Listener {
			l := hcmListener(t, "api", routerHTTPFilter(t))
			l.FilterChains[0].Filters = append([]*listenerv3.Filter{
				extAuthz(t, &extauthzv3.ExtAuthz{StatPrefix: "a", GrpcService: grpcService("authz")})}, l.FilterChains[0].Filters...)
			return l
		}(), "only network filter"},
		{"ext_proc FULL_DUPLEX_STREAMED", proc(func(c *httpextprocv3.ExternalProcessor) {
			c.ProcessingMode.RequestBodyMode = httpextprocv3.ProcessingMode_FULL_DUPLEX_STREAMED
			c.ProcessingMode.RequestTrailerMode = httpextprocv3.ProcessingMode_SEND
		}), "FULL_DUPLEX_STREAMED is not implemented"},
		{"ext_proc trailers SEND", proc(func(c *httpextprocv3.ExternalProcessor) {
			c.ProcessingMode.ResponseTrailerMode = httpextprocv3.ProcessingMode_SEND
		}), "trailer mode SEND"},
		{"ext_proc allow_mode_override", proc(func(c *httpextprocv3.ExternalProcessor) { c.AllowModeOverride = true }),
			"allow_mode_override not implemented"},
		{"ext_proc without grpc_service", proc(func(c *httpextprocv3.ExternalProcessor) {
			c.GrpcService = nil
			c.HttpService = &httpextprocv3.ExtProcHttpService{}
		}), "http_service"},
		{"ext_authz with_request_body", hcmListener(t, "api", authzHTTPFilter(t, func() *httpauthzv3.ExtAuthz {
			c := authzHTTPConfig("authz")
			c.WithRequestBody = &httpauthzv3.BufferSettings{MaxRequestBytes: 1024}
			return c
		}()), routerHTTPFilter(t)), "with_request_body not implemented"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			err := s.Apply([]*listenerv3.Listener{tc.l}, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if s.ListenerAddr("api") != "" {
				t.Error("a rejected listener is active")
			}
		})
	}
}

// Route configurations the sim cannot play are rejected; the listener that
// names them keeps warming.
func TestHTTPRouteConfigRejects(t *testing.T) {
	base := func(mut func(*routev3.Route)) *routev3.RouteConfiguration {
		rc := routeTo(t, "upstream", time.Second)
		mut(rc.VirtualHosts[0].Routes[0])
		return rc
	}
	for _, tc := range []struct {
		name string
		rc   *routev3.RouteConfiguration
		want string
	}{
		{"regex match", base(func(r *routev3.Route) {
			r.Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/.*"}}
		}), "safe_regex not implemented"},
		{"header matcher", base(func(r *routev3.Route) {
			r.Match.Headers = []*routev3.HeaderMatcher{{Name: "x"}}
		}), "headers not implemented"},
		{"retry policy", base(func(r *routev3.Route) {
			r.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx"}
		}), "retry_policy not implemented"},
		{"per-route upgrade_configs", base(func(r *routev3.Route) {
			r.GetRoute().UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "websocket"}}
		}), "upgrade_configs not implemented"},
		{"direct response", base(func(r *routev3.Route) {
			r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200}}
		}), "direct_response not implemented"},
		{"per-filter config of another filter", base(func(r *routev3.Route) {
			r.TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.ext_proc": typed(t, &httpextprocv3.ExtProcPerRoute{
				Override: &httpextprocv3.ExtProcPerRoute_Disabled{Disabled: true}})}
		}), "not implemented by envoysim"},
		{"ext_authz per-route grpc_service", base(func(r *routev3.Route) {
			r.TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.ext_authz": typed(t, &httpauthzv3.ExtAuthzPerRoute{
				Override: &httpauthzv3.ExtAuthzPerRoute_CheckSettings{CheckSettings: &httpauthzv3.CheckSettings{
					ServiceOverride: &httpauthzv3.CheckSettings_GrpcService{GrpcService: grpcService("other")}}}})}
		}), "grpc_service not implemented"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			if err := s.Apply([]*listenerv3.Listener{hcmListener(t, "api", routerHTTPFilter(t))}, nil, nil); err != nil {
				t.Fatal(err)
			}
			err := s.ApplyRoutes([]*routev3.RouteConfiguration{tc.rc})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if s.ListenerAddr("api") != "" {
				t.Error("the listener activated without its route configuration")
			}
		})
	}
}

// RDS over ADS: the listener warms until its route configuration arrives, a
// rejected route configuration is NACKed (previous version, error_detail 13)
// and the accepted one stays in force.
func TestADSRouteConfigurations(t *testing.T) {
	ads := startADS(t)
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	cluster := staticCluster(t, "upstream", up.addr(), false)
	l := hcmListener(t, "api", routerHTTPFilter(t))
	ads.set(t, "v1", map[resource.Type][]types.Resource{resource.ClusterType: {cluster}, resource.ListenerType: {l},
		resource.RouteType: {routeTo(t, "upstream", time.Second)}})
	s := newSim(t, WithNode(&corev3.Node{Id: "node-1"}))
	if err := s.ConnectADS(ads.addr); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitFor(ctxT(t), func() bool { return s.ListenerAddr("api") != "" }); err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, newReq(t, "GET", "http://"+s.ListenerAddr("api")+"/", "")); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	up.next(t)
	bad := routeTo(t, "upstream", time.Second)
	bad.VirtualHosts[0].Routes[0].GetRoute().PrefixRewrite = "/v2"
	ads.set(t, "v2", map[resource.Type][]types.Resource{resource.ClusterType: {cluster}, resource.ListenerType: {l}, resource.RouteType: {bad}})
	nack := ads.await(t, "an RDS NACK", func(r *discoveryv3.DiscoveryRequest) bool {
		return r.GetTypeUrl() == resource.RouteType && r.GetErrorDetail() != nil
	})
	if nack.GetVersionInfo() != "v1" || nack.GetErrorDetail().GetCode() != 13 || !strings.Contains(nack.GetErrorDetail().GetMessage(), "prefix_rewrite") {
		t.Errorf("NACK %v", nack)
	}
	if resp, _ := do(t, newReq(t, "GET", "http://"+s.ListenerAddr("api")+"/x", "")); resp.StatusCode != 200 || up.next(t).uri != "/x" {
		t.Errorf("the accepted routes are not in force: %d", resp.StatusCode)
	}
}
