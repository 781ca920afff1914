package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// httpEvents returns the events of kind whose request contains what.
func (h *httpPath) httpEvents(kind audit.Kind, what string) []audit.Event {
	h.audit.mu.Lock()
	defer h.audit.mu.Unlock()
	var out []audit.Event
	for _, e := range h.audit.events {
		if e.Kind == kind && strings.Contains(e.Request, what) {
			out = append(out, e)
		}
	}
	return out
}

// waitHTTPEvents waits up to 10 s for n events of kind about what.
func (h *httpPath) waitHTTPEvents(kind audit.Kind, what string, n int) []audit.Event {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := h.httpEvents(kind, what)
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d %s events for %q, want %d", len(evs), kind, what, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHTTPAuditDownRefusesRequest: with the audit store failing, an
// allowed request, with a body or without, is refused with 503 before it
// reaches the API server; once the store is back the same write goes
// through, its event recorded with the body's digest before the API
// server saw it.
func TestHTTPAuditDownRefusesRequest(t *testing.T) {
	h := startHTTPPath(t)
	tok := h.idp.Token(t, "agent-1")
	h.audit.failKind(audit.KindHTTPRequest, true)

	// No body: refused at the request headers.
	code, body := h.do("GET", "/api/v1/namespaces/default/pods", tok, "")
	var r authz.Refusal
	if code != http.StatusServiceUnavailable || json.Unmarshal([]byte(body), &r) != nil || r.Error != "unavailable" ||
		!strings.Contains(r.Reason, "audit store") {
		t.Fatalf("read with the audit store down: %d %s", code, body)
	}
	if h.kube.saw("GET /api/v1/namespaces/default/pods") {
		t.Fatal("the API server saw a request that was not recorded")
	}

	// A body: the write is approved, then refused at its body.
	cm := `{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"flags"},"data":{"x":"1"}}`
	const cmPath = "/api/v1/namespaces/default/configmaps"
	code, body = h.do("POST", cmPath, tok, cm)
	if code != http.StatusForbidden || json.Unmarshal([]byte(body), &r) != nil || r.ApprovalRequestID == "" {
		t.Fatalf("write before approval: %d %s", code, body)
	}
	approver := policies.Principal{Issuer: h.idp.Issuer, Subject: "oncall", Groups: []string{"platform"}}
	if _, err := h.store.Approve(context.Background(), r.ApprovalRequestID, approver, "ok", time.Now()); err != nil {
		t.Fatal(err)
	}
	code, body = h.do("POST", cmPath, tok, cm)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "audit store") {
		t.Fatalf("write with the audit store down: %d %s", code, body)
	}
	if h.kube.saw("POST") {
		t.Fatal("the API server executed a write that was not recorded")
	}

	// The store is back: the write passes, recorded first.
	h.audit.failKind(audit.KindHTTPRequest, false)
	code, body = h.do("POST", cmPath, tok, cm)
	if code != http.StatusCreated {
		t.Fatalf("write with the audit store back: %d %s", code, body)
	}
	reqs := h.httpEvents(audit.KindHTTPRequest, "POST "+cmPath)
	if len(reqs) != 1 || reqs[0].Bytes != int64(len(cm)) || !strings.HasPrefix(reqs[0].Digest, "sha256:") || reqs[0].HTTPStatus != 0 {
		t.Fatalf("write's request events %+v", reqs)
	}
	resp := h.waitHTTPEvents(audit.KindHTTPResponse, "POST "+cmPath, 1)[0]
	if resp.HTTPStatus != http.StatusCreated || resp.RequestID != reqs[0].RequestID || resp.Error != "" {
		t.Errorf("write's response event %+v", resp)
	}
	h.sim.RequireNoViolations(t)
}

// TestHTTPUnmaskedResponseRecord: where no policy masks, response bodies
// flow past sluice; the response's record has the status and the size
// the API server declared, no digest, and no invented error.
func TestHTTPUnmaskedResponseRecord(t *testing.T) {
	h := startHTTPPathWith(t, strings.Replace(httpPathConfig, "    mask: [k8s]\n", "", 1),
		testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents"}})
	tok := h.idp.Token(t, "agent-1")
	const path = "/api/v1/namespaces/default/pods"
	code, body := h.do("GET", path, tok, "")
	if code != http.StatusOK || !strings.Contains(body, "hunter2-db-password") {
		t.Fatalf("unmasked read: %d %s", code, body)
	}
	resp := h.waitHTTPEvents(audit.KindHTTPResponse, "GET "+path, 1)[0]
	if resp.HTTPStatus != http.StatusOK || resp.Bytes != int64(len(body)) || resp.Digest != "" || resp.Error != "" {
		t.Errorf("response event %+v (the agent received %d bytes)", resp, len(body))
	}
	h.sim.RequireNoViolations(t)
}

// TestHTTPSluiceDownIsUnavailable: when sluice's ext_proc or ext_authz
// cannot be reached, Envoy answers 503 (status_on_error), a transient
// failure, not 403 or 500; nothing reaches the API server.
func TestHTTPSluiceDownIsUnavailable(t *testing.T) {
	const path = "/api/v1/namespaces/default/pods"
	for _, down := range []string{"ext_authz", "ext_proc"} {
		t.Run(down, func(t *testing.T) {
			h := startHTTPPath(t)
			tok := h.idp.Token(t, "agent-1")
			if down == "ext_authz" {
				// ext_proc stays up: the local reply passes through it.
				h.stopAuthz()
			} else {
				h.stopProc()
			}
			if code, body := h.do("GET", path, tok, ""); code != http.StatusServiceUnavailable {
				t.Errorf("%s down: %d %q, want 503", down, code, body)
			}
			if h.kube.saw("GET " + path) {
				t.Error("the API server saw a request sluice never processed")
			}
		})
	}
}
