package grants

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

func testApproveActive(t *testing.T, s Store, clk *fakeClock) {
	ctx := t.Context()
	g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
	clk.Advance(time.Minute)
	now := clk.Now()
	got, err := s.Approve(ctx, g.ID, bob, "go ahead", now)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != StateApproved || !got.DecidedAt.Equal(now) || got.DecidedBy.Subject != "bob" ||
		got.DecisionNote != "go ahead" || !got.ExpiresAt.Equal(now.Add(15*time.Minute)) {
		t.Errorf("approved grant = %+v", got)
	}
	if stored, _ := s.Get(ctx, g.ID); fmt.Sprint(stored) != fmt.Sprint(got) {
		t.Errorf("Get after approve = %+v\nwant %+v", stored, got)
	}
	active, err := s.Active(ctx, agent, "orders-db", now)
	if err != nil {
		t.Fatal(err)
	}
	want := []policies.Grant{{ID: g.ID, Classes: []policies.OperationClass{policies.ClassWrite}}}
	if fmt.Sprint(active) != fmt.Sprint(want) {
		t.Errorf("Active = %+v, want %+v", active, want)
	}
	// Other principals and targets see nothing; issuer matters.
	for _, q := range []struct {
		p      policies.Principal
		target string
	}{
		{agent2, "orders-db"},
		{agent, "cluster-api"},
		{policies.Principal{Issuer: "https://other-idp", Subject: agent.Subject}, "orders-db"},
	} {
		if a, err := s.Active(ctx, q.p, q.target, now); err != nil || len(a) != 0 {
			t.Errorf("Active(%s@%s, %s) = %v, %v; want none", q.p.Subject, q.p.Issuer, q.target, a, err)
		}
	}
	if _, err := s.Approve(ctx, g.ID, carol, "", now); !errors.Is(err, ErrNotPending) {
		t.Errorf("second approval: got %v, want ErrNotPending", err)
	}
	if _, err := s.Deny(ctx, g.ID, carol, "", now); !errors.Is(err, ErrNotPending) {
		t.Errorf("deny after approval: got %v, want ErrNotPending", err)
	}
}

func testFingerprintGrant(t *testing.T, s Store, clk *fakeClock) {
	req := Grant{Requester: IdentityOf(agent), Target: "orders-db", Statement: "DELETE FROM orders WHERE id = 7", Fingerprint: "a1b2 c3", Duration: time.Hour}
	g := mustCreate(t, s, req)
	if _, err := s.Approve(t.Context(), g.ID, bob, "", clk.Now()); err != nil {
		t.Fatal(err)
	}
	active, err := s.Active(t.Context(), agent, "orders-db", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(active) != 1 || active[0].ID != g.ID || active[0].Fingerprint != "a1b2 c3" || len(active[0].Classes) != 0 {
		t.Errorf("Active = %+v, want the one-statement grant", active)
	}
	if got, _ := s.Get(t.Context(), g.ID); got.Statement != req.Statement {
		t.Errorf("statement = %q", got.Statement)
	}
}

func testExpiry(t *testing.T, s Store, clk *fakeClock) {
	ctx := t.Context()
	g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
	if _, err := s.Approve(ctx, g.ID, bob, "", clk.Now()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(15*time.Minute - time.Millisecond)
	if a, _ := s.Active(ctx, agent, "orders-db", clk.Now()); len(a) != 1 {
		t.Errorf("a millisecond before expiry: Active = %v, want the grant", a)
	}
	clk.Advance(time.Millisecond)
	if a, err := s.Active(ctx, agent, "orders-db", clk.Now()); err != nil || len(a) != 0 {
		t.Errorf("at expiry: Active = %v, %v; want none", a, err)
	}
	if got, _ := s.Get(ctx, g.ID); got.State != StateExpired {
		t.Errorf("Get at expiry: state %s, want expired", got.State)
	}
	_, err := s.Revoke(ctx, g.ID, bob, "", clk.Now())
	wantErr(t, err, ErrExpired)

	// A pending request expires if nobody decides within the pending TTL.
	p := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassDDL))
	clk.Advance(30 * time.Minute)
	_, err = s.Approve(ctx, p.ID, bob, "", clk.Now())
	wantErr(t, err, ErrExpired)
	_, err = s.Deny(ctx, p.ID, bob, "", clk.Now())
	wantErr(t, err, ErrExpired)
	if got, _ := s.Get(ctx, p.ID); got.State != StateExpired {
		t.Errorf("pending past its TTL: state %s, want expired", got.State)
	}
	if a, _ := s.Active(ctx, agent, "orders-db", clk.Now()); len(a) != 0 {
		t.Errorf("Active = %v, want none", a)
	}
}

func testDeny(t *testing.T, s Store, clk *fakeClock) {
	ctx := t.Context()
	g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
	got, err := s.Deny(ctx, g.ID, bob, "not today", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got.State != StateDenied || got.DecidedBy.Subject != "bob" || got.DecisionNote != "not today" || !got.ExpiresAt.IsZero() {
		t.Errorf("denied grant = %+v", got)
	}
	_, err = s.Approve(ctx, g.ID, carol, "", clk.Now())
	wantErr(t, err, ErrNotPending)
	_, err = s.Revoke(ctx, g.ID, carol, "", clk.Now())
	wantErr(t, err, ErrNotApproved)
	if a, _ := s.Active(ctx, agent, "orders-db", clk.Now()); len(a) != 0 {
		t.Errorf("Active after deny = %v", a)
	}
}

func testRevoke(t *testing.T, s Store, clk *fakeClock) {
	ctx := t.Context()
	pending := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
	_, err := s.Revoke(ctx, pending.ID, bob, "", clk.Now())
	wantErr(t, err, ErrNotApproved)

	keep := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassRead))
	g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
	for _, id := range []string{keep.ID, g.ID} {
		if _, err := s.Approve(ctx, id, bob, "", clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(time.Minute)
	got, err := s.Revoke(ctx, g.ID, carol, "incident over", clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got.State != StateRevoked || got.RevokedBy.Subject != "carol" || got.RevokeNote != "incident over" || got.DecidedBy.Subject != "bob" {
		t.Errorf("revoked grant = %+v", got)
	}
	a, err := s.Active(ctx, agent, "orders-db", clk.Now())
	if err != nil || len(a) != 1 || a[0].ID != keep.ID {
		t.Errorf("Active right after revoke = %v, %v; want only %s", a, err, keep.ID)
	}
	_, err = s.Revoke(ctx, g.ID, carol, "", clk.Now())
	wantErr(t, err, ErrNotApproved)
	_, err = s.Approve(ctx, g.ID, carol, "", clk.Now())
	wantErr(t, err, ErrNotPending)
}

func testSelfApproval(t *testing.T, s Store, clk *fakeClock) {
	ctx := t.Context()
	g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
	for name, by := range map[string]policies.Principal{
		"requester":                  {Issuer: agent.Issuer, Subject: agent.Subject},
		"the human it acts for":      {Issuer: "https://idp", Subject: "alice"},
		"another agent of the human": {Issuer: "https://idp", Subject: "agent-9", OnBehalfOf: "alice"},
	} {
		_, err := s.Approve(ctx, g.ID, by, "", clk.Now())
		if !errors.Is(err, ErrSelfApproval) {
			t.Errorf("approve by %s: got %v, want ErrSelfApproval", name, err)
		}
		if _, err := s.Deny(ctx, g.ID, by, "", clk.Now()); !errors.Is(err, ErrSelfApproval) {
			t.Errorf("deny by %s: got %v, want ErrSelfApproval", name, err)
		}
	}
	// A human may not approve for the agent acting on their behalf either.
	h := mustCreate(t, s, classReq(bob, "orders-db", policies.ClassWrite))
	_, err := s.Approve(ctx, h.ID, policies.Principal{Issuer: "https://idp", Subject: "bot-7", OnBehalfOf: "bob"}, "", clk.Now())
	wantErr(t, err, ErrSelfApproval)
	if got, _ := s.Get(ctx, g.ID); got.State != StatePending {
		t.Errorf("after refused self-approvals: state %s, want pending", got.State)
	}
	// The same subject at another issuer is another principal.
	if _, err := s.Approve(ctx, g.ID, policies.Principal{Issuer: "https://other-idp", Subject: agent.Subject}, "", clk.Now()); err != nil {
		t.Errorf("approve by another issuer's %s: %v", agent.Subject, err)
	}
	_, err = s.Approve(ctx, h.ID, policies.Principal{Issuer: "https://idp"}, "", clk.Now())
	wantErr(t, err, ErrInvalid)
}
