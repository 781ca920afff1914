package grants_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// The test IdP's clients. Client-credentials tokens carry the client ID
// as their subject.
var idpClients = []testenv.OIDCClient{
	{ID: "agent-1", Secret: "s", Groups: []string{"agents"}},
	{ID: "agent-2", Secret: "s", Groups: []string{"agents"}},
	{ID: "copilot", Secret: "s", Groups: []string{"agents"}, ActFor: "alice"},
	{ID: "bob", Secret: "s", Groups: []string{"dba-oncall"}},
	{ID: "carol", Secret: "s", Groups: []string{"dba-oncall"}},
	{ID: "alice", Secret: "s", Groups: []string{"dba-oncall"}},
	{ID: "stranger", Secret: "s", Groups: []string{"marketing"}},
	{ID: "stale", Secret: "s", Groups: []string{"agents"}, TTL: -time.Minute},
}

// startIdP starts the OIDC provider the API's callers get tokens from.
func startIdP(t *testing.T) *testenv.OIDCProvider {
	idp := testenv.StartOIDC(t)
	for _, c := range idpClients {
		idp.AddClient(c)
	}
	return idp
}

const configYAML = `
identity:
  issuers:
    - issuer: %s
      audiences: [sluice]
approvers:
  groups: [dba-oncall]
  webhook_url_file: %s
grants:
  max_duration: 4h
targets:
  - name: orders-db
    kind: postgres
    port: 15432
    upstream: 127.0.0.1:5432
    database: orders
    credentials: { user: app, password_env: ORDERS_DB_PASSWORD }
  - name: cluster-api
    kind: http
    port: 16443
    upstream: https://10.0.0.1:6443
    credentials: { bearer_env: K8S_TOKEN }
policies:
  - name: agents-on-orders
    targets: [orders-db]
    principals: { groups: [agents, dba-oncall] }
    allow: [read]
    require_grant: [write]
    deny: [ddl, admin]
    max_grant_duration: 1h
`

// openStore makes an empty store of one kind on the test's clock.
type openStore func(t *testing.T, opts ...grants.Option) grants.Store

// stores are the two stores the API runs against.
func stores(t *testing.T) map[string]openStore {
	redisURL := "redis://" + testenv.StartRedis(t) + "/0"
	var n atomic.Int64
	return map[string]openStore{
		"embedded": func(t *testing.T, opts ...grants.Option) grants.Store { return grants.NewEmbeddedStore(opts...) },
		"redis": func(t *testing.T, opts ...grants.Option) grants.Store {
			prefix := fmt.Sprintf("apitest:%d:", n.Add(1))
			s, err := grants.OpenRedis(redisURL, append(opts, grants.WithPrefix(prefix))...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	}
}

// harness is one API on its own store, behind a real OIDC verifier, with
// a recording audit sink and a webhook receiver.
type harness struct {
	t     *testing.T
	idp   *testenv.OIDCProvider
	cfg   *policies.Config
	clk   *clock
	inner grants.Store // the store itself
	store grants.Store // inner, announcing new requests
	sink  *recordingSink
	hook  *hookReceiver
	api   *httptest.Server
	// webhookLog is the webhook's log, checked for the secret URL.
	webhookLog *testenv.SyncBuffer
}

func newHarness(t *testing.T, idp *testenv.OIDCProvider, open openStore, mods ...func(*grants.APIOptions)) *harness {
	h := &harness{t: t, idp: idp, clk: &clock{t: time.Now().Truncate(time.Second)}, sink: &recordingSink{}, webhookLog: &testenv.SyncBuffer{}}
	h.hook = newHookReceiver(t)
	urlFile := filepath.Join(t.TempDir(), "webhook-url")
	if err := os.WriteFile(urlFile, []byte(h.hook.url()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := policies.Load("test.yaml", fmt.Appendf(nil, configYAML, idp.Issuer, urlFile))
	if err != nil {
		t.Fatal(err)
	}
	h.cfg = cfg
	h.inner = open(t, grants.WithClock(h.clk), grants.WithMaxDuration(cfg.Grants.MaxDuration))
	wh := grants.NewWebhook(t.Context(), grants.WebhookOptions{
		Config: func() *policies.Config { return h.cfg }, Backoff: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(h.webhookLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	h.store = grants.Notifying(h.inner, wh)
	opts := grants.APIOptions{
		Store: h.store, Authenticate: authenticator(cfg), Config: func() *policies.Config { return h.cfg },
		Audit: h.sink, Now: h.clk.Now, Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	for _, m := range mods {
		m(&opts)
	}
	h.api = httptest.NewServer(grants.NewAPI(opts).Handler())
	t.Cleanup(h.api.Close)
	return h
}

// authenticator is what serve wires: the bearer token through the real
// OIDC verifier.
func authenticator(cfg *policies.Config) func(*http.Request) (policies.Principal, error) {
	v := authz.NewVerifier(cfg.Identity.Issuers)
	return func(r *http.Request) (policies.Principal, error) {
		raw, ok := grants.BearerToken(r)
		if !ok {
			return policies.Principal{}, errors.New("send your OIDC access token as Authorization: Bearer <token>")
		}
		ver, err := v.Verify(r.Context(), raw)
		var te *authz.TokenError
		if errors.As(err, &te) && te.Code == authz.TokenIssuerUnavailable {
			return policies.Principal{}, fmt.Errorf("%w: %s", grants.ErrAuthUnavailable, te.Reason)
		}
		return ver.Principal, err
	}
}

// token returns a fresh access token for an IdP client.
func (h *harness) token(client string) string { return h.idp.Token(h.t, client) }

// call sends one request as client ("" sends no token) and returns the
// status and the body.
func (h *harness) call(client, method, path, body string) (int, []byte) {
	h.t.Helper()
	tok := ""
	if client != "" {
		tok = h.token(client)
	}
	status, _, b := h.callToken(tok, method, path, body)
	return status, b
}

func (h *harness) callToken(token, method, path, body string) (int, http.Header, []byte) {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.api.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// grant sends a request that must answer status with a grant.
func (h *harness) grant(client, method, path, body string, status int) grants.Grant {
	h.t.Helper()
	got, b := h.call(client, method, path, body)
	if got != status {
		h.t.Fatalf("%s %s as %s: status %d, want %d: %s", method, path, client, got, status, b)
	}
	var g grants.Grant
	if err := json.Unmarshal(b, &g); err != nil {
		h.t.Fatalf("%s %s: %v: %s", method, path, err, b)
	}
	return g
}

// request asks for write on orders-db as client.
func (h *harness) request(client string) grants.Grant {
	h.t.Helper()
	return h.grant(client, "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"30m","reason":"INC-1: fix a stuck order"}`, http.StatusCreated)
}

// wantError checks an error answer's status and code, and returns it.
func (h *harness) wantError(status int, body []byte, wantStatus int, code grants.ErrorCode) grants.ErrorResponse {
	h.t.Helper()
	var e grants.ErrorResponse
	if err := json.Unmarshal(body, &e); err != nil {
		h.t.Fatalf("error body is not JSON: %v: %s", err, body)
	}
	if status != wantStatus || e.Error != code || e.Reason == "" {
		h.t.Fatalf("got %d %+v, want %d %s with a reason", status, e, wantStatus, code)
	}
	return e
}

// stateOf reads a grant straight from the store.
func (h *harness) stateOf(id string) grants.State {
	h.t.Helper()
	g, err := h.inner.Get(context.Background(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	return g.State
}

// clock is the injected clock of the store and the API.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// recordingSink is the audit sink: it keeps events, or fails while fail
// is set.
type recordingSink struct {
	mu     sync.Mutex
	events []audit.Event
	fail   error
	after  func(audit.Event)
}

func (s *recordingSink) Append(_ context.Context, e audit.Event) error {
	s.mu.Lock()
	if s.fail != nil {
		s.mu.Unlock()
		return s.fail
	}
	s.events = append(s.events, e)
	after := s.after
	s.mu.Unlock()
	if after != nil {
		after(e)
	}
	return nil
}

// onAppend runs f after each recorded event, outside the sink's lock.
func (s *recordingSink) onAppend(f func(audit.Event)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.after = f
}

func (s *recordingSink) setFail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = err
}

func (s *recordingSink) Events() []audit.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]audit.Event(nil), s.events...)
}

// kinds lists the events' kinds, for comparing sequences.
func (s *recordingSink) kinds() []audit.Kind {
	var out []audit.Kind
	for _, e := range s.Events() {
		out = append(out, e.Kind)
	}
	return out
}
