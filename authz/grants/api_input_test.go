package grants_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/test/testenv"
)

// testBadInput: every refusal is a clear JSON error, and nothing is
// stored, announced or audited.
func testBadInput(t *testing.T, h *harness) {
	g := h.request("agent-1") // a pending request to aim decisions at
	approve := "/v1/grants/" + g.ID + "/approve"
	cases := []struct {
		name, client, method, path, body string
		status                           int
		code                             grants.ErrorCode
		reason                           string // a substring of the reason
	}{
		{"malformed JSON", "agent-1", "POST", "/v1/grants", `{"target":"orders-db",`, 400, grants.CodeInvalidJSON, "not valid JSON"},
		{"not an object", "agent-1", "POST", "/v1/grants", `["write"]`, 400, grants.CodeInvalidJSON, "JSON object"},
		{"wrong type", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":"write","duration":"30m","reason":"r"}`, 400, grants.CodeInvalidJSON, "classes"},
		{"empty body", "agent-1", "POST", "/v1/grants", ``, 400, grants.CodeInvalidJSON, "empty"},
		{"trailing data", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"30m","reason":"r"} {}`, 400, grants.CodeInvalidJSON, "one JSON object"},
		{"unknown field", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"30m","reason":"r","approve":true}`, 400, grants.CodeUnknownField, `"approve"`},
		{"unknown target", "agent-1", "POST", "/v1/grants", `{"target":"payroll","classes":["write"],"duration":"30m","reason":"r"}`, 404, grants.CodeUnknownTarget, `"payroll"`},
		{"no target", "agent-1", "POST", "/v1/grants", `{"classes":["write"],"duration":"30m","reason":"r"}`, 400, grants.CodeInvalidRequest, "target is required"},
		{"above the policy's maximum", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"2h","reason":"r"}`, 400, grants.CodeDurationTooLong, "maximum 1h0m0s"},
		{"no duration", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"reason":"r"}`, 400, grants.CodeInvalidRequest, "duration is required"},
		{"bad duration", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"soon","reason":"r"}`, 400, grants.CodeInvalidRequest, `"soon"`},
		{"negative duration", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"-5m","reason":"r"}`, 400, grants.CodeInvalidRequest, "positive"},
		{"no reason", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"30m","reason":"  "}`, 400, grants.CodeInvalidRequest, "reason is required"},
		{"unknown class", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["root"],"duration":"30m","reason":"r"}`, 400, grants.CodeInvalidRequest, `"root"`},
		{"classes and statement", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"statement":"DELETE FROM t","duration":"30m","reason":"r"}`, 400, grants.CodeInvalidRequest, "not both"},
		{"neither", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","duration":"30m","reason":"r"}`, 400, grants.CodeInvalidRequest, "classes"},
		{"statement without analyser", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","statement":"DELETE FROM orders WHERE id = 1","duration":"30m","reason":"r"}`, 400, grants.CodeStatementUnsupported, "statement grants need the SQL analyser"},
		{"denied class", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write","ddl"],"duration":"30m","reason":"r"}`, 403, grants.CodeDeniedByPolicy, "ddl is denied"},
		{"no policy applies", "stranger", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"30m","reason":"r"}`, 403, grants.CodeDeniedByPolicy, "no policy"},
		{"no policy on target", "agent-1", "POST", "/v1/grants", `{"target":"cluster-api","classes":["write"],"duration":"30m","reason":"r"}`, 403, grants.CodeDeniedByPolicy, "cluster-api"},
		{"body too large", "agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"30m","reason":"` + strings.Repeat("x", grants.MaxBodyBytes) + `"}`, 413, grants.CodeBodyTooLarge, "larger than"},
		{"note malformed", "bob", "POST", approve, `{"note":`, 400, grants.CodeInvalidJSON, "not valid JSON"},
		{"note unknown field", "bob", "POST", approve, `{"note":"ok","state":"approved"}`, 400, grants.CodeUnknownField, `"state"`},
		{"note too long", "bob", "POST", approve, `{"note":"` + strings.Repeat("x", 3000) + `"}`, 400, grants.CodeInvalidRequest, "note"},
		{"list bad state", "bob", "GET", "/v1/grants?state=granted", "", 400, grants.CodeInvalidRequest, `"granted"`},
		{"list bad limit", "bob", "GET", "/v1/grants?limit=5000", "", 400, grants.CodeInvalidRequest, "limit"},
		{"list unknown parameter", "bob", "GET", "/v1/grants?stat=pending", "", 400, grants.CodeInvalidRequest, `"stat"`},
		{"method", "agent-1", "DELETE", "/v1/grants/" + g.ID, "", 405, grants.CodeMethodNotAllowed, "GET"},
		{"unknown endpoint", "agent-1", "GET", "/v1/grants/" + g.ID + "/frobnicate", "", 404, grants.CodeNotFound, "frobnicate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, b := h.call(c.client, c.method, c.path, c.body)
			if e := h.wantError(status, b, c.status, c.code); !strings.Contains(e.Reason, c.reason) {
				t.Errorf("reason %q does not contain %q", e.Reason, c.reason)
			}
		})
	}
	list, err := h.inner.List(context.Background(), grants.Filter{})
	if err != nil || len(list) != 1 || list[0].State != grants.StatePending {
		t.Errorf("store holds %+v, %v; want only the one pending request", list, err)
	}
	if got := h.sink.kinds(); len(got) != 1 {
		t.Errorf("audit %v, want only the one request", got)
	}
	h.hook.next(t)
	h.hook.none(t)
}

// testUnauthenticated: no token, a forged one, an expired one and one
// from an issuer sluice does not trust are all 401, and change nothing.
func testUnauthenticated(t *testing.T, h *harness) {
	good := h.token("agent-1")
	parts := strings.Split(good, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), `"agent-1"`, `"bob"`, 1)))
	forged := strings.Join(parts, ".")
	other := testenv.StartOIDC(t)
	other.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s", Groups: []string{"dba-oncall"}})
	body := `{"target":"orders-db","classes":["write"],"duration":"30m","reason":"r"}`

	cases := []struct {
		name, token, reason, challenge string
	}{
		{"missing", "", "Authorization: Bearer", `Bearer realm="sluice"`},
		{"forged", forged, "token_invalid", `Bearer realm="sluice", error="invalid_token"`},
		{"expired", h.token("stale"), "token_expired", `Bearer realm="sluice", error="invalid_token"`},
		{"untrusted issuer", other.Token(t, "agent-1"), "unknown_issuer", `Bearer realm="sluice", error="invalid_token"`},
		{"not a JWT", "opaque-token", "token_malformed", `Bearer realm="sluice", error="invalid_token"`},
	}
	for _, c := range cases {
		for _, r := range []struct{ method, path, body string }{
			{"POST", "/v1/grants", body}, {"GET", "/v1/grants", ""}, {"POST", "/v1/grants/gr_aaaaaaaaaaaaaaaaaaaa/approve", ""},
		} {
			t.Run(fmt.Sprintf("%s %s %s", c.name, r.method, r.path), func(t *testing.T) {
				status, hdr, b := h.callToken(c.token, r.method, r.path, r.body)
				e := h.wantError(status, b, http.StatusUnauthorized, grants.CodeUnauthenticated)
				if !strings.Contains(e.Reason, c.reason) {
					t.Errorf("reason %q does not contain %q", e.Reason, c.reason)
				}
				if got := hdr.Get("WWW-Authenticate"); got != c.challenge {
					t.Errorf("WWW-Authenticate %q, want %q", got, c.challenge)
				}
				if c.token != "" && strings.Contains(e.Reason, c.token) {
					t.Error("the reason repeats the token")
				}
			})
		}
	}
	if list, _ := h.inner.List(context.Background(), grants.Filter{}); len(list) != 0 || len(h.sink.Events()) != 0 {
		t.Errorf("unauthenticated calls changed something: %v %v", list, h.sink.Events())
	}
}

// TestOpenAPIServed: the document is public, so a client can be built
// before it has a token.
func TestOpenAPIServed(t *testing.T) {
	h := newHarness(t, startIdP(t), func(t *testing.T, opts ...grants.Option) grants.Store { return grants.NewEmbeddedStore(opts...) })
	status, hdr, b := h.callToken("", "GET", "/v1/openapi.yaml", "")
	if status != http.StatusOK || hdr.Get("Content-Type") != "application/yaml" || !strings.HasPrefix(string(b), "openapi: 3.1") {
		t.Fatalf("GET /v1/openapi.yaml: %d %q %.40s", status, hdr.Get("Content-Type"), b)
	}
}

// TestStatementGrant: with a fingerprinter, a statement request records
// the statement and its fingerprint.
func TestStatementGrant(t *testing.T) {
	fp := func(stmt string) (string, error) {
		if strings.HasPrefix(stmt, "DELETE") {
			return "fp-delete", nil
		}
		return "", fmt.Errorf("cannot parse %q", stmt)
	}
	h := newHarness(t, startIdP(t), func(t *testing.T, opts ...grants.Option) grants.Store { return grants.NewEmbeddedStore(opts...) },
		func(o *grants.APIOptions) { o.Fingerprint = fp })
	g := h.grant("agent-1", "POST", "/v1/grants", `{"target":"orders-db","statement":"DELETE FROM orders WHERE id = 7","duration":"10m","reason":"r"}`, http.StatusCreated)
	if g.Statement != "DELETE FROM orders WHERE id = 7" || g.Fingerprint != "fp-delete" || len(g.Classes) != 0 {
		t.Errorf("statement grant %+v", g)
	}
	if m := h.hook.next(t); !strings.Contains(m.Text, "DELETE FROM orders WHERE id = 7") {
		t.Errorf("announcement lacks the statement: %s", m.Text)
	}
	status, b := h.call("agent-1", "POST", "/v1/grants", `{"target":"orders-db","statement":"SELEC 1","duration":"10m","reason":"r"}`)
	h.wantError(status, b, http.StatusBadRequest, grants.CodeInvalidRequest)
	if ev := h.sink.Events(); len(ev) != 1 || ev[0].Request != g.Statement {
		t.Errorf("audit %+v", ev)
	}
}
