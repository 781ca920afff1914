package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/extproc"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/envoysim/envoysim"
	"github.com/sluicehq/sluice/test/testenv"
	"github.com/sluicehq/sluice/xds"
)

// TestHTTPLatencyRatios measures, in one run, the latency of one HTTP
// request at a time to a TLS Kubernetes-like API server written here, on
// these paths (issue 7 item 5; BENCHMARKS.md "HTTP path"):
//
//   - (a) direct: Go's http.Client to the upstream over TLS (the test CA),
//     keep-alive;
//   - (b) envoysim: the stand-in with sluice's own listener, route and
//     upstream cluster (TLS, CA and SAN check from SDS) but only the
//     router in the HTTP connection manager: no ext_authz, no ext_proc;
//   - (c) sluice: the stand-in configured over ADS by sluice's xDS server,
//     with sluice's ext_authz and HTTP ext_proc servers, wired as
//     startHTTPPath wires them (audit events counted in memory);
//   - (d) sluice-sqlite: (c) with the durable SQLite audit store, which
//     the request record waits for before the response moves on.
//
// Each path is measured on four reads: a small ConfigMap on a target with
// no masking policy (no response body goes to sluice), the same on the
// masked target (the body is scanned, nothing is masked), a Secret (data
// masked) and a 100-item PodList (env values and e-mail addresses
// masked).
//
// Requests are sequential on one keep-alive connection per path, after a
// warm-up. The rounds interleave the paths, so that drift in the machine's
// load falls on every path alike; ratios are to the same round's direct
// run, and the table gives their median and range over the rounds.
//
// It is a load run, not a check, so it is skipped unless
// SLUICE_HTTP_BENCH=1. SLUICE_HTTP_BENCH_REQUESTS (default 2000) is the
// number of timed requests per path and read, split over
// SLUICE_HTTP_BENCH_ROUNDS (default 4) rounds; SLUICE_HTTP_BENCH_WARMUP
// (default 200) the untimed requests before them; and
// SLUICE_HTTP_BENCH_CPUPROFILE a file name prefix: after the timed runs,
// each path and read is profiled over SLUICE_HTTP_BENCH_PROFILE_SECONDS
// (default 3) more of requests (PREFIX.PATH.READ).
// The profiles carry a "component" label (client, upstream, envoysim,
// sluice-authz, sluice-extproc, sluice-xds): `go tool pprof -tags FILE`
// splits the CPU between them. Run with -v for the tables:
//
//	SLUICE_HTTP_BENCH=1 go test ./test/e2e/ -run TestHTTPLatencyRatios -count 1 -v
func TestHTTPLatencyRatios(t *testing.T) {
	if os.Getenv("SLUICE_HTTP_BENCH") != "1" {
		t.Skip("a latency run of about 90 seconds: set SLUICE_HTTP_BENCH=1 to run it")
	}
	requests := httpBenchEnvInt(t, "SLUICE_HTTP_BENCH_REQUESTS", 2000, 10_000_000)
	rounds := httpBenchEnvInt(t, "SLUICE_HTTP_BENCH_ROUNDS", 4, 1000)
	warmup := httpBenchEnvInt(t, "SLUICE_HTTP_BENCH_WARMUP", 200, 10_000_000)
	perRound := (requests + rounds - 1) / rounds

	up := startHTTPBenchUpstream(t)
	var idp *testenv.OIDCProvider
	httpBenchLabel("idp", func() { idp = testenv.StartOIDC(t) })
	idp.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents"}})
	t.Setenv("SLUICE_E2E_K8S_TOKEN", upstreamToken)

	mem := startHTTPBenchSluice(t, up, idp, "")
	durable := startHTTPBenchSluice(t, up, idp, "sqlite://"+filepath.Join(t.TempDir(), "audit.db"))
	bareSim, bareBase := startHTTPBenchBare(t, mem.cfg)

	direct := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: up.pool, ServerName: "example.com"}, DisableCompression: true,
		MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Hour,
	}}
	plain := func() *http.Client {
		return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Hour}}
	}
	agentToken := idp.Token(t, "agent-1")
	paths := []*httpBenchPath{
		{key: "direct", name: "(a) direct to the TLS upstream", client: direct, token: func() string { return upstreamToken },
			url: func(c httpBenchCase) string { return up.srv.URL + c.path }},
		{key: "envoysim", name: "(b) envoysim, router only", client: plain(), token: func() string { return upstreamToken },
			url: func(c httpBenchCase) string { return bareBase + c.path }},
		{key: "sluice", name: "(c) envoysim + sluice, audit in memory", client: plain(), token: func() string { return agentToken },
			url: func(c httpBenchCase) string { return mem.base[c.target] + c.path }, stack: mem},
		{key: "sluice-sqlite", name: "(d) (c) with the SQLite audit store", client: plain(), token: func() string { return agentToken },
			url: func(c httpBenchCase) string { return durable.base[c.target] + c.path }, stack: durable},
	}
	cases := []httpBenchCase{
		{key: "small", what: fmt.Sprintf("ConfigMap, %d B, target without masking", len(up.bodies[httpBenchConfigMapPath])),
			path: httpBenchConfigMapPath, target: "plain-api"},
		{key: "small-scanned", what: fmt.Sprintf("ConfigMap, %d B, target with masking (scanned, nothing masked)", len(up.bodies[httpBenchConfigMapPath])),
			path: httpBenchConfigMapPath, target: "cluster-api"},
		{key: "secret", what: fmt.Sprintf("Secret, %d B, data masked", len(up.bodies[httpBenchSecretPath])),
			path: httpBenchSecretPath, target: "cluster-api", masked: true},
		{key: "podlist-100", what: fmt.Sprintf("PodList of 100, %d KB, env values and e-mails masked", len(up.bodies[httpBenchPodsPath])>>10),
			path: httpBenchPodsPath, target: "cluster-api", masked: true},
	}

	t.Logf("machine: %s; GOMAXPROCS %d; %s; before: %s", httpBenchCPUModel(), runtime.GOMAXPROCS(0), runtime.Version(), httpBenchLoad())
	t.Logf("%d timed requests per path and read in %d interleaved rounds of %d, after %d warm-up requests", perRound*rounds, rounds, perRound, warmup)

	// results[path][case] collects every round.
	results := make([][]*httpBenchSeries, len(paths))
	for i := range paths {
		results[i] = make([]*httpBenchSeries, len(cases))
		for j := range cases {
			results[i][j] = &httpBenchSeries{}
		}
	}
	httpBenchLabel("client", func() {
		// Each response is checked once, then each path warms up.
		for _, p := range paths {
			for _, c := range cases {
				p.check(t, c, up.bodies[c.path])
				p.run(t, c, warmup)
			}
		}
		for round := range rounds {
			agentToken = idp.Token(t, "agent-1") // tokens live 5 minutes
			for _, p := range paths {
				for _, c := range cases {
					p.run(t, c, 1) // the new token, verified once, untimed
				}
			}
			for j, c := range cases {
				for k := range paths {
					i := (k + round) % len(paths) // each round starts on another path
					r := paths[i].run(t, c, perRound)
					results[i][j].rounds = append(results[i][j].rounds, r)
				}
			}
			t.Logf("round %d of %d done: %s", round+1, rounds, httpBenchLoad())
		}
	})
	t.Logf("after: %s", httpBenchLoad())

	t.Log("\n" + httpBenchTable(paths, cases, results))

	// Every exchange through (c) was recorded; the upstream connections
	// were reused.
	if got, want := mem.sink.requests.Load(), paths[slices.IndexFunc(paths, func(p *httpBenchPath) bool { return p.stack == mem })].sent; got != want {
		t.Errorf("sluice recorded %d http.request events for %d requests", got, want)
	}
	for _, s := range []struct {
		name string
		sim  *envoysim.Sim
	}{{"envoysim", bareSim}, {"sluice", mem.sim}, {"sluice-sqlite", durable.sim}} {
		s.sim.RequireNoViolations(t)
		t.Logf("%s: upstream connections opened %d", s.name, s.sim.Stats().Get("cluster.cluster-api.upstream_cx_total")+
			s.sim.Stats().Get("cluster.plain-api.upstream_cx_total"))
	}

	if prefix := os.Getenv("SLUICE_HTTP_BENCH_CPUPROFILE"); prefix != "" {
		profileSeconds := httpBenchEnvInt(t, "SLUICE_HTTP_BENCH_PROFILE_SECONDS", 3, 3600)
		httpBenchLabel("client", func() {
			for _, p := range paths {
				for _, c := range cases {
					name := prefix + "." + p.key + "." + c.key
					f, err := os.Create(name)
					if err != nil {
						t.Fatal(err)
					}
					if err := pprof.StartCPUProfile(f); err != nil {
						t.Fatal(err)
					}
					// Batches of 50 for about profileSeconds: enough samples
					// (100 a second) on the fast paths too.
					var r httpBenchRun
					for start := time.Now(); time.Since(start) < time.Duration(profileSeconds)*time.Second; {
						b := p.run(t, c, 50)
						r.lat, r.cpu = append(r.lat, b.lat...), r.cpu+b.cpu
					}
					pprof.StopCPUProfile()
					f.Close()
					t.Logf("profiled %s %s: %d requests, mean %.0f µs, CPU %.0f µs/request: %s", p.key, c.key, len(r.lat),
						float64(r.mean())/1e3, float64(r.cpu)/1e3/float64(len(r.lat)), name)
				}
			}
		})
	}
}

// --- the upstream --------------------------------------------------------

const (
	httpBenchConfigMapPath = "/api/v1/namespaces/default/configmaps/flags"
	httpBenchSecretPath    = "/api/v1/namespaces/default/secrets/db"
	httpBenchPodsPath      = "/api/v1/namespaces/default/pods"
)

// httpBenchSecrets must never reach the agent through sluice.
var httpBenchSecrets = []string{"c3VwZXJzZWNyZXQ=", "supersecret", "hunter2-db-password", "ops@example.com", upstreamToken}

type httpBenchUpstream struct {
	srv    *httptest.Server
	caFile string
	pool   *x509.CertPool
	bodies map[string][]byte // path → the body served
}

// startHTTPBenchUpstream is a Kubernetes-like API server over TLS that
// serves three pre-encoded objects, so that its own cost is small and the
// same on every path.
func startHTTPBenchUpstream(t *testing.T) *httpBenchUpstream {
	t.Helper()
	enc := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pod := func(i int) map[string]any {
		return map[string]any{
			"metadata": map[string]any{
				"name": fmt.Sprintf("web-7d9f8c6b5-x%04d", i), "namespace": "default",
				"uid": fmt.Sprintf("6f1c2a4e-%04d-4000-8000-000000000000", i), "resourceVersion": strconv.Itoa(100000 + i),
				"creationTimestamp": "2026-01-02T03:04:05Z",
				"labels":            map[string]string{"app": "web", "pod-template-hash": "7d9f8c6b5"},
				"annotations":       map[string]string{"owner": "ops@example.com", "prometheus.io/scrape": "true"},
			},
			"spec": map[string]any{
				"containers": []any{map[string]any{"name": "app", "image": "nginx:1.27",
					"ports": []any{map[string]any{"containerPort": 8080, "protocol": "TCP"}},
					"env": []any{map[string]any{"name": "DB_PASSWORD", "value": "hunter2-db-password"},
						map[string]any{"name": "LOG_LEVEL", "value": "info"}},
					"resources": map[string]any{"requests": map[string]string{"cpu": "250m", "memory": "256Mi"}}}},
				"nodeName": fmt.Sprintf("node-%d", i%9), "restartPolicy": "Always", "serviceAccountName": "web",
			},
			"status": map[string]any{"phase": "Running", "podIP": fmt.Sprintf("10.1.0.%d", i%250), "startTime": "2026-01-02T03:04:06Z"},
		}
	}
	items := make([]any, 100)
	for i := range items {
		items[i] = pod(i)
	}
	u := &httpBenchUpstream{bodies: map[string][]byte{
		httpBenchConfigMapPath: enc(map[string]any{"kind": "ConfigMap", "apiVersion": "v1",
			"metadata": map[string]any{"name": "flags", "namespace": "default", "resourceVersion": "42"},
			"data":     map[string]any{"LOG_LEVEL": "info", "FEATURE_X": "on"}}),
		httpBenchSecretPath: enc(map[string]any{"kind": "Secret", "apiVersion": "v1", "type": "Opaque",
			"metadata":   map[string]any{"name": "db", "namespace": "default", "resourceVersion": "43"},
			"data":       map[string]any{"password": "c3VwZXJzZWNyZXQ=", "username": "YXBw"},
			"stringData": map[string]any{"password": "supersecret"}}),
		httpBenchPodsPath: enc(map[string]any{"kind": "PodList", "apiVersion": "v1",
			"metadata": map[string]any{"resourceVersion": "999999"}, "items": items}),
	}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+upstreamToken {
			http.Error(w, `{"kind":"Status","code":401}`, http.StatusUnauthorized)
			return
		}
		b, ok := u.bodies[r.URL.Path]
		if r.Method != http.MethodGet || !ok {
			http.Error(w, `{"kind":"Status","code":404}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	})
	httpBenchLabel("upstream", func() { u.srv = httptest.NewTLSServer(h) })
	t.Cleanup(u.srv.Close)
	u.pool = x509.NewCertPool()
	u.pool.AddCert(u.srv.Certificate())
	u.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(u.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return u
}

// --- sluice, and the stand-in without it --------------------------------

// httpBenchConfig is startHTTPPath's configuration (http_test.go) with a
// second target on the same upstream whose policy masks nothing, so no
// response body goes to sluice on it.
const httpBenchConfig = `
server: { xds: %[1]s, authz: %[2]s, extproc: %[3]s, api: 127.0.0.1:%[4]d }
envoy: { node: e2e-http-bench, listen_address: 127.0.0.1 }
` + httpClusterAPI + `  - name: plain-api
    kind: http
    api: kubernetes
    port: %[9]d
    upstream: "https://127.0.0.1:%[7]s"
    upstream_ca_file: %[8]s
    upstream_sni: example.com
    request_timeout: 0s
    credentials: { bearer_env: SLUICE_E2E_K8S_TOKEN }
policies:
  - name: agents-on-cluster
    targets: [cluster-api]
    principals: { groups: [agents] }
    allow: [read]
    require_grant: [write]
    deny: [admin, ddl, unknown]
    mask: [k8s]
    http:
      - { methods: [DELETE], path: "/api/v1/namespaces/*/pods/*", class: admin }
  - name: agents-on-plain
    targets: [plain-api]
    principals: { groups: [agents] }
    allow: [read]
    require_grant: [write]
    deny: [admin, ddl, unknown]
masking:
  - name: k8s
    json_paths: ["$.spec.containers[*].env[*].value"]
    detectors: [email]
`

// httpBenchSluice is sluice's HTTP path on loopback, as startHTTPPath
// builds it: xDS, ext_authz and HTTP ext_proc servers, and envoysim
// configured over ADS.
type httpBenchSluice struct {
	cfg   *policies.Config
	sim   *envoysim.Sim
	base  map[string]string // target → http://listener
	sink  *httpBenchSink    // nil with a durable store
	times *httpBenchTimes
}

// startHTTPBenchSluice starts the path; auditURL "" counts audit events in
// memory, else they go to the store it names.
func startHTTPBenchSluice(t *testing.T, up *httpBenchUpstream, idp *testenv.OIDCProvider, auditURL string) *httpBenchSluice {
	t.Helper()
	xdsSrv, err := xds.NewServer(xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var xdsAddr string
	httpBenchLabel("sluice-xds", func() { xdsAddr = serveGRPC(t, xdsSrv.Register) })
	authzLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	procLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, upPort, _ := net.SplitHostPort(up.srv.Listener.Addr().String())
	yaml := fmt.Sprintf(httpBenchConfig, xdsAddr, authzLis.Addr(), procLis.Addr(), freePort(t), idp.Issuer, freePort(t), upPort, up.caFile, freePort(t))
	if auditURL != "" {
		yaml = fmt.Sprintf("audit: { store: %q }\n", auditURL) + yaml
	}
	cfg, err := policies.Load("e2e-http-bench.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	s := &httpBenchSluice{cfg: cfg, base: map[string]string{}, times: &httpBenchTimes{}}
	var sink audit.Sink
	if auditURL == "" {
		s.sink = &httpBenchSink{}
		sink = s.sink
	} else {
		store, err := audit.OpenConfig(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		sink = store
	}
	authzSrv, err := authz.NewServer(cfg, authz.Options{Grants: authz.GrantsFrom(grants.NewEmbeddedStore()), Audit: sink})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := extproc.NewHTTPServer(extproc.HTTPOptions{Config: cfg, Audit: sink})
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []struct {
		label string
		lis   net.Listener
		reg   func(*grpc.Server)
	}{{"sluice-authz", authzLis, authzSrv.Register}, {"sluice-extproc", procLis, proc.Register}} {
		httpBenchLabel(srv.label, func() {
			g := grpc.NewServer(grpc.UnaryInterceptor(s.times.unary), grpc.StreamInterceptor(s.times.stream))
			srv.reg(g)
			go g.Serve(srv.lis)
			t.Cleanup(g.Stop)
		})
	}
	if err := xdsSrv.Update(cfg); err != nil {
		t.Fatal(err)
	}
	httpBenchLabel("envoysim", func() {
		s.sim = envoysim.New(envoysim.WithNode(&corev3.Node{Id: "e2e-http-bench"}), envoysim.WithLogf(simLog(t)))
		err = s.sim.ConnectADS(xdsAddr)
	})
	t.Cleanup(func() { s.sim.Close() })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ready := func() bool { return s.sim.ListenerAddr("cluster-api") != "" && s.sim.ListenerAddr("plain-api") != "" }
	if err := s.sim.WaitFor(ctx, ready); err != nil {
		t.Fatal(err)
	}
	for _, tg := range []string{"cluster-api", "plain-api"} {
		s.base[tg] = "http://" + s.sim.ListenerAddr(tg)
	}
	return s
}

// startHTTPBenchBare starts a stand-in with sluice's listener, route,
// upstream cluster and secrets for cluster-api (xds.Translate of cfg), the
// HTTP connection manager keeping only the router and the route no
// ext_authz settings: the same upstream, TLS and proxy, without sluice.
// It returns the stand-in and its base URL.
func startHTTPBenchBare(t *testing.T, cfg *policies.Config) (*envoysim.Sim, string) {
	t.Helper()
	res, err := xds.Translate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	target := "cluster-api"
	var lis *listenerv3.Listener
	for _, l := range res.Listeners {
		if l.GetName() == xds.ListenerName(target) {
			lis = proto.Clone(l).(*listenerv3.Listener)
		}
	}
	var cluster *clusterv3.Cluster
	for _, c := range res.Clusters {
		if c.GetName() == xds.ClusterName(target) {
			cluster = c
		}
	}
	var route *routev3.RouteConfiguration
	for _, r := range res.Routes {
		if r.GetName() == xds.RouteName(target) {
			route = proto.Clone(r).(*routev3.RouteConfiguration)
		}
	}
	if lis == nil || cluster == nil || route == nil {
		t.Fatalf("xds.Translate: no listener, cluster or route for %s", target)
	}
	lis.Name = "bare"
	lis.GetAddress().GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 0}
	routers := 0
	for _, fc := range lis.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			hcm := &hcmv3.HttpConnectionManager{}
			if !f.GetTypedConfig().MessageIs(hcm) {
				continue
			}
			if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
				t.Fatal(err)
			}
			var keep []*hcmv3.HttpFilter
			for _, hf := range hcm.GetHttpFilters() {
				if hf.GetTypedConfig().MessageIs(&routerv3.Router{}) {
					keep = append(keep, hf)
					routers++
				}
			}
			hcm.HttpFilters = keep
			a, err := anypb.New(hcm)
			if err != nil {
				t.Fatal(err)
			}
			f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
		}
	}
	if routers != 1 {
		t.Fatalf("the translated listener has %d routers, want 1", routers)
	}
	for _, vh := range route.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			r.TypedPerFilterConfig = nil
		}
	}
	var sim *envoysim.Sim
	httpBenchLabel("envoysim", func() {
		sim = envoysim.New(envoysim.WithNode(&corev3.Node{Id: "e2e-http-bare"}), envoysim.WithLogf(simLog(t)))
		if err = sim.ApplyRoutes([]*routev3.RouteConfiguration{route}); err == nil {
			err = sim.Apply([]*listenerv3.Listener{lis}, []*clusterv3.Cluster{cluster}, res.Secrets)
		}
	})
	t.Cleanup(func() { sim.Close() })
	if err != nil {
		t.Fatal(err)
	}
	addr := sim.ListenerAddr("bare")
	if addr == "" {
		t.Fatal("the bare listener is not active")
	}
	return sim, "http://" + addr
}

// httpBenchSink counts audit events, as a stand-in for a store that
// answers at once.
type httpBenchSink struct {
	requests, others atomic.Int64
}

func (s *httpBenchSink) Append(_ context.Context, e audit.Event) error {
	if e.Kind == audit.KindHTTPRequest {
		s.requests.Add(1)
	} else {
		s.others.Add(1)
	}
	return nil
}

// httpBenchTimes times sluice's handlers from inside its gRPC servers:
// each Check, and for each ext_proc stream the time from each message's
// arrival to its answer's send (sluice's processing, audit waits
// included), summed over the stream.
type httpBenchTimes struct {
	mu    sync.Mutex
	check []time.Duration
	proc  []time.Duration
	msgs  int
}

func (h *httpBenchTimes) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	t0 := time.Now()
	resp, err := handler(ctx, req)
	d := time.Since(t0)
	h.mu.Lock()
	h.check = append(h.check, d)
	h.mu.Unlock()
	return resp, err
}

func (h *httpBenchTimes) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	w := &httpBenchStream{ServerStream: ss}
	err := handler(srv, w)
	h.mu.Lock()
	h.proc = append(h.proc, w.busy)
	h.msgs += w.msgs
	h.mu.Unlock()
	return err
}

// take returns what was timed since the last take.
func (h *httpBenchTimes) take() (check, proc []time.Duration, msgs int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	check, proc, msgs = h.check, h.proc, h.msgs
	h.check, h.proc, h.msgs = nil, nil, 0
	return check, proc, msgs
}

type httpBenchStream struct {
	grpc.ServerStream
	last time.Time
	busy time.Duration
	msgs int
}

func (w *httpBenchStream) RecvMsg(m any) error {
	err := w.ServerStream.RecvMsg(m)
	w.last = time.Now()
	if err == nil {
		w.msgs++
	}
	return err
}

func (w *httpBenchStream) SendMsg(m any) error {
	w.busy += time.Since(w.last)
	return w.ServerStream.SendMsg(m)
}

// --- the load and its figures ---------------------------------------------

type httpBenchCase struct {
	key, what, path string
	target          string // sluice's target (listener) for this read
	masked          bool
}

type httpBenchPath struct {
	key, name string
	client    *http.Client
	token     func() string
	url       func(httpBenchCase) string
	stack     *httpBenchSluice // nil when sluice is not on the path
	sent      int64            // requests sent, for the audit check
}

// check sends one request and checks what came back: the upstream's body
// as it is, or, masked, valid JSON with no secret in it.
func (p *httpBenchPath) check(t *testing.T, c httpBenchCase, want []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.url(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+p.token())
	req.Header.Set("Accept", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", p.key, c.key, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	p.sent++
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %v %s", p.key, c.key, resp.StatusCode, err, body)
	}
	switch {
	case p.stack != nil && c.masked:
		if !json.Valid(body) {
			t.Fatalf("%s %s: the masked body is not JSON: %.300s", p.key, c.key, body)
		}
		for _, s := range httpBenchSecrets {
			if bytes.Contains(body, []byte(s)) {
				t.Fatalf("%s %s: %q reached the agent: %.300s", p.key, c.key, s, body)
			}
		}
		if c.path == httpBenchPodsPath && bytes.Count(body, []byte("nginx:1.27")) != 100 {
			t.Fatalf("%s %s: unmasked fields lost: %.300s", p.key, c.key, body)
		}
	case !bytes.Equal(body, want):
		t.Fatalf("%s %s: the body changed on the way:\n%.300s\nwant\n%.300s", p.key, c.key, body, want)
	}
}

// httpBenchRun is n sequential requests on one path.
type httpBenchRun struct {
	lat        []time.Duration // per request, sorted
	wall, cpu  time.Duration   // of the whole run; cpu is this process's
	check      []time.Duration // sluice's Check handler, per request
	proc       []time.Duration // sluice's ext_proc handler time, per request
	procMsgs   int
	bytesTotal int64
}

func (r httpBenchRun) mean() time.Duration {
	var sum time.Duration
	for _, d := range r.lat {
		sum += d
	}
	return sum / time.Duration(max(len(r.lat), 1))
}

func (p *httpBenchPath) run(t *testing.T, c httpBenchCase, n int) httpBenchRun {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.url(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+p.token())
	req.Header.Set("Accept", "application/json")
	if p.stack != nil {
		p.stack.times.take()
	}
	r := httpBenchRun{lat: make([]time.Duration, 0, n)}
	cpu0, start := httpBenchCPU(), time.Now()
	for range n {
		t0 := time.Now()
		resp, err := p.client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", p.key, c.key, err)
		}
		nb, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d %v", p.key, c.key, resp.StatusCode, err)
		}
		r.lat = append(r.lat, d)
		r.bytesTotal += nb
	}
	r.wall, r.cpu = time.Since(start), httpBenchCPU()-cpu0
	p.sent += int64(n)
	if p.stack != nil {
		r.check, r.proc, r.procMsgs = p.stack.times.take()
	}
	slices.Sort(r.lat)
	return r
}

// httpBenchSeries is one path and read over every round.
type httpBenchSeries struct {
	rounds []httpBenchRun
}

func (s *httpBenchSeries) all() (lat, check, proc []time.Duration, wall, cpu time.Duration, msgs int) {
	for _, r := range s.rounds {
		lat = append(lat, r.lat...)
		check = append(check, r.check...)
		proc = append(proc, r.proc...)
		wall += r.wall
		cpu += r.cpu
		msgs += r.procMsgs
	}
	slices.Sort(lat)
	slices.Sort(check)
	slices.Sort(proc)
	return
}

// httpBenchQ is the q-quantile of sorted durations, in µs.
func httpBenchQ(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	return float64(d[int(q*float64(len(d)-1))]) / 1e3
}

func httpBenchMean(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return float64(sum) / float64(len(d)) / 1e3
}

// httpBenchSpread is "median [min–max]" of per-round values.
func httpBenchSpread(v []float64, format string) string {
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return fmt.Sprintf(format+" ["+format+"–"+format+"]", med, s[0], s[len(s)-1])
}

// httpBenchTable is the run's figures as Markdown tables.
func httpBenchTable(paths []*httpBenchPath, cases []httpBenchCase, res [][]*httpBenchSeries) string {
	var b strings.Builder
	b.WriteString("Paths:\n")
	for _, p := range paths {
		fmt.Fprintf(&b, "- %s: %s\n", p.key, p.name)
	}
	b.WriteString("\nPer-request latency, sequential requests on one keep-alive connection (µs); ratios are per round to the same round's direct run: median [min–max]\n\n")
	b.WriteString("| read | path | p50 | p99 | mean | req/s | p50 / direct | mean / direct | CPU µs/req |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for j, c := range cases {
		for i, p := range paths {
			lat, _, _, wall, cpu, _ := res[i][j].all()
			var p50r, meanr []float64
			for k, r := range res[i][j].rounds {
				d := res[0][j].rounds[k]
				p50r = append(p50r, httpBenchQ(r.lat, 0.5)/httpBenchQ(d.lat, 0.5))
				meanr = append(meanr, float64(r.mean())/float64(d.mean()))
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.0f | %.0f | %.0f | %s | %s | %.0f |\n", c.key, p.key,
				httpBenchQ(lat, 0.5), httpBenchQ(lat, 0.99), httpBenchMean(lat), float64(len(lat))/wall.Seconds(),
				httpBenchSpread(p50r, "%.2f"), httpBenchSpread(meanr, "%.2f"), float64(cpu)/1e3/float64(len(lat)))
		}
	}
	b.WriteString("\nReads:\n")
	for _, c := range cases {
		fmt.Fprintf(&b, "- %s: GET %s (%s)\n", c.key, c.path, c.what)
	}

	// What sluice adds: (c) − (b) and (d) − (b).
	idx := map[string]int{}
	for i, p := range paths {
		idx[p.key] = i
	}
	b.WriteString("\nAdded by sluice (µs): the path minus (b) from the pooled figures, and per round (median [min–max]); " +
		"sluice's own handler time measured inside its gRPC servers (Check; ext_proc summed over a request's messages)\n\n")
	b.WriteString("| read | path | −(b) p50 | −(b) mean | −(b) mean per round | −(b) CPU µs/req | Check p50 / mean | ext_proc p50 / mean | ext_proc msgs/req |\n" +
		"|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for j, c := range cases {
		bare := res[idx["envoysim"]][j]
		bl, _, _, _, bcpu, _ := bare.all()
		for _, key := range []string{"sluice", "sluice-sqlite"} {
			sl, check, proc, _, scpu, msgs := res[idx[key]][j].all()
			var perRound []float64
			for k, r := range res[idx[key]][j].rounds {
				perRound = append(perRound, float64(r.mean()-bare.rounds[k].mean())/1e3)
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.0f | %s | %.0f | %.0f / %.0f | %.0f / %.0f | %.1f |\n", c.key, key,
				httpBenchQ(sl, 0.5)-httpBenchQ(bl, 0.5), httpBenchMean(sl)-httpBenchMean(bl), httpBenchSpread(perRound, "%.0f"),
				float64(scpu)/1e3/float64(len(sl))-float64(bcpu)/1e3/float64(len(bl)),
				httpBenchQ(check, 0.5), httpBenchMean(check), httpBenchQ(proc, 0.5), httpBenchMean(proc),
				float64(msgs)/float64(max(len(proc), 1)))
		}
	}
	return b.String()
}

// --- helpers ---------------------------------------------------------------

// httpBenchLabel runs f with a pprof "component" label, which every
// goroutine f starts (servers, their connections) inherits, so that a CPU
// profile splits by component.
func httpBenchLabel(component string, f func()) {
	pprof.Do(context.Background(), pprof.Labels("component", component), func(context.Context) { f() })
}

func httpBenchEnvInt(t *testing.T, name string, def, max int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		t.Fatalf("%s=%q: want 1..%d", name, s, max)
	}
	return n
}

// httpBenchCPU is this process's user+system time: client, upstream,
// stand-in and sluice all run in it.
func httpBenchCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// httpBenchLoad is the load average and CPU pressure now.
func httpBenchLoad() string {
	var b strings.Builder
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&b, "loadavg %s", strings.Join(strings.Fields(string(la))[:3], " "))
	}
	if psi, err := os.ReadFile("/proc/pressure/cpu"); err == nil {
		line, _, _ := strings.Cut(string(psi), "\n")
		fmt.Fprintf(&b, "; cpu pressure %s", strings.Join(strings.Fields(line)[1:4], " "))
	}
	return b.String()
}

func httpBenchCPUModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return fmt.Sprintf("%s × %d", strings.TrimSpace(v), runtime.NumCPU())
		}
	}
	return runtime.GOARCH
}
