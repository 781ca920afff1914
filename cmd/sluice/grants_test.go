package main

import (
	"bytes"
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
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

const grantsTestConfig = `
identity:
  issuers:
    - issuer: %s
      audiences: [sluice]
approvers:
  groups: [dba-oncall]
targets:
  - name: orders-db
    kind: postgres
    port: 15432
    upstream: 127.0.0.1:5432
    database: orders
    credentials: { user: app, password_env: ORDERS_DB_PASSWORD }
policies:
  - name: agents-on-orders
    targets: [orders-db]
    principals: { groups: [agents] }
    allow: [read]
    require_grant: [write]
    deny: [ddl, admin]
    max_grant_duration: 1h
`

// grantsEnv is the real API (embedded store, real OIDC verifier) on an
// httptest server, and a token file per IdP client.
type grantsEnv struct {
	api    string
	tokens map[string]string // client → token file
}

func newGrantsEnv(t *testing.T) *grantsEnv {
	idp := testenv.StartOIDC(t)
	idp.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s", Groups: []string{"agents"}})
	idp.AddClient(testenv.OIDCClient{ID: "copilot", Secret: "s", Groups: []string{"agents"}, ActFor: "alice"})
	idp.AddClient(testenv.OIDCClient{ID: "bob", Secret: "s", Groups: []string{"dba-oncall"}})
	cfg, err := policies.Load("grants.yaml", fmt.Appendf(nil, grantsTestConfig, idp.Issuer))
	if err != nil {
		t.Fatal(err)
	}
	v := authz.NewVerifier(cfg.Identity.Issuers)
	api := grants.NewAPI(grants.APIOptions{
		Store: grants.NewEmbeddedStore(),
		Authenticate: func(r *http.Request) (policies.Principal, error) {
			raw, ok := grants.BearerToken(r)
			if !ok {
				return policies.Principal{}, errors.New("send your OIDC access token as Authorization: Bearer <token>")
			}
			ver, err := v.Verify(r.Context(), raw)
			return ver.Principal, err
		},
		Config: func() *policies.Config { return cfg },
		Audit:  audit.LogSink{Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	env := &grantsEnv{api: srv.URL, tokens: map[string]string{}}
	dir := t.TempDir()
	for _, c := range []string{"agent-1", "copilot", "bob"} {
		f := filepath.Join(dir, c+".token")
		if err := os.WriteFile(f, []byte(idp.Token(t, c)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		env.tokens[c] = f
	}
	return env
}

// run runs "sluice grants args…" as client.
func (e *grantsEnv) run(t *testing.T, client string, args ...string) (string, error) {
	t.Helper()
	args = append(args, "--api", e.api, "--token-file", e.tokens[client])
	var out, errOut bytes.Buffer
	err := grantsCmd(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func (e *grantsEnv) mustRun(t *testing.T, client string, args ...string) string {
	t.Helper()
	out, err := e.run(t, client, args...)
	if err != nil {
		t.Fatalf("sluice grants %s as %s: %v\n%s", strings.Join(args, " "), client, err, out)
	}
	return out
}

func TestGrantsCommandLifecycle(t *testing.T) {
	e := newGrantsEnv(t)
	out := e.mustRun(t, "copilot", "request", "--target", "orders-db", "--class", "write", "--duration", "30m", "--reason", "INC-7: fix\x1b[2J a stuck order", "--json")
	var g grants.Grant
	if err := json.Unmarshal([]byte(out), &g); err != nil {
		t.Fatalf("request --json: %v\n%s", err, out)
	}
	if g.State != grants.StatePending || g.Requester.Subject != "copilot" {
		t.Fatalf("requested %+v", g)
	}
	out = e.mustRun(t, "agent-1", "request", "--target=orders-db", "--class", "write", "--duration", "15m", "--reason", "second")
	if !strings.Contains(out, "sluice grants approve gr_") || !strings.Contains(out, "write on orders-db for 15m0s") {
		t.Errorf("request output:\n%s", out)
	}

	// The approver's table shows both; the escape sequence in a reason
	// does not reach the terminal.
	out = e.mustRun(t, "bob", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(out, "copilot (for alice)") || !strings.Contains(out, "pending") {
		t.Errorf("list:\n%s", out)
	}
	if strings.Contains(out, "\x1b") {
		t.Errorf("list printed a terminal escape:\n%q", out)
	}
	// Filters, and a requester sees only its own.
	if out = e.mustRun(t, "bob", "list", "--subject", "copilot", "--state", "pending", "--json"); strings.Count(out, `"id"`) != 1 || !strings.Contains(out, g.ID) {
		t.Errorf("filtered list --json:\n%s", out)
	}
	if out = e.mustRun(t, "agent-1", "list"); strings.Contains(out, g.ID) || strings.Count(strings.TrimSpace(out), "\n") != 1 {
		t.Errorf("agent-1 lists:\n%s", out)
	}

	// Flags after the ID work too.
	out = e.mustRun(t, "bob", "approve", g.ID, "--note", "go ahead")
	if !strings.Contains(out, "Approved grant "+g.ID) || !strings.Contains(out, "copilot (for alice) may use write on orders-db") {
		t.Errorf("approve output:\n%s", out)
	}
	out = e.mustRun(t, "copilot", "get", g.ID)
	for _, want := range []string{"State:", "approved", "Decided:", "by bob", "Note:", "go ahead", "Expires:"} {
		if !strings.Contains(out, want) {
			t.Errorf("get lacks %q:\n%s", want, out)
		}
	}
	if out = e.mustRun(t, "copilot", "revoke", "--note", "done", g.ID); !strings.Contains(out, "Revoked grant "+g.ID) {
		t.Errorf("revoke output:\n%s", out)
	}
	if out = e.mustRun(t, "bob", "list", "--state", "revoked"); !strings.Contains(out, g.ID) {
		t.Errorf("revoked list:\n%s", out)
	}
}

// TestGrantsCommandErrors: the API's reason reaches the person, with its
// code, and the command's own mistakes are named.
func TestGrantsCommandErrors(t *testing.T) {
	e := newGrantsEnv(t)
	out := e.mustRun(t, "agent-1", "request", "--target", "orders-db", "--class", "write", "--duration", "30m", "--reason", "r", "--json")
	var g grants.Grant
	json.Unmarshal([]byte(out), &g)

	cases := []struct {
		client string
		args   []string
		want   string
	}{
		{"bob", []string{"request", "--target", "orders-db", "--class", "write", "--duration", "30m", "--reason", "r"}, "no policy on orders-db applies to bob"},
		{"agent-1", []string{"approve", g.ID}, "only members of dba-oncall may approve grants, and agent-1 is not one (forbidden, HTTP 403)"},
		{"agent-1", []string{"request", "--target", "payroll", "--class", "write", "--duration", "30m", "--reason", "r"}, `no target named "payroll" in sluice's config (unknown_target, HTTP 404)`},
		{"agent-1", []string{"request", "--target", "orders-db", "--class", "write", "--duration", "3h", "--reason", "r"}, "maximum 1h0m0s"},
		{"agent-1", []string{"request", "--target", "orders-db", "--class", "write", "--duration", "30m"}, "--reason"},
		{"agent-1", []string{"request", "--target", "orders-db", "--duration", "30m", "--reason", "r"}, "either --class or --statement"},
		{"agent-1", []string{"list", "extra"}, `unexpected argument "extra"`},
		{"agent-1", []string{"approve"}, "expected one grant ID"},
		{"agent-1", []string{"frobnicate"}, `unknown subcommand "frobnicate"`},
		{"bob", []string{"approve", "gr_aaaaaaaaaaaaaaaaaaaa"}, "not_found, HTTP 404"},
	}
	for _, c := range cases {
		if _, err := e.run(t, c.client, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("sluice grants %s: err = %v, want it to contain %q", strings.Join(c.args, " "), err, c.want)
		}
	}
	e.mustRun(t, "bob", "approve", g.ID)
	_, err := e.run(t, "bob", "deny", g.ID)
	if err == nil || !strings.Contains(err.Error(), "(not_pending, HTTP 409); the grant is approved") {
		t.Errorf("deny after approve: %v", err)
	}
}

// TestGrantsCommandToken: the token comes from SLUICE_TOKEN or a file,
// the API from SLUICE_API; without a token the command says how to give
// one, and a bad token gets the API's reason.
func TestGrantsCommandToken(t *testing.T) {
	e := newGrantsEnv(t)
	tok, err := os.ReadFile(e.tokens["bob"])
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SLUICE_API", e.api)
	t.Setenv("SLUICE_TOKEN", "")
	var out, errOut bytes.Buffer
	err = grantsCmd(context.Background(), []string{"list"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "set SLUICE_TOKEN") {
		t.Errorf("without a token: %v", err)
	}
	t.Setenv("SLUICE_TOKEN", string(tok))
	if err := grantsCmd(context.Background(), []string{"list"}, &out, &errOut); err != nil || !strings.Contains(out.String(), "No grants.") {
		t.Errorf("with SLUICE_TOKEN: %v\n%s%s", err, out.String(), errOut.String())
	}
	t.Setenv("SLUICE_TOKEN", "not-a-token")
	err = grantsCmd(context.Background(), []string{"list"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "token_malformed") || !strings.Contains(err.Error(), "unauthenticated, HTTP 401") {
		t.Errorf("bad token: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o600)
	if err := grantsCmd(context.Background(), []string{"list", "--token-file", empty}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("empty token file: %v", err)
	}
	if err := grantsCmd(context.Background(), []string{"list", "--api", "ftp://x"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "http:// or https://") {
		t.Errorf("bad --api: %v", err)
	}
	// Not sluice at all: a clear error, not a JSON decoding panic.
	notSluice := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "teapot", http.StatusTeapot) }))
	defer notSluice.Close()
	if err := grantsCmd(context.Background(), []string{"list", "--api", notSluice.URL}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "418") {
		t.Errorf("not sluice: %v", err)
	}
}
