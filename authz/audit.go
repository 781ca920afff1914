package authz

import (
	"context"
	"errors"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

// Envoy ends an ext_authz call at envoy.authz_timeout and then answers
// with its own failure, which tells the agent nothing. So the audit
// appends of a Check end a little before that budget, counted from the
// start of the Check, and sluice answers first: 503, the audit store is
// unavailable.
const (
	// auditMarginMax is the most kept back from the budget, for the
	// response to travel back to Envoy.
	auditMarginMax = 100 * time.Millisecond
	// auditMarginMin is the least kept back, for very short budgets.
	auditMarginMin = 5 * time.Millisecond
)

// errAuditDeadline is the cause of an append cut off by the Check's
// budget; it reaches the logs through the audit store's error.
var errAuditDeadline = errors.New("the audit append did not finish within envoy.authz_timeout")

// auditBudget is how long after its start a Check may wait for its audit
// appends: the authz timeout less a tenth of it, kept within
// [auditMarginMin, auditMarginMax].
func auditBudget(authzTimeout time.Duration) time.Duration {
	if authzTimeout <= 0 {
		authzTimeout = policies.DefaultAuthzTimeout
	}
	margin := min(max(authzTimeout/10, auditMarginMin), auditMarginMax)
	return max(authzTimeout-margin, 0)
}

// check is one Check call: the server, and the instant its audit appends
// must end by.
type check struct {
	*Server
	auditBy time.Time
}

// auditCtx bounds ctx by the Check's audit deadline.
func (c *check) auditCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithDeadlineCause(ctx, c.auditBy, errAuditDeadline)
}

// record appends ev within the Check's budget. An allow or an approval
// request must not go out unless this succeeded.
func (c *check) record(ctx context.Context, ev audit.Event) error {
	ctx, cancel := c.auditCtx(ctx)
	defer cancel()
	err := c.opts.Audit.Append(ctx, ev)
	if err != nil {
		c.log.Error("AUDIT RECORD FAILED; refusing", "kind", string(ev.Kind), "target", ev.Target, "subject", ev.Principal.Subject,
			"decision", ev.Decision, "err", err)
	}
	return err
}

// recordRefusal appends the event of a refusal, best effort: a refusal
// lets nothing through, so it is answered even if its record fails (the
// failure is logged). Not refusing for want of a record would be worse.
func (c *check) recordRefusal(ctx context.Context, ev audit.Event) {
	ctx, cancel := c.auditCtx(ctx)
	defer cancel()
	if err := c.opts.Audit.Append(ctx, ev); err != nil {
		c.log.Error("AUDIT RECORD FAILED for a refusal; refused anyway", "kind", string(ev.Kind), "target", ev.Target,
			"subject", ev.Principal.Subject, "reason", ev.Reason, "err", err)
	}
}

// refusalEvent is the authz.decision event of a request refused before
// (or without) a policy decision: Reason is what the agent is told, Error
// what went wrong inside sluice, if anything.
func refusalEvent(now time.Time, p policies.Principal, target, source, request, reason, internal string) audit.Event {
	return audit.Event{Time: now, Kind: audit.KindAuthzDecision, Principal: p, Target: target, Source: source, Request: request,
		Decision: policies.Deny.String(), Reason: reason, Error: internal}
}

// authnRefusalEvent is the authn event of a request whose token was
// missing or refused. It carries the reason only: never the token, nor
// anything read from a token that did not verify.
func authnRefusalEvent(now time.Time, target, source, request, reason string) audit.Event {
	return audit.Event{Time: now, Kind: audit.KindAuthn, Target: target, Source: source, Request: request,
		Decision: policies.Deny.String(), Reason: reason}
}
