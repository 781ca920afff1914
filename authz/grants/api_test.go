package grants_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
)

// TestAPI runs the API's behaviour against both stores, with real tokens
// from a real OIDC provider.
func TestAPI(t *testing.T) {
	idp := startIdP(t)
	cases := []struct {
		name string
		run  func(t *testing.T, h *harness)
	}{
		{"RequestListApprove", testRequestListApprove},
		{"ApproveByNonApprover", testApproveByNonApprover},
		{"SelfApproval", testSelfApproval},
		{"ApproveTwice", testApproveTwice},
		{"ApproveExpired", testApproveExpired},
		{"DenyThenApprove", testDenyThenApprove},
		{"Revoke", testRevoke},
		{"Visibility", testVisibility},
		{"BadInputChangesNothing", testBadInput},
		{"Unauthenticated", testUnauthenticated},
		{"AuditFailure", testAuditFailure},
		{"TransitionRefusedAfterRecord", testTransitionRefusedAfterRecord},
		{"WebhookPerPendingRequest", testWebhookPerRequest},
	}
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) { tc.run(t, newHarness(t, idp, open)) })
			}
		})
	}
}

func testRequestListApprove(t *testing.T, h *harness) {
	status, hdr, b := h.callToken(h.token("copilot"), "POST", "/v1/grants", `{"target":"orders-db","classes":["write","write"],"duration":"30m","reason":"INC-1: fix a stuck order"}`)
	if status != http.StatusCreated {
		t.Fatalf("create: %d %s", status, b)
	}
	var g grants.Grant
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if hdr.Get("Location") != "/v1/grants/"+g.ID || g.State != grants.StatePending || g.Target != "orders-db" ||
		g.Requester.Subject != "copilot" || g.Requester.OnBehalfOf != "alice" || g.Requester.Issuer != h.idp.Issuer ||
		!slices.Equal(g.Classes, grants.Classes{policies.ClassWrite}) || g.Duration != 30*time.Minute {
		t.Fatalf("created %+v (Location %q)", g, hdr.Get("Location"))
	}
	h.clk.Advance(time.Second) // distinct creation times: the order is by time
	other := h.request("agent-2")

	// The requester lists its own; an approver lists everyone's, and
	// filters.
	var list grants.ListResponse
	listAs := func(client, query string) []string {
		t.Helper()
		status, b := h.call(client, "GET", "/v1/grants"+query, "")
		if status != http.StatusOK {
			t.Fatalf("list %s as %s: %d %s", query, client, status, b)
		}
		if err := json.Unmarshal(b, &list); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, g := range list.Grants {
			ids = append(ids, g.ID)
		}
		return ids
	}
	if got := listAs("copilot", ""); !slices.Equal(got, []string{g.ID}) {
		t.Errorf("copilot lists %v, want only its own %s", got, g.ID)
	}
	if got := listAs("bob", ""); !slices.Equal(got, []string{other.ID, g.ID}) {
		t.Errorf("approver lists %v, want both, newest first", got)
	}
	if got := listAs("bob", "?subject=copilot&state=pending&target=orders-db&limit=5"); !slices.Equal(got, []string{g.ID}) {
		t.Errorf("filtered list %v, want %s", got, g.ID)
	}
	if got := listAs("bob", "?limit=1"); !slices.Equal(got, []string{other.ID}) {
		t.Errorf("limit=1 lists %v, want the newest", got)
	}
	if got := listAs("bob", "?state=approved"); len(got) != 0 {
		t.Errorf("approved list %v, want none yet", got)
	}

	approved := h.grant("bob", "POST", "/v1/grants/"+g.ID+"/approve", `{"note":"go ahead"}`, http.StatusOK)
	now := h.clk.Now()
	if approved.State != grants.StateApproved || approved.DecidedBy.Subject != "bob" || approved.DecisionNote != "go ahead" ||
		!approved.ExpiresAt.Equal(now.Add(30*time.Minute).Truncate(time.Millisecond)) {
		t.Fatalf("approved %+v", approved)
	}
	if got := h.grant("copilot", "GET", "/v1/grants/"+g.ID, "", http.StatusOK); got.State != grants.StateApproved {
		t.Errorf("requester reads state %s", got.State)
	}
	active, err := h.store.Active(context.Background(), policies.Principal{Issuer: h.idp.Issuer, Subject: "copilot"}, "orders-db", now)
	if err != nil || len(active) != 1 || active[0].ID != g.ID {
		t.Errorf("Active = %v, %v; want the grant", active, err)
	}

	ev := h.sink.Events()
	if got := h.sink.kinds(); !slices.Equal(got, []audit.Kind{audit.KindGrantCreated, audit.KindGrantCreated, audit.KindGrantApproved}) {
		t.Fatalf("audit kinds %v", got)
	}
	req, appr := ev[0], ev[2]
	if req.GrantID != g.ID || req.Principal.Subject != "copilot" || req.Principal.OnBehalfOf != "alice" || req.Actor != "" ||
		req.Target != "orders-db" || req.Reason != "INC-1: fix a stuck order" || !slices.Equal(req.Classes, []policies.OperationClass{policies.ClassWrite}) ||
		req.Decision != "pending" || !req.Time.Equal(g.CreatedAt) {
		t.Errorf("request event %+v", req)
	}
	if appr.GrantID != g.ID || appr.Principal.Subject != "copilot" || appr.Actor != "bob" || appr.Reason != "go ahead" ||
		appr.Target != "orders-db" || appr.Decision != "approved" || len(appr.Classes) != 1 {
		t.Errorf("approve event %+v", appr)
	}
}

func testApproveByNonApprover(t *testing.T, h *harness) {
	g := h.request("agent-1")
	status, b := h.call("agent-2", "POST", "/v1/grants/"+g.ID+"/approve", "")
	e := h.wantError(status, b, http.StatusForbidden, grants.CodeForbidden)
	if !strings.Contains(e.Reason, "dba-oncall") {
		t.Errorf("reason %q does not say who may approve", e.Reason)
	}
	status, b = h.call("stranger", "POST", "/v1/grants/"+g.ID+"/deny", "")
	h.wantError(status, b, http.StatusForbidden, grants.CodeForbidden)
	if st := h.stateOf(g.ID); st != grants.StatePending {
		t.Errorf("state %s after refused decisions", st)
	}
	if got := h.sink.kinds(); len(got) != 1 {
		t.Errorf("audit %v, want only the request", got)
	}
}

func testSelfApproval(t *testing.T, h *harness) {
	// An approver's own request.
	own := h.request("bob")
	status, b := h.call("bob", "POST", "/v1/grants/"+own.ID+"/approve", "")
	h.wantError(status, b, http.StatusForbidden, grants.CodeSelfApproval)
	// A request an agent made on the approver's behalf.
	delegated := h.request("copilot")
	status, b = h.call("alice", "POST", "/v1/grants/"+delegated.ID+"/approve", "")
	h.wantError(status, b, http.StatusForbidden, grants.CodeSelfApproval)
	status, b = h.call("alice", "POST", "/v1/grants/"+delegated.ID+"/deny", "")
	h.wantError(status, b, http.StatusForbidden, grants.CodeSelfApproval)
	if h.stateOf(own.ID) != grants.StatePending || h.stateOf(delegated.ID) != grants.StatePending {
		t.Error("a refused self-approval changed a grant")
	}
	// Someone else may.
	h.grant("carol", "POST", "/v1/grants/"+own.ID+"/approve", "", http.StatusOK)
}

func testApproveTwice(t *testing.T, h *harness) {
	g := h.request("agent-1")
	h.grant("bob", "POST", "/v1/grants/"+g.ID+"/approve", "", http.StatusOK)
	status, b := h.call("carol", "POST", "/v1/grants/"+g.ID+"/approve", "")
	if e := h.wantError(status, b, http.StatusConflict, grants.CodeNotPending); e.State != "approved" {
		t.Errorf("conflict state %q, want approved", e.State)
	}
	if got := h.sink.kinds(); !slices.Equal(got, []audit.Kind{audit.KindGrantCreated, audit.KindGrantApproved}) {
		t.Errorf("audit %v", got)
	}
}

func testApproveExpired(t *testing.T, h *harness) {
	g := h.request("agent-1")
	h.clk.Advance(grants.DefaultPendingTTL + time.Second)
	status, b := h.call("bob", "POST", "/v1/grants/"+g.ID+"/approve", "")
	if e := h.wantError(status, b, http.StatusConflict, grants.CodeExpired); e.State != "expired" {
		t.Errorf("conflict state %q, want expired", e.State)
	}
	if st := h.stateOf(g.ID); st != grants.StateExpired {
		t.Errorf("state %s, want expired", st)
	}
	// An approved grant past its end cannot be revoked either.
	g2 := h.request("agent-1")
	h.grant("bob", "POST", "/v1/grants/"+g2.ID+"/approve", "", http.StatusOK)
	h.clk.Advance(31 * time.Minute)
	status, b = h.call("agent-1", "POST", "/v1/grants/"+g2.ID+"/revoke", "")
	h.wantError(status, b, http.StatusConflict, grants.CodeExpired)
}

func testDenyThenApprove(t *testing.T, h *harness) {
	g := h.request("agent-1")
	denied := h.grant("bob", "POST", "/v1/grants/"+g.ID+"/deny", `{"note":"use the runbook"}`, http.StatusOK)
	if denied.State != grants.StateDenied || denied.DecisionNote != "use the runbook" {
		t.Fatalf("denied %+v", denied)
	}
	status, b := h.call("carol", "POST", "/v1/grants/"+g.ID+"/approve", "")
	if e := h.wantError(status, b, http.StatusConflict, grants.CodeNotPending); e.State != "denied" {
		t.Errorf("conflict state %q, want denied", e.State)
	}
	ev := h.sink.Events()
	if len(ev) != 2 || ev[1].Kind != audit.KindGrantDenied || ev[1].Actor != "bob" || ev[1].Reason != "use the runbook" || ev[1].GrantID != g.ID {
		t.Errorf("audit %+v", ev)
	}
}

func testRevoke(t *testing.T, h *harness) {
	g := h.request("agent-1")
	// Not approved yet: nothing to revoke.
	status, b := h.call("agent-1", "POST", "/v1/grants/"+g.ID+"/revoke", "")
	if e := h.wantError(status, b, http.StatusConflict, grants.CodeNotApproved); e.State != "pending" {
		t.Errorf("conflict state %q", e.State)
	}
	h.grant("bob", "POST", "/v1/grants/"+g.ID+"/approve", "", http.StatusOK)
	for _, who := range []string{"stranger", "agent-2"} {
		status, b = h.call(who, "POST", "/v1/grants/"+g.ID+"/revoke", "")
		h.wantError(status, b, http.StatusForbidden, grants.CodeForbidden)
	}
	if st := h.stateOf(g.ID); st != grants.StateApproved {
		t.Fatalf("state %s after refused revokes", st)
	}
	revoked := h.grant("agent-1", "POST", "/v1/grants/"+g.ID+"/revoke", `{"note":"done early"}`, http.StatusOK)
	if revoked.State != grants.StateRevoked || revoked.RevokedBy.Subject != "agent-1" {
		t.Fatalf("revoked %+v", revoked)
	}
	active, err := h.store.Active(context.Background(), policies.Principal{Issuer: h.idp.Issuer, Subject: "agent-1"}, "orders-db", h.clk.Now())
	if err != nil || len(active) != 0 {
		t.Errorf("Active after revoke = %v, %v", active, err)
	}
	// An approver revokes another grant.
	g2 := h.request("agent-2")
	h.grant("bob", "POST", "/v1/grants/"+g2.ID+"/approve", "", http.StatusOK)
	h.grant("carol", "POST", "/v1/grants/"+g2.ID+"/revoke", "", http.StatusOK)

	ev := h.sink.Events()
	want := []audit.Kind{audit.KindGrantCreated, audit.KindGrantApproved, audit.KindGrantRevoked,
		audit.KindGrantCreated, audit.KindGrantApproved, audit.KindGrantRevoked}
	if got := h.sink.kinds(); !slices.Equal(got, want) {
		t.Fatalf("audit %v, want %v", got, want)
	}
	if ev[2].Actor != "" || ev[2].Principal.Subject != "agent-1" || ev[2].Reason != "done early" {
		t.Errorf("self-revoke event %+v", ev[2])
	}
	if ev[5].Actor != "carol" || ev[5].Principal.Subject != "agent-2" {
		t.Errorf("approver revoke event %+v", ev[5])
	}
}

func testVisibility(t *testing.T, h *harness) {
	g := h.request("agent-1")
	status, b := h.call("agent-2", "GET", "/v1/grants/"+g.ID, "")
	h.wantError(status, b, http.StatusForbidden, grants.CodeForbidden)
	status, b = h.call("agent-2", "GET", "/v1/grants?subject=agent-1", "")
	h.wantError(status, b, http.StatusForbidden, grants.CodeForbidden)
	if got := h.grant("bob", "GET", "/v1/grants/"+g.ID, "", http.StatusOK); got.ID != g.ID {
		t.Errorf("approver reads %+v", got)
	}
	status, b = h.call("agent-2", "GET", "/v1/grants", "")
	if status != http.StatusOK || strings.TrimSpace(string(b)) != `{"grants":[]}` {
		t.Errorf("agent-2 lists %d %s, want an empty list", status, b)
	}
	// The same subject from another issuer is someone else: it lists
	// nothing and reads nothing.
	rogue := grants.Grant{Requester: grants.Identity{Issuer: "https://other-idp.example", Subject: "agent-2"}, Target: "orders-db",
		Classes: grants.Classes{policies.ClassWrite}, Duration: time.Minute, Reason: "x"}
	if _, err := h.inner.Create(context.Background(), rogue); err != nil {
		t.Fatal(err)
	}
	if status, b = h.call("agent-2", "GET", "/v1/grants", ""); strings.TrimSpace(string(b)) != `{"grants":[]}` {
		t.Errorf("agent-2 lists another issuer's grant: %s", b)
	}
	status, b = h.call("bob", "GET", "/v1/grants/gr_aaaaaaaaaaaaaaaaaaaa", "")
	h.wantError(status, b, http.StatusNotFound, grants.CodeNotFound)
	status, b = h.call("bob", "POST", "/v1/grants/gr_aaaaaaaaaaaaaaaaaaaa/approve", "")
	h.wantError(status, b, http.StatusNotFound, grants.CodeNotFound)
}

// testAuditFailure: a transition whose audit record fails is not made
// (audit first), and the answer says so.
func testAuditFailure(t *testing.T, h *harness) {
	h.sink.setFail(errors.New("audit disk full"))
	status, b := h.call("agent-1", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"30m","reason":"r"}`)
	e := h.wantError(status, b, http.StatusServiceUnavailable, grants.CodeAuditFailed)
	if !strings.Contains(e.Reason, "not opened") || !strings.Contains(e.Reason, "audit disk full") {
		t.Errorf("reason %q does not say what failed and that nothing changed", e.Reason)
	}
	if list, err := h.inner.List(context.Background(), grants.Filter{}); err != nil || len(list) != 0 {
		t.Fatalf("store holds %v, %v: an unaudited request was opened", list, err)
	}
	h.hook.none(t) // approvers are not told of a request that does not exist

	// Approve and deny: the request stays pending.
	h.sink.setFail(nil)
	g := h.request("agent-1")
	h.sink.setFail(errors.New("audit disk full"))
	for _, op := range []string{"approve", "deny"} {
		status, b = h.call("bob", "POST", "/v1/grants/"+g.ID+"/"+op, "")
		e = h.wantError(status, b, http.StatusServiceUnavailable, grants.CodeAuditFailed)
		if !strings.Contains(e.Reason, g.ID) || !strings.Contains(e.Reason, "audit disk full") {
			t.Errorf("%s: reason %q does not name the grant and the failure", op, e.Reason)
		}
		if st := h.stateOf(g.ID); st != grants.StatePending {
			t.Fatalf("%s: state %s after a failed audit record, want pending", op, st)
		}
	}
	active, err := h.store.Active(context.Background(), policies.Principal{Issuer: h.idp.Issuer, Subject: "agent-1"}, "orders-db", h.clk.Now())
	if err != nil || len(active) != 0 {
		t.Errorf("Active = %v, %v; want no grant", active, err)
	}

	// Revoke: the grant stays approved.
	h.sink.setFail(nil)
	h.grant("bob", "POST", "/v1/grants/"+g.ID+"/approve", "", http.StatusOK)
	h.sink.setFail(errors.New("audit disk full"))
	status, b = h.call("agent-1", "POST", "/v1/grants/"+g.ID+"/revoke", "")
	h.wantError(status, b, http.StatusServiceUnavailable, grants.CodeAuditFailed)
	if st := h.stateOf(g.ID); st != grants.StateApproved {
		t.Errorf("state %s after a failed revoke record, want approved", st)
	}
	h.sink.setFail(nil)
	if got, want := h.sink.kinds(), []audit.Kind{audit.KindGrantCreated, audit.KindGrantApproved}; !slices.Equal(got, want) {
		t.Errorf("audit %v, want %v", got, want)
	}
}

// testTransitionRefusedAfterRecord: when the store refuses a transition
// whose event is already appended (someone else decided first), the trail
// says it was not applied.
func testTransitionRefusedAfterRecord(t *testing.T, h *harness) {
	g := h.request("agent-1")
	h.sink.onAppend(func(e audit.Event) {
		if e.Kind == audit.KindGrantApproved && e.Error == "" {
			// A concurrent deny lands between the record and the approval.
			if _, err := h.inner.Deny(context.Background(), g.ID, policies.Principal{Issuer: h.idp.Issuer, Subject: "carol"}, "", h.clk.Now()); err != nil {
				t.Errorf("concurrent deny: %v", err)
			}
		}
	})
	status, b := h.call("bob", "POST", "/v1/grants/"+g.ID+"/approve", "")
	if e := h.wantError(status, b, http.StatusConflict, grants.CodeNotPending); e.State != "denied" {
		t.Errorf("conflict state %q, want denied", e.State)
	}
	ev := h.sink.Events()
	if len(ev) != 3 || ev[1].Kind != audit.KindGrantApproved || ev[1].Decision != "approved" ||
		ev[2].Kind != audit.KindGrantApproved || ev[2].GrantID != g.ID || !strings.Contains(ev[2].Error, "not applied") {
		t.Errorf("audit %+v, want the approval and then that it was not applied", ev)
	}
	if st := h.stateOf(g.ID); st != grants.StateDenied {
		t.Errorf("state %s", st)
	}
}
