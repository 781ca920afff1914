package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// httpUpgradeConfig is httpPathConfig with a second group: agents may not
// exec at all (admin is denied), on-call agents may with an approved
// grant.
const httpUpgradeConfig = `
server: { xds: %[1]s, authz: %[2]s, extproc: %[3]s, api: 127.0.0.1:%[4]d }
envoy: { node: e2e-http, listen_address: 127.0.0.1 }
` + httpClusterAPI + `policies:
  - name: agents-on-cluster
    targets: [cluster-api]
    principals: { groups: [agents] }
    allow: [read]
    deny: [admin, write, ddl, unknown]
    mask: [k8s]
  - name: oncall-exec
    targets: [cluster-api]
    principals: { groups: [oncall] }
    allow: [read]
    require_grant: [admin]
    deny: [write, ddl, unknown]
    mask: [k8s]
masking:
  - name: k8s
    json_paths: ["$.spec.containers[*].env[*].value"]
`

// execSubprotocol is what kubectl (1.30+) asks for over WebSocket.
const execSubprotocol = "v5.channel.k8s.io"

// exec is the API server's exec subresource: an upgrade to WebSocket (the
// v5.channel.k8s.io subprotocol) or SPDY/3.1 that echoes what the client
// sends until it closes. A pod named "missing" does not exist: 404 with a
// Status, as the API server answers before upgrading.
func (k *fakeKube) exec(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.Path, "/pods/missing/") {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"kind":"Status","code":404,"message":"pods \"missing\" not found"}`)
		return
	}
	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		websocket.Server{
			Handshake: func(cfg *websocket.Config, _ *http.Request) error {
				for _, p := range cfg.Protocol {
					if p == execSubprotocol {
						cfg.Protocol = []string{p}
						return nil
					}
				}
				return fmt.Errorf("no supported subprotocol in %v", cfg.Protocol)
			},
			Handler: func(ws *websocket.Conn) {
				for {
					var msg []byte
					if err := websocket.Message.Receive(ws, &msg); err != nil {
						k.execEnded <- err
						return
					}
					if err := websocket.Message.Send(ws, msg); err != nil {
						k.execEnded <- err
						return
					}
				}
			},
		}.ServeHTTP(w, r)
		return
	}
	// SPDY/3.1: the framing is not the point here; switch and echo bytes.
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		k.execEnded <- err
		return
	}
	defer c.Close()
	fmt.Fprint(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
	_ = brw.Flush()
	_, err = io.Copy(c, brw)
	if err == nil {
		err = io.EOF
	}
	k.execEnded <- err
}

// dialExec opens an exec session over WebSocket through Envoy, as kubectl
// does, with the agent's token.
func (h *httpPath) dialExec(path, token string) (*websocket.Conn, error) {
	cfg, err := websocket.NewConfig(strings.Replace(h.base, "http://", "ws://", 1)+path, "http://localhost/")
	if err != nil {
		return nil, err
	}
	cfg.Protocol = []string{execSubprotocol}
	cfg.Header = http.Header{"Authorization": {"Bearer " + token}}
	return websocket.DialConfig(cfg)
}

// TestHTTPKubernetesExecUpgrade drives kubectl exec through envoysim and
// sluice against the TLS fake API server: an agent without an admin grant
// is refused with sluice's reason and the API server never sees the
// request; an on-call agent needs approval, then runs exec over WebSocket
// and over SPDY/3.1 and gets its echo back; an exec the API server
// refuses with a body is refused (sluice cannot mask it on the upgrade
// path); the decisions, the requests and the 101 responses are in the
// audit trail.
func TestHTTPKubernetesExecUpgrade(t *testing.T) {
	h := startHTTPPathWith(t, httpUpgradeConfig,
		testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents"}},
		testenv.OIDCClient{ID: "agent-ops", Secret: "s2", Groups: []string{"oncall"}})
	agent, ops := h.idp.Token(t, "agent-1"), h.idp.Token(t, "agent-ops")
	execPath := "/api/v1/namespaces/default/pods/web-0/exec?command=sh&stdin=true&stdout=true"
	wsHeaders := []string{"Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13",
		"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol", execSubprotocol}

	// Without an admin grant: refused by sluice, never forwarded.
	code, body := h.do("GET", execPath, agent, "", wsHeaders...)
	var r authz.Refusal
	if code != http.StatusForbidden || json.Unmarshal([]byte(body), &r) != nil || r.Error != "forbidden" || r.Class != "admin" {
		t.Fatalf("exec without a grant: %d %s", code, body)
	}
	if _, err := h.dialExec(execPath, agent); err == nil {
		t.Fatal("a WebSocket exec without a grant was accepted")
	}
	if h.kube.saw("GET /api/v1/namespaces/default/pods/web-0/exec") {
		t.Fatal("the API server saw an exec sluice refused")
	}

	// An on-call agent needs a grant for admin; once approved, exec runs.
	code, body = h.do("GET", execPath, ops, "", wsHeaders...)
	if code != http.StatusForbidden || json.Unmarshal([]byte(body), &r) != nil || r.Error != "approval_required" || r.ApprovalRequestID == "" {
		t.Fatalf("exec before approval: %d %s", code, body)
	}
	approver := policies.Principal{Issuer: h.idp.Issuer, Subject: "oncall-lead", Groups: []string{"platform"}}
	if _, err := h.store.Approve(context.Background(), r.ApprovalRequestID, approver, "debugging web-0", time.Now()); err != nil {
		t.Fatal(err)
	}
	grantID := r.ApprovalRequestID

	ws, err := h.dialExec(execPath, ops)
	if err != nil {
		t.Fatalf("exec over WebSocket: %v", err)
	}
	if ws.Config().Protocol[0] != execSubprotocol {
		t.Errorf("subprotocol %v", ws.Config().Protocol)
	}
	for _, msg := range []string{"\x00ls /\n", "\x00cat /etc/hostname\n"} {
		if err := websocket.Message.Send(ws, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		var echo []byte
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := websocket.Message.Receive(ws, &echo); err != nil || string(echo) != msg {
			t.Fatalf("echo %q, %v; want %q", echo, err, msg)
		}
	}
	ws.Close() // the agent leaves mid-session: the API server's side ends too
	select {
	case err := <-h.kube.execEnded:
		if err == nil {
			t.Error("exec session ended without an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the API server's exec session stayed open after the agent closed")
	}

	// The same over SPDY/3.1, which kubectl falls back to.
	spdyPath := "/api/v1/namespaces/default/pods/web-0/exec?command=date"
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: cluster\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nAuthorization: Bearer %s\r\nContent-Length: 0\r\n\r\n", spdyPath, ops)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols || !strings.EqualFold(resp.Header.Get("Upgrade"), "SPDY/3.1") {
		t.Fatalf("SPDY exec: %v %v", resp, err)
	}
	if _, err := io.WriteString(conn, "spdy-frame"); err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, len("spdy-frame"))
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "spdy-frame" {
		t.Fatalf("SPDY echo %q, %v", echo, err)
	}
	conn.Close()
	<-h.kube.execEnded

	// The API server refuses the upgrade with a JSON body: the upgrade path
	// does not mask, so sluice refuses rather than pass it.
	code, body = h.do("GET", "/api/v1/namespaces/default/pods/missing/exec?command=sh", ops, "", wsHeaders...)
	if code != http.StatusBadGateway || strings.Contains(body, "not found") || !strings.Contains(body, "status 404") {
		t.Errorf("exec on a missing pod: %d %s", code, body)
	}

	// The audit trail: the refusals, the decisions that let exec run,
	// each exec's request (recorded before it was forwarded) and its
	// response (status 101) after it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var denied, approval, allowed, requests, results, missing int
		h.audit.mu.Lock()
		for _, e := range h.audit.events {
			isExec := strings.Contains(e.Request, "/exec?")
			switch {
			case e.Kind == audit.KindAuthzDecision && isExec && e.Principal.Subject == "agent-1" && e.Decision == "deny":
				if len(e.Classes) != 1 || e.Classes[0] != policies.ClassAdmin {
					t.Errorf("deny recorded with classes %v", e.Classes)
				}
				denied++
			case e.Kind == audit.KindAuthzDecision && isExec && e.Decision == "approval_required":
				approval++
			case e.Kind == audit.KindAuthzDecision && isExec && e.Decision == "allow":
				if e.Principal.Subject != "agent-ops" || e.GrantID != grantID {
					t.Errorf("allow recorded as %+v", e)
				}
				allowed++
			case e.Kind == audit.KindHTTPRequest && isExec:
				if e.HTTPStatus != 0 || e.RequestID == "" || e.Principal.Subject != "agent-ops" {
					t.Errorf("exec request recorded as %+v", e)
				}
				requests++
			case e.Kind == audit.KindHTTPResponse && strings.Contains(e.Request, "/pods/missing/"):
				if e.HTTPStatus != 404 || e.Error == "" {
					t.Errorf("the refused upgrade's response: %+v", e)
				}
				missing++
			case e.Kind == audit.KindHTTPResponse && isExec && e.HTTPStatus == http.StatusSwitchingProtocols:
				if e.Error != "" || e.RequestID == "" {
					t.Errorf("101 result recorded as %+v", e)
				}
				results++
			}
		}
		h.audit.mu.Unlock()
		// Three allowed, recorded before they were forwarded: the
		// WebSocket and SPDY sessions, and the exec on the missing pod.
		if denied == 2 && approval == 1 && allowed == 3 && requests == 3 && results == 2 && missing == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit: %d denials, %d approval requests, %d allowed, %d exec requests, %d 101 results, %d refused upgrade's responses", denied, approval, allowed, requests, results, missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.sim.RequireNoViolations(t)
}
