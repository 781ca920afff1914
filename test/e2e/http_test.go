package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/extproc"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/envoysim/envoysim"
	"github.com/sluicehq/sluice/test/testenv"
	"github.com/sluicehq/sluice/xds"
)

// httpClusterAPI is the identity, approvers and the Kubernetes target
// every HTTP e2e config shares; %[5]s is the issuer, %[6]d the listener
// port, %[7]s the fake API server's port and %[8]s its CA file.
const httpClusterAPI = `identity:
  issuers: [{ issuer: "%[5]s", audiences: [sluice], groups_claim: groups }]
approvers: { groups: [platform] }
targets:
  - name: cluster-api
    kind: http
    api: kubernetes
    port: %[6]d
    upstream: "https://127.0.0.1:%[7]s"
    upstream_ca_file: %[8]s
    upstream_sni: example.com
    request_timeout: 0s
    credentials: { bearer_env: SLUICE_E2E_K8S_TOKEN }
`

const httpPathConfig = `
server: { xds: %[1]s, authz: %[2]s, extproc: %[3]s, api: 127.0.0.1:%[4]d }
envoy: { node: e2e-http, listen_address: 127.0.0.1 }
` + httpClusterAPI + `policies:
  - name: agents-on-cluster
    targets: [cluster-api]
    principals: { groups: [agents] }
    allow: [read]
    require_grant: [write]
    deny: [admin, ddl, unknown]
    mask: [k8s]
    http:
      - { methods: [DELETE], path: "/api/v1/namespaces/*/pods/*", class: admin }
masking:
  - name: k8s
    json_paths: ["$.spec.containers[*].env[*].value"]
    detectors: [email]
`

// upstreamToken is the credential sluice presents to the API server; the
// agent never has it.
const upstreamToken = "k8s-sa-token-only-sluice-knows"

// k8sSecrets are values that must never reach the agent.
var k8sSecrets = []string{"c3VwZXJzZWNyZXQ=", "supersecret", "hunter2-db-password", "ops@example.com", upstreamToken}

// fakeKube is a small Kubernetes-like API over TLS: Secrets, Pods, a
// watch stream, configmap creation and the exec subresource.
type fakeKube struct {
	mu       sync.Mutex
	requests []string // "METHOD path" as the API server saw them
	created  int
	// execEnded receives how each exec session ended (http_upgrade_test.go).
	execEnded chan error
}

func (k *fakeKube) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	k.requests = append(k.requests, r.Method+" "+r.URL.RequestURI())
	k.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+upstreamToken {
		http.Error(w, `{"kind":"Status","code":401}`, http.StatusUnauthorized)
		return
	}
	if strings.HasSuffix(r.URL.Path, "/exec") {
		k.exec(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	pod := func(name string) map[string]any {
		return map[string]any{"kind": "Pod", "apiVersion": "v1", "metadata": map[string]any{"name": name, "annotations": map[string]any{"owner": "ops@example.com"}},
			"spec": map[string]any{"containers": []any{map[string]any{"name": "app", "image": "nginx:1.27",
				"env": []any{map[string]any{"name": "DB_PASSWORD", "value": "hunter2-db-password"}}}}}}
	}
	secret := map[string]any{"kind": "Secret", "apiVersion": "v1", "metadata": map[string]any{"name": "db"},
		"data": map[string]any{"password": "c3VwZXJzZWNyZXQ="}, "stringData": map[string]any{"password": "supersecret"}}
	switch {
	case r.Method == "GET" && r.URL.Path == "/api/v1/namespaces/default/secrets/db":
		json.NewEncoder(w).Encode(secret)
	case r.Method == "GET" && r.URL.Path == "/api/v1/namespaces/default/secrets":
		item := map[string]any{"metadata": map[string]any{"name": "db"}, "data": map[string]any{"password": "c3VwZXJzZWNyZXQ="}}
		json.NewEncoder(w).Encode(map[string]any{"kind": "SecretList", "apiVersion": "v1", "items": []any{item}})
	case r.Method == "GET" && r.URL.Path == "/api/v1/namespaces/default/pods" && r.URL.Query().Get("watch") == "true":
		fl := w.(http.Flusher)
		for i, typ := range []string{"ADDED", "MODIFIED"} {
			b, _ := json.Marshal(map[string]any{"type": typ, "object": pod(fmt.Sprintf("web-%d", i))})
			// Split each event across writes, as a real stream may.
			w.Write(b[:len(b)/2])
			fl.Flush()
			w.Write(append(b[len(b)/2:], '\n'))
			fl.Flush()
		}
	case r.Method == "GET" && r.URL.Path == "/api/v1/namespaces/default/pods":
		json.NewEncoder(w).Encode(map[string]any{"kind": "PodList", "apiVersion": "v1", "items": []any{pod("web-0"), pod("web-1")}})
	case r.Method == "POST" && r.URL.Path == "/api/v1/namespaces/default/configmaps":
		k.mu.Lock()
		k.created++
		k.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		io.Copy(w, r.Body)
	default:
		http.Error(w, `{"kind":"Status","code":404}`, http.StatusNotFound)
	}
}

func (k *fakeKube) saw(prefix string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, r := range k.requests {
		if strings.HasPrefix(r, prefix) {
			return true
		}
	}
	return false
}

// httpPath is the HTTP path on loopback: the fake API server, a real OIDC
// provider, sluice's xDS, ext_authz and HTTP ext_proc, and envoysim.
type httpPath struct {
	t     *testing.T
	kube  *fakeKube
	idp   *testenv.OIDCProvider
	sim   *envoysim.Sim
	audit *recordingSink
	store grants.Store
	base  string
	// stopAuthz and stopProc stop sluice's ext_authz and ext_proc
	// servers, as an outage would.
	stopAuthz, stopProc func()
}

func startHTTPPath(t *testing.T) *httpPath {
	t.Helper()
	return startHTTPPathWith(t, httpPathConfig, testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents"}})
}

// startHTTPPathWith is startHTTPPath with another config (the same
// placeholders as httpPathConfig) and OIDC clients.
func startHTTPPathWith(t *testing.T, config string, clients ...testenv.OIDCClient) *httpPath {
	t.Helper()
	kube := &fakeKube{execEnded: make(chan error, 10)}
	up := httptest.NewTLSServer(kube)
	t.Cleanup(up.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	_, upPort, _ := net.SplitHostPort(up.Listener.Addr().String())
	idp := testenv.StartOIDC(t)
	for _, c := range clients {
		idp.AddClient(c)
	}
	t.Setenv("SLUICE_E2E_K8S_TOKEN", upstreamToken)

	xdsSrv, err := xds.NewServer(xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := serveGRPC(t, xdsSrv.Register)
	authzLis, _ := net.Listen("tcp", "127.0.0.1:0")
	procLis, _ := net.Listen("tcp", "127.0.0.1:0")
	port := freePort(t)
	cfg, err := policies.Load("e2e-http.yaml", []byte(fmt.Sprintf(config, xdsAddr, authzLis.Addr(), procLis.Addr(),
		freePort(t), idp.Issuer, port, upPort, caFile)))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingSink{}
	store := grants.NewEmbeddedStore()
	authzSrv, err := authz.NewServer(cfg, authz.Options{Grants: authz.GrantsFrom(store), Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := extproc.NewHTTPServer(extproc.HTTPOptions{Config: cfg, Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	authzG, procG := grpc.NewServer(), grpc.NewServer()
	authzSrv.Register(authzG)
	proc.Register(procG)
	go authzG.Serve(authzLis)
	go procG.Serve(procLis)
	t.Cleanup(authzG.Stop)
	t.Cleanup(procG.Stop)
	if err := xdsSrv.Update(cfg); err != nil {
		t.Fatal(err)
	}
	sim := startSim(t, xdsAddr, "cluster-api", envoysim.WithNode(&corev3.Node{Id: "e2e-http"}), envoysim.WithLogf(simLog(t)))
	return &httpPath{t: t, kube: kube, idp: idp, sim: sim, audit: rec, store: store, base: "http://" + sim.ListenerAddr("cluster-api"),
		stopAuthz: authzG.Stop, stopProc: procG.Stop}
}

// do sends one request as the agent and returns the status and body.
func (h *httpPath) do(method, path, token, body string, header ...string) (int, string) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.base+path, strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return resp.StatusCode, string(b)
}

func noSecrets(t *testing.T, what, body string) {
	t.Helper()
	for _, s := range k8sSecrets {
		if strings.Contains(body, s) {
			t.Errorf("%s: %q reached the agent:\n%s", what, s, body)
		}
	}
}

// TestHTTPKubernetesPath drives issue 7's end-to-end list through
// envoysim against a TLS Kubernetes-like API server: reads pass with
// Secrets, configured paths and detector hits masked (plain, list and
// watch); a delete is denied; a write needs approval and succeeds once
// approved; a forged token and an exec upgrade are refused; every
// exchange is recorded.
func TestHTTPKubernetesPath(t *testing.T) {
	h := startHTTPPath(t)
	tok := h.idp.Token(t, "agent-1")

	// Reads, masked.
	for _, path := range []string{"/api/v1/namespaces/default/secrets/db", "/api/v1/namespaces/default/secrets", "/api/v1/namespaces/default/pods"} {
		code, body := h.do("GET", path, tok, "")
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		noSecrets(t, "GET "+path, body)
		if !json.Valid([]byte(body)) {
			t.Errorf("GET %s: masked body is not JSON: %s", path, body)
		}
		if strings.Contains(path, "pods") && !strings.Contains(body, "nginx:1.27") {
			t.Errorf("GET %s: unmasked fields lost: %s", path, body)
		}
	}
	// A watch stream: each event masked as it passes.
	code, body := h.do("GET", "/api/v1/namespaces/default/pods?watch=true", tok, "")
	if code != http.StatusOK {
		t.Fatalf("watch: %d %s", code, body)
	}
	noSecrets(t, "watch", body)
	sc := bufio.NewScanner(strings.NewReader(body))
	events := 0
	for sc.Scan() {
		if !json.Valid(sc.Bytes()) {
			t.Errorf("watch event is not JSON: %s", sc.Text())
		}
		events++
	}
	if events != 2 {
		t.Errorf("watch: %d events, want 2:\n%s", events, body)
	}

	// A denied delete never reaches the API server.
	code, body = h.do("DELETE", "/api/v1/namespaces/default/pods/web-0", tok, "")
	if code != http.StatusForbidden || !strings.Contains(body, "admin is denied") || h.kube.saw("DELETE") {
		t.Fatalf("delete: %d %s (upstream saw it: %v)", code, body, h.kube.saw("DELETE"))
	}

	// A write needs approval; approved, the same request succeeds.
	cm := `{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"flags"},"data":{"x":"1"}}`
	code, body = h.do("POST", "/api/v1/namespaces/default/configmaps", tok, cm)
	var refusal authz.Refusal
	if code != http.StatusForbidden || json.Unmarshal([]byte(body), &refusal) != nil || refusal.ApprovalRequestID == "" {
		t.Fatalf("write before approval: %d %s", code, body)
	}
	approver := policies.Principal{Issuer: h.idp.Issuer, Subject: "oncall", Groups: []string{"platform"}}
	if _, err := h.store.Approve(context.Background(), refusal.ApprovalRequestID, approver, "ok", time.Now()); err != nil {
		t.Fatal(err)
	}
	code, body = h.do("POST", "/api/v1/namespaces/default/configmaps", tok, cm)
	if code != http.StatusCreated || !strings.Contains(body, "flags") {
		t.Fatalf("write after approval: %d %s", code, body)
	}

	// A forged token: the agent's own token with its signature changed.
	forged := tok[:len(tok)-4] + "AAAA"
	if code, body := h.do("GET", "/api/v1/namespaces/default/pods", forged, ""); code != http.StatusUnauthorized {
		t.Fatalf("forged token: %d %s", code, body)
	}
	// An exec upgrade: admin, denied by sluice with its reason; the API
	// server never sees it (http_upgrade_test.go runs an allowed one).
	code, body = h.do("POST", "/api/v1/namespaces/default/pods/web-0/exec?command=sh", tok, "", "Connection", "Upgrade", "Upgrade", "SPDY/3.1")
	var execRefusal authz.Refusal
	if code != http.StatusForbidden || json.Unmarshal([]byte(body), &execRefusal) != nil || execRefusal.Class != "admin" ||
		h.kube.saw("POST /api/v1/namespaces/default/pods/web-0/exec") {
		t.Fatalf("exec upgrade: %d %s (upstream saw it: %v)", code, body, h.kube.saw("POST /api/v1/namespaces/default/pods/web-0/exec"))
	}

	// Every exchange that reached the API server is recorded, its pair
	// before the response and its result after.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var reqs, resps int
		h.audit.mu.Lock()
		for _, e := range h.audit.events {
			switch e.Kind {
			case audit.KindHTTPRequest:
				reqs++
			case audit.KindHTTPResponse:
				if e.Digest == "" || e.RequestID == "" {
					t.Errorf("response record without digest or request id: %+v", e)
				}
				resps++
			}
		}
		h.audit.mu.Unlock()
		if reqs == 5 && resps == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit: %d request and %d response records, want 5 each (3 reads, the watch, the approved write)", reqs, resps)
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.sim.RequireNoViolations(t)
}
