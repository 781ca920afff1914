package grants

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Grant is a just-in-time grant: a request by a principal for classes of
// operations, or for one statement, on a target for a while, and what
// became of it. Times are UTC and whole milliseconds, so the two stores
// and Redis's millisecond scores agree on the instant a grant expires.
type Grant struct {
	// ID is random and URL-safe: "gr_" and 20 base32 characters.
	ID        string   `json:"id"`
	Requester Identity `json:"requester"`
	Target    string   `json:"target"`
	// Classes, or Fingerprint (with the Statement it was taken from, for
	// the approver to read): exactly one of the two is set.
	Classes     Classes `json:"classes,omitempty"`
	Statement   string  `json:"statement,omitempty"`
	Fingerprint string  `json:"fingerprint,omitempty"`
	// Duration is how long the grant lasts once approved.
	Duration time.Duration `json:"-"` // as a string, see MarshalJSON
	Reason   string        `json:"reason,omitempty"`
	// State is the recorded state; StateAt says what it is at a given time.
	State            State     `json:"state"`
	CreatedAt        time.Time `json:"created_at"`
	PendingExpiresAt time.Time `json:"pending_expires_at"`
	DecidedAt        time.Time `json:"decided_at,omitzero"`
	DecidedBy        Identity  `json:"decided_by,omitzero"`
	DecisionNote     string    `json:"decision_note,omitempty"`
	// ExpiresAt is set at approval: approval time plus Duration.
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	RevokedBy  Identity  `json:"revoked_by,omitzero"`
	RevokeNote string    `json:"revoke_note,omitempty"`
}

// Identity is a principal as a grant records it: who requested, decided or
// revoked.
type Identity struct {
	Issuer     string   `json:"issuer"`
	Subject    string   `json:"subject"`
	Groups     []string `json:"groups,omitempty"`
	Client     string   `json:"client,omitempty"`
	OnBehalfOf string   `json:"on_behalf_of,omitempty"`
}

// IdentityOf records a verified principal.
func IdentityOf(p policies.Principal) Identity {
	return Identity{Issuer: p.Issuer, Subject: p.Subject, Groups: slices.Clone(p.Groups), Client: p.Client, OnBehalfOf: p.OnBehalfOf}
}

// Principal returns the identity as the decision sees principals.
func (i Identity) Principal() policies.Principal {
	return policies.Principal{Issuer: i.Issuer, Subject: i.Subject, Groups: slices.Clone(i.Groups), Client: i.Client, OnBehalfOf: i.OnBehalfOf}
}

// StateAt is the grant's state at now: a pending request past
// PendingExpiresAt and an approved grant past ExpiresAt are expired, even
// though no one has recorded it yet.
func (g Grant) StateAt(now time.Time) State {
	switch {
	case g.State == StatePending && !now.Before(g.PendingExpiresAt):
		return StateExpired
	case g.State == StateApproved && !now.Before(g.ExpiresAt):
		return StateExpired
	}
	return g.State
}

// Policy is the grant as the decision consumes it.
func (g Grant) Policy() policies.Grant {
	return policies.Grant{ID: g.ID, Classes: slices.Clone([]policies.OperationClass(g.Classes)), Fingerprint: g.Fingerprint}
}

// endsAt is when the grant stopped (or will stop) mattering; a store keeps
// it readable for its retention after that.
func (g Grant) endsAt() time.Time {
	switch g.State {
	case StatePending:
		return g.PendingExpiresAt
	case StateApproved:
		return g.ExpiresAt
	case StateDenied:
		return g.DecidedAt
	case StateRevoked:
		return g.RevokedAt
	}
	if !g.ExpiresAt.IsZero() {
		return g.ExpiresAt
	}
	return g.PendingExpiresAt
}

func (g Grant) clone() Grant {
	g.Classes = slices.Clone(g.Classes)
	g.Requester.Groups = slices.Clone(g.Requester.Groups)
	g.DecidedBy.Groups = slices.Clone(g.DecidedBy.Groups)
	g.RevokedBy.Groups = slices.Clone(g.RevokedBy.Groups)
	return g
}

// grantFields is Grant without its methods, for MarshalJSON.
type grantFields Grant

type grantJSON struct {
	grantFields
	Duration string `json:"duration"`
}

// MarshalJSON writes the grant with its duration as a Go duration string
// ("15m0s") and its state and classes by name.
func (g Grant) MarshalJSON() ([]byte, error) {
	return json.Marshal(grantJSON{grantFields(g), g.Duration.String()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (g *Grant) UnmarshalJSON(b []byte) error {
	var w grantJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	d, err := time.ParseDuration(w.Duration)
	if err != nil {
		return fmt.Errorf("grant duration: %w", err)
	}
	*g = Grant(w.grantFields)
	g.Duration = d
	return nil
}

// Classes is a grant's operation classes; it marshals as names.
type Classes []policies.OperationClass

// MarshalJSON writes the class names.
func (cs Classes) MarshalJSON() ([]byte, error) {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.String()
	}
	return json.Marshal(names)
}

// UnmarshalJSON reads class names.
func (cs *Classes) UnmarshalJSON(b []byte) error {
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return err
	}
	out := make(Classes, 0, len(names))
	for _, n := range names {
		c, err := policies.ParseClass(n)
		if err != nil {
			return err
		}
		out = append(out, c)
	}
	*cs = out
	return nil
}

// NewID returns a new grant ID: "gr_" and 20 base32 characters, 100
// random bits. A caller that must record a request before it exists (the
// audit trail comes first) chooses the ID with it and passes it to Create.
func NewID() string {
	return "gr_" + strings.ToLower(rand.Text()[:20])
}

// validID reports whether id has NewID's form.
func validID(id string) bool {
	const prefix, n = "gr_", 20
	if len(id) != len(prefix)+n || !strings.HasPrefix(id, prefix) {
		return false
	}
	for _, c := range id[len(prefix):] {
		if (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// ms drops what Redis scores cannot carry: the monotonic reading, the
// location and anything below a millisecond.
func ms(t time.Time) time.Time {
	return time.UnixMilli(t.UnixMilli()).UTC()
}
