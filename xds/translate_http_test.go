package xds

import (
	"slices"
	"testing"

	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
)

// An HTTP target's upgrades run through a chain of their own: the same
// ext_authz (so sluice decides each upgrade), an ext_proc that is sent
// headers but no body in either direction (a buffered request body would
// hold an upgrade's headers forever), and the router. Kubernetes targets
// accept SPDY/3.1 as well as WebSocket; other HTTP APIs WebSocket only.
func TestHTTPUpgradeChain(t *testing.T) {
	for _, tc := range []struct {
		config, target string
		types          []string
	}{
		{"../policies/examples/http-kubernetes.yaml", "cluster-api", []string{"websocket", "spdy/3.1"}},
		{"../policies/examples/http-api-key.yaml", "crm-api", []string{"websocket"}},
	} {
		t.Run(tc.target, func(t *testing.T) {
			_, res := load(t, tc.config)
			hcm := unpack[*hcmv3.HttpConnectionManager](t, findListener(t, res, tc.target).GetFilterChains()[0].GetFilters()[0].GetTypedConfig())
			var types []string
			for _, uc := range hcm.GetUpgradeConfigs() {
				types = append(types, uc.GetUpgradeType())
				if uc.GetEnabled() != nil && !uc.GetEnabled().GetValue() {
					t.Errorf("%s: disabled", uc.GetUpgradeType())
				}
				if got, want := names(uc.GetFilters()), []string{filterHTTPAuthz, filterHTTPExtProc, filterRouter}; !slices.Equal(got, want) {
					t.Fatalf("%s: filters %v, want %v", uc.GetUpgradeType(), got, want)
				}
				authz := unpack[*httpauthzv3.ExtAuthz](t, uc.GetFilters()[0].GetTypedConfig())
				if want := unpack[*httpauthzv3.ExtAuthz](t, hcm.GetHttpFilters()[0].GetTypedConfig()); !proto.Equal(authz, want) {
					t.Errorf("%s: ext_authz %v differs from the default chain's %v", uc.GetUpgradeType(), authz, want)
				}
				if authz.GetFailureModeAllow() {
					t.Errorf("%s: ext_authz fails open", uc.GetUpgradeType())
				}
				ep := unpack[*httpextprocv3.ExternalProcessor](t, uc.GetFilters()[1].GetTypedConfig())
				pm := ep.GetProcessingMode()
				if ep.GetFailureModeAllow() || pm.GetRequestHeaderMode() != httpextprocv3.ProcessingMode_SEND ||
					pm.GetResponseHeaderMode() != httpextprocv3.ProcessingMode_SEND ||
					pm.GetRequestBodyMode() != httpextprocv3.ProcessingMode_NONE ||
					pm.GetResponseBodyMode() != httpextprocv3.ProcessingMode_NONE {
					t.Errorf("%s: ext_proc %v", uc.GetUpgradeType(), ep)
				}
				if got := ep.GetMetadataOptions().GetForwardingNamespaces().GetUntyped(); !slices.Equal(got, []string{nsHTTPAuthz}) {
					t.Errorf("%s: forwarding namespaces %v", uc.GetUpgradeType(), got)
				}
			}
			if !slices.Equal(types, tc.types) {
				t.Errorf("upgrade types %v, want %v", types, tc.types)
			}
		})
	}
}

// When sluice cannot answer (down, unreachable, failing), Envoy answers
// the agent with status_on_error: 503, a transient failure, on every
// chain (default and upgrade) for both filters, never ext_authz's default
// 403 (a permission denial) or ext_proc's 500.
func TestHTTPStatusOnError(t *testing.T) {
	for _, tc := range []struct{ config, target string }{
		{"../policies/examples/http-kubernetes.yaml", "cluster-api"},
		{"../policies/examples/http-api-key.yaml", "crm-api"},
	} {
		t.Run(tc.target, func(t *testing.T) {
			_, res := load(t, tc.config)
			hcm := unpack[*hcmv3.HttpConnectionManager](t, findListener(t, res, tc.target).GetFilterChains()[0].GetFilters()[0].GetTypedConfig())
			chains := [][]*hcmv3.HttpFilter{hcm.GetHttpFilters()}
			for _, uc := range hcm.GetUpgradeConfigs() {
				chains = append(chains, uc.GetFilters())
			}
			for i, filters := range chains {
				authz := unpack[*httpauthzv3.ExtAuthz](t, filters[0].GetTypedConfig())
				if got := authz.GetStatusOnError().GetCode(); got != typev3.StatusCode_ServiceUnavailable {
					t.Errorf("chain %d: ext_authz status_on_error %v, want 503", i, got)
				}
				ep := unpack[*httpextprocv3.ExternalProcessor](t, filters[1].GetTypedConfig())
				if got := ep.GetStatusOnError().GetCode(); got != typev3.StatusCode_ServiceUnavailable {
					t.Errorf("chain %d: ext_proc status_on_error %v, want 503", i, got)
				}
			}
		})
	}
}
