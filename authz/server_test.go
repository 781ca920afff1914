package authz_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

const serverConfig = `
identity:
  issuers: [{ issuer: %s, audiences: [sluice] }]
approvers: { groups: [dba] }
targets:
  - { name: orders-db, kind: postgres, port: 15432, upstream: 127.0.0.1:5432, database: orders, credentials: { user: app } }
  - { name: off-db, kind: postgres, port: 15433, upstream: 127.0.0.1:5432, database: orders, credentials: { user: app }, disabled: true }
  - { name: lan-db, kind: postgres, port: 15434, upstream: 127.0.0.1:5432, database: orders, credentials: { user: app }, allowed_sources: [10.0.0.0/8] }
  - { name: cluster-api, kind: http, port: 16443, upstream: "https://127.0.0.1:6443", credentials: { bearer_env: SLUICE_TEST_K8S_TOKEN } }
  - { name: crm-api, kind: http, port: 16444, upstream: "http://127.0.0.1:9090", credentials: { bearer_env: SLUICE_TEST_CRM_KEY, header: X-API-Key } }
  - { name: unset-api, kind: http, port: 16445, upstream: "http://127.0.0.1:9091", credentials: { bearer_env: SLUICE_TEST_UNSET_SECRET } }
  - { name: off-api, kind: http, port: 16446, upstream: "http://127.0.0.1:9092", credentials: { bearer_env: SLUICE_TEST_CRM_KEY }, disabled: true }
  - { name: lan-api, kind: http, port: 16447, upstream: "http://127.0.0.1:9093", credentials: { bearer_env: SLUICE_TEST_CRM_KEY }, allowed_sources: [10.0.0.0/8] }
policies:
  - name: agents
    targets: [orders-db, cluster-api, crm-api, unset-api]
    principals: { groups: [agents] }
    allow: [read]
    require_grant: [write]
    deny: [admin, ddl, unknown]
    mask: [secrets]
    max_grant_duration: 30m
masking:
  - { name: secrets, json_paths: ["$.data"] }
`

// recorder is an audit.Sink that keeps what it is given, or fails.
type recorder struct {
	mu     sync.Mutex
	events []audit.Event
	fail   bool
	// failKind fails the appends of one kind only.
	failKind audit.Kind
	// hang makes appends wait for their ctx to end, as an audit store
	// that stopped answering does.
	hang bool
	// discard keeps nothing, for load benchmarks that would otherwise
	// measure the slice's growth.
	discard bool
}

func (r *recorder) Append(ctx context.Context, e audit.Event) error {
	r.mu.Lock()
	hang := r.hang
	r.mu.Unlock()
	if hang {
		<-ctx.Done()
		return fmt.Errorf("audit: not recorded: %w", context.Cause(ctx))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail || (r.failKind != "" && e.Kind == r.failKind) {
		return errors.New("disk full")
	}
	if !r.discard {
		r.events = append(r.events, e)
	}
	return nil
}

func (r *recorder) set(f func(r *recorder)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

func (r *recorder) all() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Event(nil), r.events...)
}

func (r *recorder) last() audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events[len(r.events)-1]
}

type fixture struct {
	idp    *testenv.OIDCProvider
	client authv3.AuthorizationClient
	store  grants.Store
	audit  *recorder
	srv    *authz.Server
}

func newFixture(t testing.TB, store grants.Store, mods ...func(*policies.Config)) *fixture {
	t.Helper()
	t.Setenv("SLUICE_TEST_K8S_TOKEN", "k8s-service-token")
	t.Setenv("SLUICE_TEST_CRM_KEY", "crm-key")
	idp := testenv.StartOIDC(t)
	idp.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s", Groups: []string{"agents"}})
	idp.AddClient(testenv.OIDCClient{ID: "outsider", Secret: "s"})
	idp.AddClient(testenv.OIDCClient{ID: "stale", Secret: "s", Groups: []string{"agents"}, TTL: -time.Minute})
	cfg, err := policies.Load("authz.yaml", []byte(fmt.Sprintf(serverConfig, idp.Issuer)))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		m(cfg)
	}
	if store == nil {
		store = grants.NewEmbeddedStore()
	}
	rec := &recorder{}
	srv, err := authz.NewServer(cfg, authz.Options{Grants: authz.GrantsFrom(store), Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &fixture{idp: idp, client: authv3.NewAuthorizationClient(cc), store: store, audit: rec, srv: srv}
}

func addr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// httpCheck builds the CheckRequest Envoy's HTTP ext_authz sends
// (envoy-contract.md section 3: pseudo-headers in headers, path with query).
func httpCheck(target, method, path, token string, extra map[string]string) *authv3.CheckRequest {
	h := map[string]string{":method": method, ":path": path, ":authority": "api.local", ":scheme": "https"}
	if token != "" {
		h["authorization"] = "Bearer " + token
	}
	for k, v := range extra {
		h[k] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:            &authv3.AttributeContext_Peer{Address: addr("127.0.0.1", 50123)},
		Destination:       &authv3.AttributeContext_Peer{Address: addr("127.0.0.1", 16443)},
		ContextExtensions: map[string]string{"target": target},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: "1", Method: method, Path: path, Host: "api.local", Scheme: "https", Protocol: "HTTP/1.1", Headers: h,
		}},
	}}
}

func (f *fixture) check(t *testing.T, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	resp, err := f.client.Check(context.Background(), req)
	if err != nil {
		t.Fatalf("Check returned a gRPC error (Envoy would apply status_on_error, not sluice's answer): %v", err)
	}
	return resp
}

// refusal decodes a denied response's JSON body and checks its status.
func refusal(t *testing.T, resp *authv3.CheckResponse, status int) authz.Refusal {
	t.Helper()
	d := resp.GetDeniedResponse()
	if resp.GetStatus().GetCode() == 0 || d == nil {
		t.Fatalf("not denied: %v", resp)
	}
	if int(d.GetStatus().GetCode()) != status {
		t.Fatalf("HTTP status %d, want %d (body %s)", d.GetStatus().GetCode(), status, d.GetBody())
	}
	var r authz.Refusal
	if err := json.Unmarshal([]byte(d.GetBody()), &r); err != nil {
		t.Fatalf("body is not JSON: %q", d.GetBody())
	}
	if r.Reason == "" || r.Error == "" {
		t.Errorf("refusal without error or reason: %+v", r)
	}
	return r
}

func header(resp *authv3.CheckResponse, key string) (*corev3.HeaderValueOption, bool) {
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == key {
			return h, true
		}
	}
	return nil, false
}

func TestHTTPAllowReplacesTheCredential(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.idp.Token(t, "agent-1")
	resp := f.check(t, httpCheck("cluster-api", "GET", "/api/v1/namespaces/default/pods?limit=1", tok, nil))
	if resp.GetStatus().GetCode() != 0 {
		t.Fatalf("denied: %v", resp)
	}
	h, ok := header(resp, "authorization")
	if !ok || h.GetHeader().GetValue() != "Bearer k8s-service-token" || h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
		t.Errorf("authorization mutation %v, want the service token with OVERWRITE_IF_EXISTS_OR_ADD", h)
	}
	for _, r := range resp.GetOkResponse().GetHeadersToRemove() {
		if r == "authorization" {
			t.Error("authorization is both set and removed: older Envoys remove after setting (contract section 3)")
		}
	}
	md := resp.GetDynamicMetadata().GetFields()
	if md["subject"].GetStringValue() != "agent-1" || md["decision"].GetStringValue() != "allow" || md["class"].GetStringValue() != "read" {
		t.Errorf("dynamic metadata %v", md)
	}
	if strings.Contains(resp.String(), tok) {
		t.Error("the agent's token appears in the response")
	}
	ev := f.audit.last()
	if ev.Kind != audit.KindAuthzDecision || ev.Principal.Subject != "agent-1" || ev.Decision != "allow" || ev.Request != "GET /api/v1/namespaces/default/pods?limit=1" || ev.Source != "127.0.0.1:50123" {
		t.Errorf("audit event %+v", ev)
	}

	// A target that takes its key in a custom header.
	resp = f.check(t, httpCheck("crm-api", "GET", "/v1/contacts", tok, nil))
	if h, ok := header(resp, "x-api-key"); !ok || h.GetHeader().GetValue() != "crm-key" {
		t.Errorf("x-api-key mutation %v", resp.GetOkResponse())
	}
	if rm := resp.GetOkResponse().GetHeadersToRemove(); len(rm) != 1 || rm[0] != "authorization" {
		t.Errorf("the agent's authorization is not removed: %v", rm)
	}
}

func TestHTTPRefusals(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.idp.Token(t, "agent-1")
	outsider := f.idp.Token(t, "outsider")

	r := refusal(t, f.check(t, httpCheck("cluster-api", "GET", "/api", "", nil)), 401)
	if r.Error != "unauthenticated" {
		t.Errorf("no token: %+v", r)
	}
	resp := f.check(t, httpCheck("cluster-api", "GET", "/api", "not.a.jwt", nil))
	refusal(t, resp, 401)
	if resp.GetDeniedResponse().GetHeaders()[1].GetHeader().GetKey() != "www-authenticate" {
		t.Errorf("401 without WWW-Authenticate: %v", resp.GetDeniedResponse().GetHeaders())
	}
	if r := refusal(t, f.check(t, httpCheck("cluster-api", "GET", "/api", outsider, nil)), 403); !strings.Contains(r.Reason, "no policy grants outsider") {
		t.Errorf("outsider: %+v", r)
	}
	if r := refusal(t, f.check(t, httpCheck("cluster-api", "POST", "/api/v1/namespaces/x/pods/p/exec", tok, map[string]string{"connection": "Upgrade", "upgrade": "SPDY/3.1"})), 403); r.Class != "admin" || r.Error != "forbidden" {
		t.Errorf("exec upgrade: %+v", r)
	}
	if r := refusal(t, f.check(t, httpCheck("no-such-target", "GET", "/", tok, nil)), 403); !strings.Contains(r.Reason, "no-such-target") {
		t.Errorf("unknown target: %+v", r)
	}
	if r := refusal(t, f.check(t, httpCheck("orders-db", "GET", "/", tok, nil)), 403); r.Error != "forbidden" {
		t.Errorf("a postgres target on an HTTP route: %+v", r)
	}
	if r := refusal(t, f.check(t, httpCheck("unset-api", "GET", "/", tok, nil)), 503); r.Error != "unavailable" || strings.Contains(r.Reason, "SLUICE_TEST_UNSET_SECRET") {
		t.Errorf("credential unavailable: %+v", r)
	}
	f.audit.fail = true
	if r := refusal(t, f.check(t, httpCheck("cluster-api", "GET", "/api", tok, nil)), 503); !strings.Contains(r.Reason, "audit") {
		t.Errorf("audit down: %+v", r)
	}
}

// TestHTTPApprovalFlow: a write needs a grant; the refusal names the
// approval request; retries reuse it; once approved, the write passes.
func TestHTTPApprovalFlow(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.idp.Token(t, "agent-1")
	del := httpCheck("cluster-api", "DELETE", "/api/v1/namespaces/default/pods/web-1", tok, nil)
	r := refusal(t, f.check(t, del), 403)
	if r.Error != "approval_required" || r.ApprovalRequestID == "" || !strings.Contains(r.HowToApprove, "sluice grants approve "+r.ApprovalRequestID) || !strings.Contains(r.HowToApprove, "dba") {
		t.Fatalf("refusal %+v", r)
	}
	if again := refusal(t, f.check(t, del), 403); again.ApprovalRequestID != r.ApprovalRequestID {
		t.Errorf("a retry opened a second request %s (first %s)", again.ApprovalRequestID, r.ApprovalRequestID)
	}
	// The request is recorded before the refusal that names it, once.
	ev := f.audit.all()
	if len(ev) != 3 || ev[0].Kind != audit.KindGrantCreated || ev[1].Kind != audit.KindAuthzDecision || ev[2].Kind != audit.KindAuthzDecision {
		t.Fatalf("audit %+v, want grant.requested then two decisions", ev)
	}
	if req := ev[0]; req.GrantID != r.ApprovalRequestID || req.Principal.Subject != "agent-1" || req.Target != "cluster-api" ||
		req.Decision != "pending" || len(req.Classes) != 1 || req.Classes[0] != policies.ClassWrite || !strings.Contains(req.Reason, "DELETE") {
		t.Errorf("grant.requested event %+v", req)
	}
	if ev[1].Decision != "approval_required" || ev[1].GrantID != r.ApprovalRequestID {
		t.Errorf("decision event %+v", ev[1])
	}
	g, err := f.store.Get(context.Background(), r.ApprovalRequestID)
	if err != nil {
		t.Fatal(err)
	}
	if g.Duration != 30*time.Minute || g.Requester.Subject != "agent-1" || len(g.Classes) != 1 || g.Classes[0] != policies.ClassWrite {
		t.Errorf("opened request %+v: want 30m (policy max), agent-1, write", g)
	}
	approver := policies.Principal{Issuer: f.idp.Issuer, Subject: "dba-alice", Groups: []string{"dba"}}
	if _, err := f.store.Approve(context.Background(), g.ID, approver, "ok", time.Now()); err != nil {
		t.Fatal(err)
	}
	resp := f.check(t, del)
	if resp.GetStatus().GetCode() != 0 || resp.GetDynamicMetadata().GetFields()["grant_id"].GetStringValue() != g.ID {
		t.Fatalf("after approval: %v", resp)
	}
	if ev := f.audit.last(); ev.GrantID != g.ID || ev.Decision != "allow" {
		t.Errorf("audit %+v", ev)
	}
}

func TestHTTPGrantStoreDown(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	store, err := grants.OpenRedis("redis://" + dead + "/0")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, store)
	r := refusal(t, f.check(t, httpCheck("cluster-api", "GET", "/api", f.idp.Token(t, "agent-1"), nil)), 503)
	if r.Error != "unavailable" || !strings.Contains(r.Reason, "grant store") {
		t.Errorf("store down: %+v", r)
	}
	ev := f.audit.all()
	if len(ev) != 1 || ev[0].Kind != audit.KindAuthzDecision || ev[0].Decision != "deny" || ev[0].Principal.Subject != "agent-1" ||
		ev[0].Target != "cluster-api" || !strings.Contains(ev[0].Reason, "grant store") || ev[0].Error == "" {
		t.Errorf("audit %+v, want the refusal with the store's error", ev)
	}
}

func TestNetworkChecks(t *testing.T) {
	f := newFixture(t, nil)
	tcp := func(src string, port uint32) *authv3.CheckRequest {
		return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:      &authv3.AttributeContext_Peer{Address: addr(src, 40000)},
			Destination: &authv3.AttributeContext_Peer{Address: addr("127.0.0.1", port)},
		}}
	}
	resp := f.check(t, tcp("127.0.0.1", 15432))
	if resp.GetStatus().GetCode() != 0 || resp.GetDynamicMetadata().GetFields()["target"].GetStringValue() != "orders-db" {
		t.Errorf("orders-db: %v", resp)
	}
	if resp := f.check(t, tcp("10.1.2.3", 15434)); resp.GetStatus().GetCode() != 0 {
		t.Errorf("allowed source refused: %v", resp)
	}
	// An allowed connection is recorded by the Postgres session it
	// reaches, not here.
	if ev := f.audit.all(); len(ev) != 0 {
		t.Errorf("allowed connections recorded %+v", ev)
	}
	for _, tc := range []struct {
		name, target, source string
		req                  *authv3.CheckRequest
	}{
		{"unknown port", "", "127.0.0.1:40000", tcp("127.0.0.1", 1)},
		{"disabled target", "off-db", "127.0.0.1:40000", tcp("127.0.0.1", 15433)},
		{"source not allowed", "lan-db", "192.168.1.1:40000", tcp("192.168.1.1", 15434)},
		{"no addresses", "", "", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}}},
	} {
		before := len(f.audit.all())
		resp := f.check(t, tc.req)
		if resp.GetStatus().GetCode() != int32(codes.PermissionDenied) || resp.GetStatus().GetMessage() == "" {
			t.Errorf("%s: %v, want PERMISSION_DENIED with a reason", tc.name, resp)
		}
		ev := f.audit.all()
		if len(ev) != before+1 {
			t.Errorf("%s: %d events recorded, want 1", tc.name, len(ev)-before)
			continue
		}
		e := ev[before]
		if e.Kind != audit.KindAuthzDecision || e.Decision != "deny" || e.Target != tc.target || e.Source != tc.source ||
			e.Reason == "" || !strings.Contains(resp.GetStatus().GetMessage(), e.Reason) {
			t.Errorf("%s: audit %+v for refusal %q", tc.name, e, resp.GetStatus().GetMessage())
		}
	}
	// A refusal is still a refusal when its record fails.
	f.audit.set(func(r *recorder) { r.fail = true })
	if resp := f.check(t, tcp("127.0.0.1", 15433)); resp.GetStatus().GetCode() != int32(codes.PermissionDenied) {
		t.Errorf("disabled target with the audit store down: %v", resp)
	}
}
