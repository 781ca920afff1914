package envoysim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/xds"
)

const examplesDir = "../../../policies/examples"

// loadExample loads a sluice config with every listener on 127.0.0.1 and a
// free port.
func loadExample(t *testing.T, path string) *policies.Config {
	t.Helper()
	cfg, err := policies.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Envoy.ListenAddress = "127.0.0.1"
	for i := range cfg.Targets {
		cfg.Targets[i].Port = 0
	}
	return cfg
}

// serveSluice translates cfg with sluice's translator, serves it from a
// go-control-plane snapshot over ADS and connects a sim, which must accept
// every type without a NACK.
func serveSluice(t *testing.T, cfg *policies.Config, opts ...Option) (*Sim, *adsServer) {
	t.Helper()
	res, err := xds.Translate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := res.Snapshot("v1")
	if err != nil {
		t.Fatal(err)
	}
	ads := startADS(t)
	if err := ads.cache.SetSnapshot(context.Background(), "node-1", snap); err != nil {
		t.Fatal(err)
	}
	s := newSim(t, append([]Option{WithNode(&corev3.Node{Id: "node-1"})}, opts...)...)
	if err := s.ConnectADS(ads.addr); err != nil {
		t.Fatal(err)
	}
	types := []string{ClusterType, ListenerType}
	if len(res.Routes) > 0 {
		types = append(types, RouteType)
	}
	if len(res.Secrets) > 0 {
		types = append(types, SecretType)
	}
	err = s.WaitFor(ctxT(t), func() bool {
		for _, typ := range types {
			if s.XDS(typ).AcceptedVersion != "v1" {
				return false
			}
		}
		for _, l := range res.Listeners {
			if s.ListenerAddr(l.GetName()) == "" {
				return false
			}
		}
		return true
	})
	for _, typ := range []string{ClusterType, ListenerType, RouteType, SecretType} {
		if st := s.XDS(typ); st.NACKs != 0 {
			t.Errorf("%s NACKed: %s", typ, st.LastNACK)
		}
	}
	if err != nil {
		t.Fatalf("not accepted: %v", err)
	}
	return s, ads
}

// The HTTP examples, translated by sluice, are accepted with zero NACKs, and
// the sim subscribes in Envoy's order: CDS, then LDS, then RDS for the route
// configuration the HCM names.
func TestSluiceHTTPExamplesAccepted(t *testing.T) {
	for _, ex := range []string{"http-api-key.yaml", "http-kubernetes.yaml"} {
		t.Run(ex, func(t *testing.T) {
			cfg := loadExample(t, filepath.Join(examplesDir, ex))
			_, ads := serveSluice(t, cfg)
			ads.mu.Lock()
			defer ads.mu.Unlock()
			first := map[string]int{}
			for i, r := range ads.reqs {
				if _, ok := first[r.GetTypeUrl()]; !ok {
					first[r.GetTypeUrl()] = i
				}
				if r.GetTypeUrl() == RouteType && !slices.Equal(r.GetResourceNames(), []string{xds.RouteName(cfg.Targets[0].Name)}) {
					t.Errorf("RDS subscription %v", r.GetResourceNames())
				}
			}
			if !(first[ClusterType] < first[ListenerType] && first[ListenerType] < first[RouteType]) {
				t.Errorf("subscription order %v", first)
			}
		})
	}
}

// Every config sluice's golden tests translate (the examples and
// xds/testdata/configs: HTTPS upstreams by IP and by name, system trust store,
// upstream client certificates, Postgres targets) is accepted too.
func TestSluiceConfigsAccepted(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(examplesDir, "*.yaml"))
	more, _ := filepath.Glob("../../../xds/testdata/configs/*.yaml")
	for _, p := range append(paths, more...) {
		t.Run(filepath.Base(p), func(t *testing.T) {
			serveSluice(t, loadExample(t, p))
		})
	}
}

// http-api-key end to end: sluice's listener, routes and clusters, a scripted
// authorizer that injects the service's key the portable way, a processor
// that passes everything, a real upstream.
func TestSluiceHTTPAPIKeyEndToEnd(t *testing.T) {
	a, authzAddr := startAuthorizer(t, okCheck(&authv3.OkHttpResponse{
		Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-api-key", Value: "service-key"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}},
		HeadersToRemove: []string{"authorization"},
	}))
	proc, procAddr := startHTTPProcessor(t, httpRespond(passThrough))
	up := startHTTPUpstream(t, nil, chunkedUpstream(`{"contacts":[]}`))
	cfg := loadExample(t, filepath.Join(examplesDir, "http-api-key.yaml"))
	cfg.Server.Authz, cfg.Server.ExtProc = authzAddr, procAddr
	cfg.Targets[0].Upstream = "http://" + up.addr()
	s, _ := serveSluice(t, cfg)
	req := newReq(t, http.MethodGet, "http://"+s.ListenerAddr("crm-api")+"/v1/contacts", "")
	req.Header.Set("Authorization", "Bearer agent-token")
	resp, body := do(t, req)
	if resp.StatusCode != http.StatusOK || body != `{"contacts":[]}` {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	if ce := recvCheck(t, a).GetAttributes().GetContextExtensions(); ce[xds.ContextExtensionTarget] != "crm-api" {
		t.Errorf("context_extensions %v", ce)
	}
	got := up.next(t)
	if got.header.Get("X-Api-Key") != "service-key" || got.header.Get("Authorization") != "" || got.host != up.addr() {
		t.Errorf("upstream saw %+v", got)
	}
	<-proc.ended
	if k := drainKinds(proc); len(k) < 3 || k[0] != "request_headers" || k[1] != "response_headers" {
		t.Errorf("processor saw %q", k) // a GET has no body: no request_body message
	}
	s.RequireNoViolations(t)
}

// http-kubernetes end to end: the agent speaks TLS (HTTP/2 by ALPN) to the
// listener with the SDS certificate; the upstream is verified against the
// SDS CA and the SAN matcher (upstream_sni set to the example certificate's
// name, which the example's own kubernetes.default.svc is not).
func TestSluiceHTTPKubernetesTLSEndToEnd(t *testing.T) {
	_, authzAddr := startAuthorizer(t, okCheck(nil))
	_, procAddr := startHTTPProcessor(t, httpRespond(passThrough))
	cert, err := tls.LoadX509KeyPair(filepath.Join(examplesDir, "certs/demo-server.crt"), filepath.Join(examplesDir, "certs/demo-server.key"))
	if err != nil {
		t.Fatal(err)
	}
	sni := make(chan string, 1)
	up := startHTTPUpstream(t, &tls.Config{Certificates: []tls.Certificate{cert}, GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sni <- h.ServerName
		return nil, nil
	}}, okHandler(`{"kind":"PodList"}`))
	cfg := loadExample(t, filepath.Join(examplesDir, "http-kubernetes.yaml"))
	cfg.Server.Authz, cfg.Server.ExtProc = authzAddr, procAddr
	cfg.Targets[0].Upstream = "https://" + up.addr()
	cfg.Targets[0].UpstreamSNI = "localhost"
	s, _ := serveSluice(t, cfg)

	ca, err := os.ReadFile(filepath.Join(examplesDir, "certs/demo-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	c := &http.Client{Timeout: testTimeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}, ForceAttemptHTTP2: true,
	}}
	resp, err := c.Get("https://" + s.ListenerAddr("cluster-api") + "/api/v1/namespaces/default/pods")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("status %d over %s", resp.StatusCode, resp.Proto)
	}
	if got := <-sni; got != "localhost" {
		t.Errorf("upstream SNI %q", got)
	}
	if r := up.next(t); r.uri != "/api/v1/namespaces/default/pods" || r.header.Get("X-Forwarded-Proto") != "https" {
		t.Errorf("upstream saw %+v", r)
	}
	s.RequireNoViolations(t)
}
