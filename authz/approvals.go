package authz

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
)

// DefaultApprovalDuration is how long a grant opened by a refusal lasts once
// approved, unless the policy or grants.max_duration allow less.
const DefaultApprovalDuration = time.Hour

// ErrAuditUnavailable is what RequestApproval wraps when the request's
// audit record could not be written: the request was not opened, and the
// edge answers that the audit store is unavailable.
var ErrAuditUnavailable = errors.New("the audit store is unavailable")

// storeGrants adapts a grants.Store to the server's GrantStore.
type storeGrants struct {
	s grants.Store
	// sink records each approval request before it is opened; nil
	// records nothing (GrantsFrom, until NewServer gives it its sink).
	sink audit.Sink
}

// GrantsFrom adapts a grant store for the ext_authz server and the
// Postgres gate. Approval requests it opens are recorded only once it is
// given to NewServer, which lends it the server's audit sink; elsewhere use
// AuditedGrants.
func GrantsFrom(s grants.Store) GrantStore { return storeGrants{s: s} }

// AuditedGrants is GrantsFrom that records every approval request it
// opens (a grant.requested event) in sink before opening it, and opens
// none it could not record.
func AuditedGrants(s grants.Store, sink audit.Sink) GrantStore { return storeGrants{s: s, sink: sink} }

// withAudit returns g recording in sink, if g is a storeGrants that
// records nowhere yet.
func withAudit(g GrantStore, sink audit.Sink) GrantStore {
	if sg, ok := g.(storeGrants); ok && sg.sink == nil {
		sg.sink = sink
		return sg
	}
	return g
}

func (a storeGrants) Active(ctx context.Context, p policies.Principal, target string, now time.Time) ([]policies.Grant, error) {
	return a.s.Active(ctx, p, target, now)
}

// RequestApproval reuses the principal's open request for the same target
// and class (or statement), so an agent retrying a refused request does not
// flood approvers with duplicates; otherwise it opens one, audit first: the
// grant.requested event is appended before the request exists (approvers
// are told of it at once), and if the append fails no request is opened
// and the error wraps ErrAuditUnavailable.
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
	if a.sink == nil {
		g, err := a.s.Create(ctx, in)
		if err != nil {
			return "", err
		}
		return g.ID, nil
	}
	in.ID = grants.NewID()
	ev := requestedEvent(r, in)
	if err := a.sink.Append(ctx, ev); err != nil {
		return "", fmt.Errorf("%w: approval request not opened: %w", ErrAuditUnavailable, err)
	}
	g, err := a.s.Create(ctx, in)
	if err != nil {
		// Recorded but not opened: say so, best effort (the store is what
		// failed; its error goes back either way), with a short grace of
		// its own, since the store may have failed by spending the
		// caller's deadline.
		ev.Decision, ev.Error = "", "not applied: "+err.Error()
		nctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unappliedGrace)
		_ = a.sink.Append(nctx, ev)
		cancel()
		return "", err
	}
	return g.ID, nil
}

// unappliedGrace bounds the record of an approval request that was
// recorded but could not be opened.
const unappliedGrace = 250 * time.Millisecond

// requestedEvent is the grant.requested event of the approval request in,
// which r's refusal opens.
func requestedEvent(r ApprovalRequest, in grants.Grant) audit.Event {
	now := r.Now
	if now.IsZero() {
		now = time.Now()
	}
	return audit.Event{Time: now.UTC(), Kind: audit.KindGrantCreated, Principal: r.Principal, Target: r.Target,
		Request: in.Statement, Fingerprint: in.Fingerprint, Classes: slices.Clone([]policies.OperationClass(in.Classes)),
		Decision: grants.StatePending.String(), Reason: in.Reason, GrantID: in.ID}
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
