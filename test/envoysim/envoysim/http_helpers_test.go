package envoysim

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// --- HTTP config builders ------------------------------------------------

func httpFilter(t testing.TB, name string, m proto.Message) *hcmv3.HttpFilter {
	t.Helper()
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(t, m)}}
}

func routerHTTPFilter(t testing.TB) *hcmv3.HttpFilter {
	return httpFilter(t, "envoy.filters.http.router", &routerv3.Router{})
}

func authzHTTPFilter(t testing.TB, cfg *httpauthzv3.ExtAuthz) *hcmv3.HttpFilter {
	return httpFilter(t, "envoy.filters.http.ext_authz", cfg)
}

func procHTTPFilter(t testing.TB, cfg *httpextprocv3.ExternalProcessor) *hcmv3.HttpFilter {
	return httpFilter(t, "envoy.filters.http.ext_proc", cfg)
}

func authzHTTPConfig(cluster string) *httpauthzv3.ExtAuthz {
	return &httpauthzv3.ExtAuthz{
		Services:            &httpauthzv3.ExtAuthz_GrpcService{GrpcService: grpcService(cluster)},
		TransportApiVersion: corev3.ApiVersion_V3,
	}
}

// sluiceMode is the processing mode sluice's translator emits.
func sluiceMode() *httpextprocv3.ProcessingMode {
	return &httpextprocv3.ProcessingMode{
		RequestHeaderMode: httpextprocv3.ProcessingMode_SEND, ResponseHeaderMode: httpextprocv3.ProcessingMode_SEND,
		RequestBodyMode: httpextprocv3.ProcessingMode_BUFFERED, ResponseBodyMode: httpextprocv3.ProcessingMode_STREAMED,
		RequestTrailerMode: httpextprocv3.ProcessingMode_SKIP, ResponseTrailerMode: httpextprocv3.ProcessingMode_SKIP,
	}
}

func procHTTPConfig(cluster string) *httpextprocv3.ExternalProcessor {
	return &httpextprocv3.ExternalProcessor{
		GrpcService: grpcService(cluster), ProcessingMode: sluiceMode(), MessageTimeout: durationpb.New(2 * time.Second),
		MetadataOptions: &httpextprocv3.MetadataOptions{ForwardingNamespaces: &httpextprocv3.MetadataOptions_MetadataNamespaces{
			Untyped: []string{httpExtAuthzNamespace}}},
	}
}

// hcmListener is a listener on 127.0.0.1:0 with an HCM that takes its routes
// from RDS route configuration "routes".
func hcmListener(t testing.TB, name string, filters ...*hcmv3.HttpFilter) *listenerv3.Listener {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
			RouteConfigName: "routes",
		}},
		HttpFilters:                  filters,
		UseRemoteAddress:             wrapperspb.Bool(true),
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
	}
	return tcpListener(t, name, netFilter(t, "envoy.filters.network.http_connection_manager", hcm))
}

// routeTo is route configuration "routes": everything to cluster, with the
// target in ext_authz's context_extensions, as sluice emits it.
func routeTo(t testing.TB, cluster string, timeout time.Duration) *routev3.RouteConfiguration {
	t.Helper()
	return &routev3.RouteConfiguration{Name: "routes", VirtualHosts: []*routev3.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Name:  "all",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier:     &routev3.RouteAction_Cluster{Cluster: cluster},
				HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "api.upstream.test"},
				Timeout:              durationpb.New(timeout),
			}},
			TypedPerFilterConfig: map[string]*anypb.Any{"envoy.filters.http.ext_authz": typed(t, &httpauthzv3.ExtAuthzPerRoute{
				Override: &httpauthzv3.ExtAuthzPerRoute_CheckSettings{CheckSettings: &httpauthzv3.CheckSettings{
					ContextExtensions: map[string]string{"target": "crm-api"}}}})},
		}},
	}}}
}

// --- upstream HTTP servers -----------------------------------------------

// seenRequest is what an upstream received.
type seenRequest struct {
	method, uri, host string
	header            http.Header
	body              string
}

type httpUpstream struct {
	srv  *httptest.Server
	reqs chan seenRequest
}

// startHTTPUpstream serves handle after recording each request (body read),
// over TLS (httptest's certificate) when tlsCfg is not nil.
func startHTTPUpstream(t *testing.T, tlsCfg *tls.Config, handle func(w http.ResponseWriter, r *http.Request, body string)) *httpUpstream {
	t.Helper()
	u := &httpUpstream{reqs: make(chan seenRequest, 100)}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		u.reqs <- seenRequest{method: r.Method, uri: r.RequestURI, host: r.Host, header: r.Header.Clone(), body: string(b)}
		handle(w, r, string(b))
	})
	u.srv = httptest.NewUnstartedServer(h)
	u.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are the point of some tests
	if tlsCfg != nil {
		u.srv.TLS = tlsCfg
		u.srv.StartTLS()
	} else {
		u.srv.Start()
	}
	t.Cleanup(u.srv.Close)
	return u
}

func (u *httpUpstream) addr() string { return u.srv.Listener.Addr().String() }

func (u *httpUpstream) next(t *testing.T) seenRequest {
	t.Helper()
	select {
	case r := <-u.reqs:
		return r
	case <-time.After(testTimeout):
		t.Fatal("upstream received no request")
	}
	return seenRequest{}
}

func okHandler(body string) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, _ *http.Request, _ string) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}
}

// --- scripted HTTP ext_proc processors ----------------------------------

// httpProcScript handles one Process stream; returning errOKClose ends it
// with status OK.
type httpProcScript func(ctx context.Context, recv <-chan *extprocv3.ProcessingRequest, send func(*extprocv3.ProcessingResponse) error) error

type httpProcessor struct {
	extprocv3.UnimplementedExternalProcessorServer
	script httpProcScript
	reqs   chan *extprocv3.ProcessingRequest
	ended  chan struct{}
}

func (p *httpProcessor) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	defer func() { p.ended <- struct{}{} }()
	recv := make(chan *extprocv3.ProcessingRequest, 100)
	go func() {
		defer close(recv)
		for {
			req, err := stream.Recv()
			if err != nil {
				return
			}
			p.reqs <- req
			recv <- req
		}
	}()
	var mu sync.Mutex
	send := func(r *extprocv3.ProcessingResponse) error {
		mu.Lock()
		defer mu.Unlock()
		return stream.Send(r)
	}
	err := p.script(stream.Context(), recv, send)
	if errors.Is(err, errOKClose) {
		return nil
	}
	return err
}

func startHTTPProcessor(t *testing.T, script httpProcScript) (*httpProcessor, string) {
	t.Helper()
	p := &httpProcessor{script: script, reqs: make(chan *extprocv3.ProcessingRequest, 1000), ended: make(chan struct{}, 100)}
	g := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(g, p)
	return p, serveGRPC(t, g)
}

// httpRespond answers each request with what reply returns.
func httpRespond(reply func(*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse) httpProcScript {
	return func(ctx context.Context, recv <-chan *extprocv3.ProcessingRequest, send func(*extprocv3.ProcessingResponse) error) error {
		for req := range recv {
			for _, r := range reply(req) {
				if err := send(r); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

// passThrough answers every message with an empty response of its type.
func passThrough(req *extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
	return []*extprocv3.ProcessingResponse{answerOf(req, &extprocv3.CommonResponse{})}
}

// answerOf is the response of req's type carrying common.
func answerOf(req *extprocv3.ProcessingRequest, common *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: common}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: common}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: common}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: common}}}
	}
	return &extprocv3.ProcessingResponse{}
}

// kind names a ProcessingRequest for assertions: "request_headers", ...
func kind(req *extprocv3.ProcessingRequest) string {
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return "request_headers"
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return "response_headers"
	case *extprocv3.ProcessingRequest_RequestBody:
		return "request_body(" + string(r.RequestBody.GetBody()) + ")" + eos(r.RequestBody.GetEndOfStream())
	case *extprocv3.ProcessingRequest_ResponseBody:
		return "response_body(" + string(r.ResponseBody.GetBody()) + ")" + eos(r.ResponseBody.GetEndOfStream())
	}
	return "?"
}

func eos(b bool) string {
	if b {
		return " eos"
	}
	return ""
}

func drainKinds(p *httpProcessor) []string {
	var out []string
	for len(p.reqs) > 0 {
		out = append(out, kind(<-p.reqs))
	}
	return out
}

func headerOf(hm *corev3.HeaderMap, key string) (string, bool) {
	for _, h := range hm.GetHeaders() {
		if h.GetKey() == key {
			return string(h.GetRawValue()), true
		}
	}
	return "", false
}

func setHeader(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, RawValue: []byte(value)}}
}

// --- a whole HTTP setup --------------------------------------------------

type httpSetup struct {
	sim  *Sim
	up   *httpUpstream
	addr string
	logs chan HTTPStreamInfo
}

// setupHTTP applies clusters "upstream" (the given server), "authz" and
// "processor" (when their addresses are set), the listener "api" with filters
// and the route configuration.
func setupHTTP(t *testing.T, up *httpUpstream, authzAddr, procAddr string, rc *routev3.RouteConfiguration, filters ...*hcmv3.HttpFilter) *httpSetup {
	t.Helper()
	hs := &httpSetup{up: up, logs: make(chan HTTPStreamInfo, 100)}
	hs.sim = newSim(t, WithHTTPLog(func(i HTTPStreamInfo) { hs.logs <- i }))
	clusters := []*clusterv3.Cluster{}
	if up != nil {
		clusters = append(clusters, staticCluster(t, "upstream", up.addr(), false))
	}
	if authzAddr != "" {
		clusters = append(clusters, staticCluster(t, "authz", authzAddr, true))
	}
	if procAddr != "" {
		clusters = append(clusters, staticCluster(t, "processor", procAddr, true))
	}
	if rc == nil {
		rc = routeTo(t, "upstream", 10*time.Second)
	}
	if err := hs.sim.ApplyRoutes([]*routev3.RouteConfiguration{rc}); err != nil {
		t.Fatal(err)
	}
	if err := hs.sim.Apply([]*listenerv3.Listener{hcmListener(t, "api", filters...)}, clusters, nil); err != nil {
		t.Fatal(err)
	}
	hs.addr = hs.sim.ListenerAddr("api")
	if hs.addr == "" {
		t.Fatal("listener api is not active")
	}
	return hs
}

func (hs *httpSetup) url(path string) string { return "http://" + hs.addr + path }

// do sends a request with a fresh client and returns the response and body.
func do(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	c := &http.Client{Timeout: testTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the response body: %v", err)
	}
	return resp, string(b)
}

func newReq(t *testing.T, method, url, body string) *http.Request {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func (hs *httpSetup) log(t *testing.T) HTTPStreamInfo {
	t.Helper()
	select {
	case i := <-hs.logs:
		return i
	case <-time.After(testTimeout):
		t.Fatal("no HTTP stream ended")
	}
	return HTTPStreamInfo{}
}

// freeAddr is an address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
