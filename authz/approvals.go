package authz

import (
	"context"
	"slices"
	"time"

	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
)

// DefaultApprovalDuration is how long a grant opened by a refusal lasts once
// approved, unless the policy or grants.max_duration allow less.
const DefaultApprovalDuration = time.Hour

// storeGrants adapts a grants.Store to the server's GrantStore.
type storeGrants struct{ s grants.Store }

// GrantsFrom adapts a grant store for the ext_authz server and the
// Postgres gate.
func GrantsFrom(s grants.Store) GrantStore { return storeGrants{s} }

func (a storeGrants) Active(ctx context.Context, p policies.Principal, target string, now time.Time) ([]policies.Grant, error) {
	return a.s.Active(ctx, p, target, now)
}

// RequestApproval reuses the principal's open request for the same target
// and class (or statement), so an agent retrying a refused request does not
// flood approvers with duplicates; otherwise it opens one.
func (a storeGrants) RequestApproval(ctx context.Context, r ApprovalRequest) (string, error) {
	open, err := a.s.List(ctx, grants.Filter{Target: r.Target, Subject: r.Principal.Subject, State: grants.StatePending, Limit: grants.MaxListLimit})
	if err != nil {
		return "", err
	}
	for _, g := range open {
		if g.Requester.Issuer != r.Principal.Issuer {
			continue
		}
		if r.Fingerprint != "" && g.Fingerprint == r.Fingerprint {
			return g.ID, nil
		}
		if r.Fingerprint == "" && g.Fingerprint == "" && slices.Contains(g.Classes, r.Class) {
			return g.ID, nil
		}
	}
	in := grants.Grant{Requester: grants.IdentityOf(r.Principal), Target: r.Target, Reason: r.Reason, Duration: r.Duration}
	if r.Fingerprint != "" {
		in.Fingerprint, in.Statement = r.Fingerprint, r.Statement
	} else {
		in.Classes = grants.Classes{r.Class}
	}
	g, err := a.s.Create(ctx, in)
	if err != nil {
		return "", err
	}
	return g.ID, nil
}

// GrantStates is a GrantStore that can also say where one request stands,
// so that a statement held for approval ends as soon as it is decided.
type GrantStates interface {
	State(ctx context.Context, id string) (grants.State, error)
}

// State returns the request's state.
func (a storeGrants) State(ctx context.Context, id string) (grants.State, error) {
	g, err := a.s.Get(ctx, id)
	if err != nil {
		return 0, err
	}
	return g.State, nil
}

// ApprovalDuration is what a grant opened by a refusal asks for: the
// default, capped by every limit that applies.
func ApprovalDuration(cfg *policies.Config, target string) time.Duration {
	d := min(DefaultApprovalDuration, cfg.Grants.MaxDuration)
	for _, p := range cfg.Policies {
		if p.MaxGrantDuration > 0 && slices.Contains(p.Targets, target) {
			d = min(d, p.MaxGrantDuration)
		}
	}
	return d
}
