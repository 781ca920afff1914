package envoysim

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func okCheck(ok *authv3.OkHttpResponse) func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok}}, nil
	}
}

func recvCheck(t *testing.T, a *authorizer) *authv3.CheckRequest {
	t.Helper()
	select {
	case r := <-a.reqs:
		return r
	case <-time.After(testTimeout):
		t.Fatal("authorizer received no Check")
	}
	return nil
}

// Checklist 6: the CheckRequest carries the pseudo-headers in the headers
// map, the path with its query, the method, host, scheme, protocol, stream
// id, both addresses and the route's context_extensions; duplicate headers
// are joined with ",".
func TestHTTPExtAuthzCheckRequestAttributes(t *testing.T) {
	a, authzAddr := startAuthorizer(t, okCheck(nil))
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, authzAddr, "", nil, authzHTTPFilter(t, authzHTTPConfig("authz")), routerHTTPFilter(t))
	req := newReq(t, http.MethodGet, hs.url("/api/v1/pods?limit=5"), "")
	req.Header.Add("X-Dup", "a")
	req.Header.Add("X-Dup", "b")
	req.Header.Set("Authorization", "Bearer agent")
	if resp, _ := do(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	cr := recvCheck(t, a).GetAttributes()
	h := cr.GetRequest().GetHttp()
	if h.GetPath() != "/api/v1/pods?limit=5" || h.GetMethod() != "GET" || h.GetHost() != hs.addr ||
		h.GetScheme() != "http" || h.GetProtocol() != "HTTP/1.1" || h.GetQuery() != "" {
		t.Errorf("request.http %v", h)
	}
	if _, err := strconv.ParseUint(h.GetId(), 10, 64); err != nil {
		t.Errorf("id %q is not a decimal stream id", h.GetId())
	}
	for k, want := range map[string]string{
		":authority": hs.addr, ":path": "/api/v1/pods?limit=5", ":method": "GET", ":scheme": "http",
		"x-dup": "a,b", "authorization": "Bearer agent", "x-forwarded-proto": "http",
	} {
		if v, ok := h.GetHeaders()[k]; !ok || v != want {
			t.Errorf("headers[%s] = %q, want %q", k, v, want)
		}
	}
	if cr.GetContextExtensions()["target"] != "crm-api" {
		t.Errorf("context_extensions %v", cr.GetContextExtensions())
	}
	_, lport, _ := net.SplitHostPort(hs.addr)
	if p := cr.GetDestination().GetAddress().GetSocketAddress(); strconv.Itoa(int(p.GetPortValue())) != lport || p.GetAddress() != "127.0.0.1" {
		t.Errorf("destination %v", p)
	}
	if cr.GetSource().GetAddress().GetSocketAddress().GetAddress() != "127.0.0.1" || cr.GetRequest().GetTime() == nil {
		t.Errorf("source %v, time %v", cr.GetSource(), cr.GetRequest().GetTime())
	}
	if hs.sim.Stats().Get("http.api.ext_authz.ok") != 1 || hs.sim.Stats().Get("cluster.upstream.ext_authz.ok") != 1 {
		t.Error("ext_authz.ok not counted")
	}
	hs.sim.RequireNoViolations(t)
}

// Contract §3's portable recipe: OVERWRITE_IF_EXISTS_OR_ADD replaces the
// agent's credential, headers_to_remove drops other agent headers (never a
// pseudo-header or host), response_headers_to_add reach the client. Dynamic
// metadata lands under envoy.filters.http.ext_authz with ext_authz_duration.
func TestHTTPExtAuthzOkMutationsPortableRecipe(t *testing.T) {
	_, authzAddr := startAuthorizer(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{
			Status:          &rpcstatus.Status{},
			DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"target": structpb.NewStringValue("crm-api")}},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers: []*corev3.HeaderValueOption{{
					Header:       &corev3.HeaderValue{Key: "authorization", Value: "Bearer service"},
					AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
				}},
				HeadersToRemove: []string{"x-api-key", ":path", "host", ":authority"},
				ResponseHeadersToAdd: []*corev3.HeaderValueOption{
					{Header: &corev3.HeaderValue{Key: "x-sluice", Value: "allowed"}},
					{Header: &corev3.HeaderValue{Key: "x-sluice", Value: "again"}},
				},
			}},
		}, nil
	})
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, authzAddr, "", nil, authzHTTPFilter(t, authzHTTPConfig("authz")), routerHTTPFilter(t))
	req := newReq(t, http.MethodGet, hs.url("/v1/x"), "")
	req.Header.Set("Authorization", "Bearer agent")
	req.Header.Set("X-Api-Key", "agent-key")
	resp, _ := do(t, req)
	if resp.StatusCode != http.StatusOK || len(resp.Header.Values("X-Sluice")) != 2 {
		t.Fatalf("status %d, x-sluice %q", resp.StatusCode, resp.Header.Values("X-Sluice"))
	}
	got := up.next(t)
	if v := got.header.Values("Authorization"); len(v) != 1 || v[0] != "Bearer service" {
		t.Errorf("upstream authorization %q", v)
	}
	if got.header.Get("X-Api-Key") != "" || got.uri != "/v1/x" || got.host != "api.upstream.test" {
		t.Errorf("upstream saw %+v", got)
	}
	md := hs.log(t).DynamicMetadata.GetFilterMetadata()[httpExtAuthzNamespace].GetFields()
	if md["target"].GetStringValue() != "crm-api" || md["ext_authz_duration"] == nil {
		t.Errorf("dynamic metadata %v", md)
	}
	hs.sim.RequireNoViolations(t)
}

// Checklist 6, append semantics are version-dependent: the sim applies the
// ≤1.36 (and post-revert) overwrite and counts each mutation whose effect
// differs between versions.
func TestHTTPExtAuthzVersionDependentMutationsAreFlagged(t *testing.T) {
	_, authzAddr := startAuthorizer(t, okCheck(&authv3.OkHttpResponse{
		Headers: []*corev3.HeaderValueOption{
			{Header: &corev3.HeaderValue{Key: "authorization", Value: "Bearer service"}}, // neither append nor append_action
			{Header: &corev3.HeaderValue{Key: "x-new", Value: "1"}, Append: wrapperspb.Bool(true)},
			{Header: &corev3.HeaderValue{Key: "x-kept", Value: "2"}, Append: wrapperspb.Bool(false)},
		},
	}))
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, authzAddr, "", nil, authzHTTPFilter(t, authzHTTPConfig("authz")), routerHTTPFilter(t))
	req := newReq(t, http.MethodGet, hs.url("/"), "")
	req.Header.Set("Authorization", "Bearer agent")
	do(t, req)
	got := up.next(t)
	if v := got.header.Values("Authorization"); len(v) != 1 || v[0] != "Bearer service" {
		t.Errorf("authorization %q: the sim overwrites", v)
	}
	if got.header.Get("X-New") != "1" || got.header.Get("X-Kept") != "2" {
		t.Errorf("upstream headers %v", got.header)
	}
	if v := hs.sim.Violations()[ViolationVersionDependentMutations]; v != 2 {
		t.Errorf("version_dependent_mutations = %d, want 2", v)
	}
}

// Checklist 6, 403 defaults: a denial without a status is 403, a denial's
// status, headers and body reach the client, and the request never reaches
// the upstream. Metadata is written on denial too (without
// ext_authz_duration).
func TestHTTPExtAuthzDenied(t *testing.T) {
	deny := make(chan *authv3.DeniedHttpResponse, 2)
	_, authzAddr := startAuthorizer(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{
			Status:          &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
			DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"decision": structpb.NewStringValue("deny")}},
			HttpResponse:    &authv3.CheckResponse_DeniedResponse{DeniedResponse: <-deny},
		}, nil
	})
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, authzAddr, "", nil, authzHTTPFilter(t, authzHTTPConfig("authz")), routerHTTPFilter(t))

	deny <- &authv3.DeniedHttpResponse{Status: &typev3.HttpStatus{}}
	if resp, body := do(t, newReq(t, http.MethodGet, hs.url("/"), "")); resp.StatusCode != http.StatusForbidden || body != "" {
		t.Errorf("code 0: %d %q, want 403", resp.StatusCode, body)
	}
	if l := hs.log(t); l.ResponseCodeDetails != "ext_authz_denied" ||
		l.DynamicMetadata.GetFilterMetadata()[httpExtAuthzNamespace].GetFields()["ext_authz_duration"] != nil ||
		l.DynamicMetadata.GetFilterMetadata()[httpExtAuthzNamespace].GetFields()["decision"].GetStringValue() != "deny" {
		t.Errorf("stream log %+v", l)
	}
	deny <- &authv3.DeniedHttpResponse{
		Status:  &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized},
		Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "www-authenticate", Value: `Bearer realm="sluice"`}}},
		Body:    `{"error":"token expired"}`,
	}
	resp, body := do(t, newReq(t, http.MethodPost, hs.url("/"), "payload"))
	if resp.StatusCode != http.StatusUnauthorized || body != `{"error":"token expired"}` || resp.Header.Get("Www-Authenticate") != `Bearer realm="sluice"` {
		t.Errorf("denial: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if len(up.reqs) != 0 {
		t.Error("a denied request reached the upstream")
	}
	if hs.sim.Stats().Get("http.api.ext_authz.denied") != 2 {
		t.Error("ext_authz.denied not counted")
	}
}

// Checklist 6: an error or a timeout gives status_on_error (403 by default)
// unless failure_mode_allow, which forwards the request.
func TestHTTPExtAuthzErrorTimeoutAndFailureModeAllow(t *testing.T) {
	mode := make(chan string, 10)
	_, authzAddr := startAuthorizer(t, func(ctx context.Context, _ *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		if <-mode == "slow" {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return nil, status.Error(codes.Unavailable, "authz down")
	})
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	cfg := authzHTTPConfig("authz")
	cfg.GetGrpcService().Timeout = durationpb.New(100 * time.Millisecond)
	hs := setupHTTP(t, up, authzAddr, "", nil, authzHTTPFilter(t, cfg), routerHTTPFilter(t))
	for _, m := range []string{"error", "slow"} {
		mode <- m
		if resp, _ := do(t, newReq(t, http.MethodGet, hs.url("/"), "")); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", m, resp.StatusCode)
		}
	}
	if hs.sim.Stats().Get("http.api.ext_authz.error") != 2 || len(up.reqs) != 0 {
		t.Error("errors not counted, or a request went through")
	}

	open := authzHTTPConfig("authz")
	open.FailureModeAllow, open.FailureModeAllowHeaderAdd = true, true
	open.StatusOnError = &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable}
	hs2 := setupHTTP(t, up, authzAddr, "", nil, authzHTTPFilter(t, open), routerHTTPFilter(t))
	mode <- "error"
	if resp, _ := do(t, newReq(t, http.MethodGet, hs2.url("/"), "")); resp.StatusCode != http.StatusOK {
		t.Errorf("failure_mode_allow: status %d", resp.StatusCode)
	}
	if up.next(t).header.Get("X-Envoy-Auth-Failure-Mode-Allowed") != "true" || hs2.sim.Stats().Get("http.api.ext_authz.failure_mode_allowed") != 1 {
		t.Error("failure_mode_allowed not visible")
	}
}

// ExtAuthzPerRoute.disabled skips the check.
func TestHTTPExtAuthzDisabledPerRoute(t *testing.T) {
	a, authzAddr := startAuthorizer(t, okCheck(nil))
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	rc := routeTo(t, "upstream", time.Second)
	rc.VirtualHosts[0].Routes[0].TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.ext_authz": typed(t,
		&httpauthzv3.ExtAuthzPerRoute{Override: &httpauthzv3.ExtAuthzPerRoute_Disabled{Disabled: true}})}
	hs := setupHTTP(t, up, authzAddr, "", rc, authzHTTPFilter(t, authzHTTPConfig("authz")), routerHTTPFilter(t))
	if resp, _ := do(t, newReq(t, http.MethodGet, hs.url("/"), "")); resp.StatusCode != http.StatusOK || len(a.reqs) != 0 {
		t.Errorf("status %d, %d checks", resp.StatusCode, len(a.reqs))
	}
}
