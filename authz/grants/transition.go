package grants

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Errors callers branch on (the API maps them to 404, 409, 403 and 400).
var (
	ErrNotFound = errors.New("grant not found")
	// ErrNotPending: approve or deny of a request already decided.
	ErrNotPending = errors.New("grant request is not pending")
	// ErrNotApproved: revoke of a grant that is not approved.
	ErrNotApproved = errors.New("grant is not approved")
	// ErrExpired: the request or grant has expired.
	ErrExpired = errors.New("grant has expired")
	// ErrSelfApproval: an approver decided their own request.
	ErrSelfApproval = errors.New("an approver cannot decide their own request")
	// ErrInvalid: the request or the call is malformed.
	ErrInvalid = errors.New("invalid grant")
)

// newGrant validates a request and makes it a pending grant at now, with
// the ID the request names (from NewID) or a new one. The
// transitions below and this are the whole lifecycle; the stores only
// persist what they return.
func (c *config) newGrant(in Grant, now time.Time) (Grant, error) {
	if err := c.validate(in); err != nil {
		return Grant{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	now = ms(now)
	id := in.ID
	if id == "" {
		id = NewID()
	}
	g := Grant{
		ID:               id,
		Requester:        in.Requester,
		Target:           in.Target,
		Classes:          in.Classes,
		Statement:        in.Statement,
		Fingerprint:      in.Fingerprint,
		Duration:         in.Duration,
		Reason:           in.Reason,
		State:            StatePending,
		CreatedAt:        now,
		PendingExpiresAt: now.Add(c.pendingTTL),
	}
	return g.clone(), nil
}

func (c *config) validate(g Grant) error {
	switch {
	case g.ID != "" && !validID(g.ID):
		return fmt.Errorf("id %q is not a grant id (make one with NewID)", g.ID)
	case g.Requester.Issuer == "" || g.Requester.Subject == "":
		return errors.New("requester needs an issuer and a subject")
	case g.Target == "":
		return errors.New("target is empty")
	case len(g.Classes) > 0 && g.Fingerprint != "":
		return errors.New("a grant names operation classes or one statement fingerprint, not both")
	case len(g.Classes) == 0 && g.Fingerprint == "":
		return errors.New("a grant needs operation classes or a statement fingerprint")
	case g.Statement != "" && g.Fingerprint == "":
		return errors.New("a statement needs its fingerprint")
	case g.Duration <= 0:
		return fmt.Errorf("duration must be positive, got %s", g.Duration)
	case g.Duration > c.maxDuration:
		return fmt.Errorf("duration %s is longer than the maximum %s", g.Duration, c.maxDuration)
	}
	for _, cl := range g.Classes {
		if !slices.Contains(policies.AllClasses, cl) {
			return fmt.Errorf("unknown operation class %d", int(cl))
		}
	}
	return nil
}

// apply performs the transition of g into to (approved, denied or revoked)
// by by at now. It returns the grant to persist and persist=true on
// success, and also when it finds g expired by time (the store records the
// expiry and publishes it; err is then ErrExpired). A store persists only
// if the state it holds is still g.State.
func apply(g Grant, to State, by policies.Principal, note string, now time.Time) (next Grant, persist bool, err error) {
	if by.Issuer == "" || by.Subject == "" {
		return Grant{}, false, fmt.Errorf("%w: the approver needs an issuer and a subject", ErrInvalid)
	}
	now = ms(now)
	from := StatePending
	if to == StateRevoked {
		from = StateApproved
	} else if isSelf(g.Requester, by) {
		return Grant{}, false, fmt.Errorf("%s cannot %s grant %s: %w", by.Subject, verb(to), g.ID, ErrSelfApproval)
	}
	switch eff := g.StateAt(now); {
	case g.State == StateExpired:
		return Grant{}, false, fmt.Errorf("cannot %s grant %s: %w", verb(to), g.ID, ErrExpired)
	case g.State != from && from == StatePending:
		return Grant{}, false, fmt.Errorf("cannot %s grant %s, it is %s: %w", verb(to), g.ID, g.State, ErrNotPending)
	case g.State != from:
		return Grant{}, false, fmt.Errorf("cannot revoke grant %s, it is %s: %w", g.ID, g.State, ErrNotApproved)
	case eff == StateExpired:
		g.State = StateExpired
		return g, true, fmt.Errorf("cannot %s grant %s: %w", verb(to), g.ID, ErrExpired)
	}
	g.State = to
	switch to {
	case StateApproved, StateDenied:
		g.DecidedAt, g.DecidedBy, g.DecisionNote = now, IdentityOf(by), note
		if to == StateApproved {
			g.ExpiresAt = ms(now.Add(g.Duration))
		}
	case StateRevoked:
		g.RevokedAt, g.RevokedBy, g.RevokeNote = now, IdentityOf(by), note
	default:
		return Grant{}, false, fmt.Errorf("no transition into %s", to)
	}
	return g, true, nil
}

// isSelf reports whether by is the requester, or the same human: the
// requester's on-behalf-of human, or an agent acting for the requester or
// for the requester's human. Act-claim subjects are compared without
// their issuer, so a coincidence refuses rather than allows.
func isSelf(req Identity, by policies.Principal) bool {
	switch {
	case by.Issuer == req.Issuer && by.Subject == req.Subject:
		return true
	case req.OnBehalfOf != "" && (by.Subject == req.OnBehalfOf || by.OnBehalfOf == req.OnBehalfOf):
		return true
	case by.OnBehalfOf != "" && by.OnBehalfOf == req.Subject:
		return true
	}
	return false
}

func verb(to State) string {
	switch to {
	case StateApproved:
		return "approve"
	case StateDenied:
		return "deny"
	case StateRevoked:
		return "revoke"
	}
	return "move to " + to.String()
}

// keepFor is how long a store keeps g after now: until it ends, plus the
// retention. At least a second, so that a Redis TTL is never zero.
func (c *config) keepFor(g Grant, now time.Time) time.Duration {
	return max(g.endsAt().Add(c.retention).Sub(now), time.Second)
}

// horizon bounds how long any grant can matter after its creation; index
// entries older than that are dead.
func (c *config) horizon() time.Duration {
	return c.pendingTTL + c.maxDuration + c.retention
}
