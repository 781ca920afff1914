package envoysim

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
)

// HCM + router: the request reaches the upstream with Envoy's edge header
// handling (use_remote_address) and the route's host rewrite and timeout
// header; the response comes back with Envoy's headers.
func TestHTTPRouterForwardsToUpstream(t *testing.T) {
	up := startHTTPUpstream(t, nil, func(w http.ResponseWriter, r *http.Request, body string) {
		w.Header().Set("X-Upstream", "yes")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte("got " + body))
	})
	hs := setupHTTP(t, up, "", "", nil, routerHTTPFilter(t))
	req := newReq(t, http.MethodPost, hs.url("/v1/items?x=1"), "hello")
	req.Header.Set("X-Forwarded-For", "10.9.9.9")
	req.Header.Set("X-Envoy-Retry-On", "5xx")
	req.Header.Set("X-Request-Id", "agent-chosen")
	resp, body := do(t, req)
	if resp.StatusCode != http.StatusCreated || body != "got hello" {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("Server") != "envoy" || resp.Header.Get("X-Upstream") != "yes" || resp.Header.Get("X-Envoy-Upstream-Service-Time") == "" {
		t.Errorf("response headers %v", resp.Header)
	}
	got := up.next(t)
	if got.method != http.MethodPost || got.uri != "/v1/items?x=1" || got.host != "api.upstream.test" || got.body != "hello" {
		t.Errorf("upstream saw %+v", got)
	}
	for k, want := range map[string]string{
		"X-Forwarded-For":                "10.9.9.9,127.0.0.1",
		"X-Forwarded-Proto":              "http",
		"X-Envoy-External-Address":       "127.0.0.1",
		"X-Envoy-Expected-Rq-Timeout-Ms": "10000",
		"X-Envoy-Retry-On":               "",
		"User-Agent":                     "Go-http-client/1.1", // the client's, passed through
	} {
		if v := got.header.Get(k); v != want {
			t.Errorf("upstream %s = %q, want %q", k, v, want)
		}
	}
	if id := got.header.Get("X-Request-Id"); len(id) != 36 || id == "agent-chosen" {
		t.Errorf("x-request-id %q: an edge request gets a new UUID", id)
	}
	// The stream log is written after the stream has ended and been
	// counted: wait for it before reading the stats.
	if l := hs.log(t); l.ResponseCode != http.StatusCreated || l.ResponseCodeDetails != "via_upstream" || l.Path != "/v1/items?x=1" {
		t.Errorf("stream log %+v", l)
	}
	st := hs.sim.Stats()
	for name, want := range map[string]int64{
		"http.api.downstream_rq_total": 1, "http.api.downstream_rq_2xx": 1, "http.api.downstream_rq_completed": 1,
		"cluster.upstream.upstream_rq_total": 1, "cluster.upstream.upstream_rq_201": 1,
	} {
		if v := st.Get(name); v != want {
			t.Errorf("%s = %d, want %d", name, v, want)
		}
	}
	hs.sim.RequireNoViolations(t)
}

// normalize_path, merge_slashes and REJECT_REQUEST for escaped slashes, as
// sluice configures them: the upstream sees the normalized path, an escaped
// slash is refused with 400 before any filter forwards it.
func TestHTTPPathNormalization(t *testing.T) {
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, "", "", nil, routerHTTPFilter(t))
	for _, tc := range []struct{ path, want string }{
		{"/a/./b/../c//d?q=%2F", "/a/c/d?q=%2F"},
		{"/%7Euser/x%2a", "/~user/x%2A"},
	} {
		resp, _ := do(t, newReq(t, http.MethodGet, hs.url(tc.path), ""))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", tc.path, resp.StatusCode)
		}
		if got := up.next(t).uri; got != tc.want {
			t.Errorf("%s reached the upstream as %s, want %s", tc.path, got, tc.want)
		}
	}
	resp, _ := do(t, newReq(t, http.MethodGet, hs.url("/api/v1/namespaces/a%2Fb/pods"), ""))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("escaped slash: status %d, want 400", resp.StatusCode)
	}
	if n := hs.sim.Stats().Get("http.api.downstream_rq_failed_path_normalization"); n != 1 {
		t.Errorf("downstream_rq_failed_path_normalization = %d", n)
	}
	if len(up.reqs) != 0 {
		t.Error("the rejected request reached the upstream")
	}
}

// No matching route: the router answers 404 (no_route). A route to a
// cluster that does not exist: 503.
func TestHTTPNoRouteAndNoCluster(t *testing.T) {
	rc := routeTo(t, "upstream", time.Second)
	rc.VirtualHosts[0].Routes[0].Match = &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/only"}}
	hs := setupHTTP(t, nil, "", "", rc, routerHTTPFilter(t))
	if resp, _ := do(t, newReq(t, http.MethodGet, hs.url("/other"), "")); resp.StatusCode != http.StatusNotFound {
		t.Errorf("no route: %d", resp.StatusCode)
	}
	if resp, _ := do(t, newReq(t, http.MethodGet, hs.url("/only"), "")); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("no cluster: %d", resp.StatusCode)
	}
	if hs.sim.Stats().Get("http.api.no_route") != 1 {
		t.Error("no_route not counted")
	}
}

// The route timeout runs from the end of the request to the end of the
// response: 504 "upstream request timeout". A refused connection: 503.
func TestHTTPRouteTimeoutAndConnectFailure(t *testing.T) {
	release := make(chan struct{})
	up := startHTTPUpstream(t, nil, func(w http.ResponseWriter, r *http.Request, _ string) { <-release })
	defer close(release)
	hs := setupHTTP(t, up, "", "", routeTo(t, "upstream", 150*time.Millisecond), routerHTTPFilter(t))
	start := time.Now()
	resp, body := do(t, newReq(t, http.MethodGet, hs.url("/slow"), ""))
	if resp.StatusCode != http.StatusGatewayTimeout || body != "upstream request timeout" || time.Since(start) < 150*time.Millisecond {
		t.Errorf("timeout: %d %q after %v", resp.StatusCode, body, time.Since(start))
	}
	if hs.sim.Stats().Get("cluster.upstream.upstream_rq_timeout") != 1 {
		t.Error("upstream_rq_timeout not counted")
	}

	if err := hs.sim.Apply([]*listenerv3.Listener{hcmListener(t, "api", routerHTTPFilter(t))},
		[]*clusterv3.Cluster{staticCluster(t, "upstream", freeAddr(t), false)}, nil); err != nil {
		t.Fatal(err)
	}
	resp, body = do(t, newReq(t, http.MethodGet, hs.url("/"), ""))
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.HasPrefix(body, "upstream connect error or disconnect/reset before headers. reset reason: connection failure") {
		t.Errorf("connect failure: %d %q", resp.StatusCode, body)
	}
	if hs.sim.Stats().Get("cluster.upstream.upstream_cx_connect_fail") != 1 {
		t.Error("upstream_cx_connect_fail not counted")
	}
}

// An https upstream as sluice configures it: SNI, the chain verified against
// the trusted CA and the name against the SAN matcher (not against SNI). A
// SAN that does not match fails the connection: 503.
func TestHTTPSUpstreamSNIAndVerification(t *testing.T) {
	sni := make(chan string, 10)
	up := startHTTPUpstream(t, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sni <- h.ServerName
		return nil, nil
	}}, okHandler(`{"ok":true}`))
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.srv.Certificate().Raw})
	cluster := func(san string) *clusterv3.Cluster {
		c := staticCluster(t, "upstream", up.addr(), false)
		c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{
			TypedConfig: typed(t, &tlsv3.UpstreamTlsContext{Sni: "kubernetes.default.svc", CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: ca}},
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_DNS,
						Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: san}}}},
				}},
			}})}}
		return c
	}
	hs := setupHTTP(t, nil, "", "", nil, routerHTTPFilter(t))
	apply := func(san string) {
		if err := hs.sim.Apply([]*listenerv3.Listener{hcmListener(t, "api", routerHTTPFilter(t))}, []*clusterv3.Cluster{cluster(san)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	apply("example.com") // httptest's certificate names example.com
	resp, body := do(t, newReq(t, http.MethodGet, hs.url("/version"), ""))
	if resp.StatusCode != http.StatusOK || body != `{"ok":true}` {
		t.Fatalf("https upstream: %d %q", resp.StatusCode, body)
	}
	if got := <-sni; got != "kubernetes.default.svc" {
		t.Errorf("SNI %q", got)
	}
	if r := up.next(t); r.host != "api.upstream.test" {
		t.Errorf("upstream host %q", r.host)
	}
	apply("kubernetes.default.svc")
	resp, body = do(t, newReq(t, http.MethodGet, hs.url("/version"), ""))
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "connection failure") {
		t.Errorf("SAN mismatch: %d %q", resp.StatusCode, body)
	}
}

// Keep-alive: requests share the downstream connection (one HCM connection,
// one net/http server).
func TestHTTPKeepAlive(t *testing.T) {
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, "", "", nil, routerHTTPFilter(t))
	c := &http.Client{Timeout: testTimeout}
	for i := 0; i < 3; i++ {
		resp, err := c.Get(hs.url("/"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	c.CloseIdleConnections()
	if n := hs.sim.Stats().Get("http.api.downstream_cx_total"); n != 1 {
		t.Errorf("downstream_cx_total = %d, want 1", n)
	}
	if n := hs.sim.Stats().Get("http.api.downstream_rq_total"); n != 3 {
		t.Errorf("downstream_rq_total = %d, want 3", n)
	}
}

// HTTP/2 in cleartext (codec AUTO, prior knowledge): ext_authz sees
// protocol HTTP/2; the upstream is still HTTP/1.1.
func TestHTTPDownstreamH2C(t *testing.T) {
	a, authzAddr := startAuthorizer(t, okCheck(nil))
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, authzAddr, "", nil, authzHTTPFilter(t, authzHTTPConfig("authz")), routerHTTPFilter(t))
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	c := &http.Client{Timeout: testTimeout, Transport: &http.Transport{Protocols: &p}}
	resp, err := c.Post(hs.url("/x"), "text/plain", strings.NewReader("body"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("status %d over %s", resp.StatusCode, resp.Proto)
	}
	if p := recvCheck(t, a).GetAttributes().GetRequest().GetHttp().GetProtocol(); p != "HTTP/2" {
		t.Errorf("protocol %q", p)
	}
	if r := up.next(t); r.body != "body" {
		t.Errorf("upstream saw %+v", r)
	}
}

// A local reply while the request body is still arriving ends the stream
// without waiting for the rest of the body (and without hanging the sim).
func TestHTTPLocalReplyDuringRequestBody(t *testing.T) {
	_, authzAddr := startAuthorizer(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: 7}}, nil
	})
	hs := setupHTTP(t, nil, authzAddr, "", nil, authzHTTPFilter(t, authzHTTPConfig("authz")), routerHTTPFilter(t))
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte("first part of a body that never ends")) }()
	req := newReq(t, http.MethodPost, hs.url("/upload"), "")
	req.Body = pr
	c := &http.Client{Timeout: testTimeout}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status %d", resp.StatusCode)
	}
	if l := hs.log(t); l.ResponseCode != http.StatusForbidden {
		t.Errorf("stream log %+v", l)
	}
}

// Without upgrade_configs HCM refuses an upgrade (Kubernetes exec and attach
// upgrade to SPDY, port-forward to WebSocket) with 403 before any filter
// forwards it.
func TestHTTPUpgradeRefused(t *testing.T) {
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, "", "", nil, routerHTTPFilter(t))
	req := newReq(t, http.MethodPost, hs.url("/api/v1/namespaces/default/pods/p/exec?command=sh"), "")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	resp, _ := do(t, req)
	if resp.StatusCode != http.StatusForbidden || len(up.reqs) != 0 {
		t.Errorf("status %d, %d upstream requests", resp.StatusCode, len(up.reqs))
	}
	if hs.sim.Stats().Get("http.api.downstream_rq_ws_on_non_ws_route") != 1 {
		t.Error("downstream_rq_ws_on_non_ws_route not counted")
	}
}
