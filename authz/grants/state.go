package grants

import "fmt"

// State is where a grant is in its lifecycle (see the package doc).
type State int

// States. The zero State means "any" in a Filter.
const (
	StatePending State = iota + 1
	StateApproved
	StateDenied
	StateRevoked
	StateExpired
)

var stateNames = [...]string{StatePending: "pending", StateApproved: "approved", StateDenied: "denied", StateRevoked: "revoked", StateExpired: "expired"}

// String names the state as JSON, the API and audit records show it.
func (s State) String() string {
	if s > 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// ParseState parses a state name.
func ParseState(name string) (State, error) {
	for s, n := range stateNames {
		if n != "" && n == name {
			return State(s), nil
		}
	}
	return 0, fmt.Errorf("unknown grant state %q (expected pending, approved, denied, revoked or expired)", name)
}

// MarshalText writes the state's name.
func (s State) MarshalText() ([]byte, error) {
	if s <= 0 || int(s) >= len(stateNames) {
		return nil, fmt.Errorf("invalid grant state %d", int(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText reads a state name.
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	*s = v
	return err
}

// EventKind is the transition an Event reports.
type EventKind int

// Event kinds, one per transition.
const (
	EventRequested EventKind = iota + 1
	EventApproved
	EventDenied
	EventRevoked
	EventExpired
)

var eventNames = [...]string{EventRequested: "requested", EventApproved: "approved", EventDenied: "denied", EventRevoked: "revoked", EventExpired: "expired"}

// String names the kind as audit records show it.
func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventNames) {
		return eventNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// MarshalText writes the kind's name.
func (k EventKind) MarshalText() ([]byte, error) {
	if k <= 0 || int(k) >= len(eventNames) {
		return nil, fmt.Errorf("invalid grant event kind %d", int(k))
	}
	return []byte(k.String()), nil
}

// UnmarshalText reads a kind's name.
func (k *EventKind) UnmarshalText(b []byte) error {
	for v, n := range eventNames {
		if n != "" && n == string(b) {
			*k = EventKind(v)
			return nil
		}
	}
	return fmt.Errorf("unknown grant event kind %q", b)
}

// eventFor is the kind of event that entering state s publishes.
func eventFor(s State) EventKind {
	// States and kinds are declared in the same order; pending is
	// "requested".
	return EventKind(s)
}
