package authz_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
)

// TestHTTPEarlyRefusalsAreAudited: every refusal made before a policy
// decision (target, source, token, credential) is recorded, with its
// reason and without the token.
func TestHTTPEarlyRefusalsAreAudited(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.idp.Token(t, "agent-1")
	stale := f.idp.Token(t, "stale")
	lan := httpCheck("lan-api", "GET", "/v1/contacts", tok, nil)
	cases := []struct {
		name   string
		req    *authv3.CheckRequest
		token  string
		status int
		kind   audit.Kind
		target string
		reason string
	}{
		{"no token", httpCheck("cluster-api", "GET", "/api", "", nil), "", 401, audit.KindAuthn, "cluster-api", "Bearer"},
		{"not a JWT", httpCheck("cluster-api", "GET", "/api", "not.a.jwt", nil), "not.a.jwt", 401, audit.KindAuthn, "cluster-api", ""},
		{"expired token", httpCheck("cluster-api", "GET", "/api", stale, nil), stale, 401, audit.KindAuthn, "cluster-api", "expired"},
		{"unknown target", httpCheck("no-such-target", "GET", "/", tok, nil), tok, 403, audit.KindAuthzDecision, "no-such-target", "no-such-target"},
		{"postgres target on an HTTP route", httpCheck("orders-db", "GET", "/", tok, nil), tok, 403, audit.KindAuthzDecision, "orders-db", "no http target"},
		{"disabled target", httpCheck("off-api", "GET", "/", tok, nil), tok, 403, audit.KindAuthzDecision, "off-api", "disabled"},
		{"source not allowed", lan, tok, 403, audit.KindAuthzDecision, "lan-api", "your address"},
		{"credential unavailable", httpCheck("unset-api", "GET", "/", tok, nil), tok, 503, audit.KindAuthzDecision, "unset-api", "credential"},
	}
	for _, tc := range cases {
		before := len(f.audit.all())
		r := refusal(t, f.check(t, tc.req), tc.status)
		ev := f.audit.all()[before:]
		if len(ev) != 1 {
			t.Errorf("%s: %d events, want 1: %+v", tc.name, len(ev), ev)
			continue
		}
		e := ev[0]
		if e.Kind != tc.kind || e.Decision != "deny" || e.Target != tc.target || e.Source != "127.0.0.1:50123" ||
			e.Reason == "" || !strings.Contains(e.Reason, tc.reason) || !strings.Contains(e.Reason, r.Reason) {
			t.Errorf("%s: audit %+v for refusal %+v", tc.name, e, r)
		}
		if tc.token != "" && strings.Contains(fmt.Sprintf("%+v", e), tc.token) {
			t.Errorf("%s: the token is in the audit event", tc.name)
		}
		if tc.kind == audit.KindAuthn && e.Principal.Subject != "" {
			t.Errorf("%s: an unverified token's subject %q was recorded", tc.name, e.Principal.Subject)
		}
	}

	// A refusal stays a refusal (not a 503) when its record fails.
	f.audit.set(func(r *recorder) { r.fail = true })
	refusal(t, f.check(t, httpCheck("cluster-api", "GET", "/api", "", nil)), 401)
	refusal(t, f.check(t, httpCheck("off-api", "GET", "/", tok, nil)), 403)
}

// TestApprovalRequestAuditFirst: a request that cannot be recorded is not
// opened, and the agent is told the audit store is unavailable.
func TestApprovalRequestAuditFirst(t *testing.T) {
	f := newFixture(t, nil)
	f.audit.set(func(r *recorder) { r.failKind = audit.KindGrantCreated })
	tok := f.idp.Token(t, "agent-1")
	r := refusal(t, f.check(t, httpCheck("cluster-api", "DELETE", "/api/v1/namespaces/default/pods/web-1", tok, nil)), 503)
	if r.Error != "unavailable" || !strings.Contains(r.Reason, "audit store is unavailable") || r.ApprovalRequestID != "" {
		t.Errorf("refusal %+v, want the audit store unavailable and no request", r)
	}
	open, err := f.store.List(context.Background(), grants.Filter{})
	if err != nil || len(open) != 0 {
		t.Errorf("store holds %+v, %v: a request was opened unrecorded", open, err)
	}
}

// TestAuditedGrants: the gate's adapter records each request it opens,
// before opening it, and opens none it could not record.
func TestAuditedGrants(t *testing.T) {
	store := grants.NewEmbeddedStore()
	rec := &recorder{}
	g := authz.AuditedGrants(store, rec)
	p := policies.Principal{Issuer: "https://idp", Subject: "agent-1", Groups: []string{"agents"}}
	now := time.Now().UTC()
	req := authz.ApprovalRequest{Principal: p, Target: "orders-db", Fingerprint: "fp-1", Statement: "DELETE FROM t",
		Reason: "refused statement", Duration: time.Hour, Now: now}

	rec.set(func(r *recorder) { r.fail = true })
	if _, err := g.RequestApproval(context.Background(), req); !errors.Is(err, authz.ErrAuditUnavailable) {
		t.Fatalf("RequestApproval with the audit store down: %v, want ErrAuditUnavailable", err)
	}
	if open, _ := store.List(context.Background(), grants.Filter{}); len(open) != 0 {
		t.Fatalf("opened %+v unrecorded", open)
	}

	rec.set(func(r *recorder) { r.fail = false })
	id, err := g.RequestApproval(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	ev := rec.all()
	if len(ev) != 1 {
		t.Fatalf("audit %+v, want one event", ev)
	}
	e := ev[0]
	if e.Kind != audit.KindGrantCreated || e.GrantID != id || e.Principal.Subject != "agent-1" || e.Target != "orders-db" ||
		e.Fingerprint != "fp-1" || e.Request != "DELETE FROM t" || e.Decision != "pending" || e.Reason != "refused statement" || !e.Time.Equal(now) {
		t.Errorf("event %+v", e)
	}
	if got, err := store.Get(context.Background(), id); err != nil || got.State != grants.StatePending || got.Fingerprint != "fp-1" {
		t.Errorf("store has %+v, %v", got, err)
	}
	// A retry reuses the open request, and records nothing new.
	if again, err := g.RequestApproval(context.Background(), req); err != nil || again != id {
		t.Errorf("retry: %s, %v; want %s", again, err, id)
	}
	if n := len(rec.all()); n != 1 {
		t.Errorf("%d events after a retry, want 1", n)
	}
}

// TestAuditAppendEndsBeforeEnvoy: an audit store that stops answering
// is cut off before envoy.authz_timeout, so the agent gets sluice's 503
// and not Envoy's own failure.
func TestAuditAppendEndsBeforeEnvoy(t *testing.T) {
	const timeout = 500 * time.Millisecond
	f := newFixture(t, nil, func(c *policies.Config) { c.Envoy.AuthzTimeout = timeout })
	tok := f.idp.Token(t, "agent-1")
	allowed := httpCheck("cluster-api", "GET", "/api", tok, nil)
	f.check(t, allowed) // the token is verified and cached
	f.audit.set(func(r *recorder) { r.hang = true })

	// Envoy would give up at the timeout; the test gives the server more,
	// so that only sluice's own deadline can end the call in time.
	checkWithin := func(req *authv3.CheckRequest) (*authv3.CheckResponse, time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*timeout)
		defer cancel()
		start := time.Now()
		resp, err := f.client.Check(ctx, req)
		if err != nil {
			t.Fatalf("Check: %v (the append was not bounded)", err)
		}
		return resp, time.Since(start)
	}
	// Whether the answer beats Envoy's timeout is not asserted (a timed
	// assertion would fail on a loaded machine); that it comes at all,
	// from sluice's own deadline and long before the caller's, is.
	resp, took := checkWithin(allowed)
	t.Logf("answered after %s; Envoy gives up at %s", took, timeout)
	if r := refusal(t, resp, 503); r.Error != "unavailable" || !strings.Contains(r.Reason, "audit store is unavailable") {
		t.Errorf("refusal %+v", r)
	}
	resp, took = checkWithin(httpCheck("cluster-api", "DELETE", "/api/v1/namespaces/default/pods/web-1", tok, nil))
	if r := refusal(t, resp, 503); !strings.Contains(r.Reason, "audit store is unavailable") {
		t.Errorf("approval: %+v after %s", r, took)
	}
	// A refusal recorded best effort is not held up either.
	resp, took = checkWithin(&authv3.CheckRequest{Attributes: &authv3.AttributeContext{}})
	if resp.GetStatus().GetCode() != int32(codes.PermissionDenied) {
		t.Errorf("network refusal %v after %s", resp, took)
	}
}
