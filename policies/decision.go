package policies

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Principal is who is asking, from a verified token (design.md section 5).
type Principal struct {
	Issuer  string
	Subject string
	Groups  []string
	// Client is the OAuth client (azp or client_id claim).
	Client string
	// OnBehalfOf is the human an RFC 8693 act claim names, if any.
	OnBehalfOf string
}

// Outcome is what the gateway does with a request or statement.
type Outcome int

// Outcomes, in the order they win: Deny beats ApprovalRequired beats Allow.
const (
	Allow Outcome = iota + 1
	ApprovalRequired
	Deny
)

// String names the outcome as audit records and metrics show it.
func (o Outcome) String() string {
	switch o {
	case Allow:
		return "allow"
	case ApprovalRequired:
		return "approval_required"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Request is one thing to decide: a statement (its classes and fingerprint)
// or an HTTP request (already classified) on a target.
type Request struct {
	Principal Principal
	Target    string
	// Classes are every class found in the statement or request; the
	// decision considers each one.
	Classes []OperationClass
	// Fingerprint identifies the statement's shape, for one-statement
	// grants.
	Fingerprint string
}

// Grant is an approved, unexpired grant as the decision needs it.
type Grant struct {
	ID          string
	Classes     []OperationClass
	Fingerprint string
}

// covers reports whether the grant allows class c for a statement with fp.
func (g Grant) covers(c OperationClass, fp string) bool {
	if g.Fingerprint != "" {
		return fp != "" && g.Fingerprint == fp
	}
	return slices.Contains(g.Classes, c)
}

// Decision is the outcome with everything later stages and the audit record
// need. Reason is always set and is shown to the agent on refusal.
type Decision struct {
	Outcome Outcome
	Reason  string
	// Class is the class the outcome was decided on (the one that denied or
	// needs approval; for an allow, the most dangerous class).
	Class OperationClass
	// Policies are the names of the policies that matched.
	Policies []string
	// GrantID is the grant that allowed it, if one did.
	GrantID string
	// Masks are the masking rules to apply to results (allow only).
	Masks []string
	// MaxRows and MaxBytes are the tightest non-zero budgets of the
	// matching policies; 0 means none.
	MaxRows, MaxBytes int64
	// Wait is how long a statement that needs approval may be held.
	Wait time.Duration
}

// Decide evaluates req against the config's policies and the principal's
// active grants on the target. It is a pure function: no I/O, no clock.
//
// For each class of the request: a matching policy that denies it denies;
// else one that requires a grant needs an active grant covering it (else
// approval is required); else one that allows it allows; else it is
// denied. The request's outcome is the worst of its classes' outcomes, and
// nothing matching denies.
func (c *Config) Decide(req Request, grants []Grant) Decision {
	var matched []*Policy
	for i := range c.Policies {
		p := &c.Policies[i]
		if slices.Contains(p.Targets, req.Target) && p.Principals.match(req.Principal) {
			matched = append(matched, p)
		}
	}
	d := Decision{Outcome: Allow}
	for _, p := range matched {
		d.Policies = append(d.Policies, p.Name)
	}
	if len(matched) == 0 {
		return Decision{Outcome: Deny, Reason: fmt.Sprintf("no policy grants %s access to target %s", req.Principal.describe(), req.Target)}
	}
	classes := req.Classes
	if len(classes) == 0 {
		// Nothing classified it: the most restricted class, never "fine".
		classes = []OperationClass{ClassUnknown}
	}
	worst := Decision{Outcome: Allow}
	for _, cl := range classes {
		cd := decideClass(matched, cl, req, grants)
		if cd.Outcome > worst.Outcome || (cd.Outcome == worst.Outcome && cl > worst.Class) {
			worst = cd
		}
	}
	d.Outcome, d.Reason, d.Class, d.GrantID, d.Wait = worst.Outcome, worst.Reason, worst.Class, worst.GrantID, worst.Wait
	if d.Outcome != Allow {
		return d
	}
	for _, p := range matched {
		for _, m := range p.Mask {
			if !slices.Contains(d.Masks, m) {
				d.Masks = append(d.Masks, m)
			}
		}
		d.MaxRows = tighter(d.MaxRows, p.MaxRows)
		d.MaxBytes = tighter(d.MaxBytes, p.MaxBytes)
	}
	return d
}

func decideClass(matched []*Policy, cl OperationClass, req Request, grants []Grant) Decision {
	for _, p := range matched {
		if slices.Contains(p.Deny, cl) {
			return Decision{Outcome: Deny, Class: cl, Reason: fmt.Sprintf("%s is denied on %s by policy %s", cl, req.Target, p.Name)}
		}
	}
	var gated *Policy
	var wait time.Duration
	for _, p := range matched {
		if slices.Contains(p.RequireGrant, cl) {
			if gated == nil {
				gated = p
			}
			wait = max(wait, p.Wait)
		}
	}
	if gated != nil {
		for _, g := range grants {
			if g.covers(cl, req.Fingerprint) {
				return Decision{Outcome: Allow, Class: cl, GrantID: g.ID, Reason: fmt.Sprintf("%s on %s allowed by grant %s (policy %s)", cl, req.Target, g.ID, gated.Name)}
			}
		}
		return Decision{Outcome: ApprovalRequired, Class: cl, Wait: wait, Reason: fmt.Sprintf("%s on %s needs an approved grant (policy %s)", cl, req.Target, gated.Name)}
	}
	for _, p := range matched {
		if slices.Contains(p.Allow, cl) {
			return Decision{Outcome: Allow, Class: cl, Reason: fmt.Sprintf("%s on %s allowed by policy %s", cl, req.Target, p.Name)}
		}
	}
	return Decision{Outcome: Deny, Class: cl, Reason: fmt.Sprintf("no policy allows %s on %s", cl, req.Target)}
}

func tighter(cur, limit int64) int64 {
	if limit > 0 && (cur == 0 || limit < cur) {
		return limit
	}
	return cur
}

// match reports whether the principal is selected: any listed subject,
// group or client matches; "*" in groups matches every principal.
func (s Principals) match(p Principal) bool {
	if slices.Contains(s.Subjects, p.Subject) || (p.Client != "" && slices.Contains(s.Clients, p.Client)) {
		return true
	}
	for _, g := range s.Groups {
		if g == "*" || slices.Contains(p.Groups, g) {
			return true
		}
	}
	return false
}

func (p Principal) describe() string {
	var b strings.Builder
	b.WriteString(p.Subject)
	if p.OnBehalfOf != "" {
		b.WriteString(" (on behalf of ")
		b.WriteString(p.OnBehalfOf)
		b.WriteString(")")
	}
	return b.String()
}
