package grants

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

func TestStateNames(t *testing.T) {
	for s, want := range map[State]string{StatePending: "pending", StateApproved: "approved", StateDenied: "denied", StateRevoked: "revoked", StateExpired: "expired", 0: "State(0)", 9: "State(9)"} {
		if got := s.String(); got != want {
			t.Errorf("State(%d) = %q, want %q", int(s), got, want)
		}
		if p, err := ParseState(want); s >= StatePending && s <= StateExpired && (err != nil || p != s) {
			t.Errorf("ParseState(%q) = %v, %v", want, p, err)
		}
	}
	if _, err := json.Marshal(State(0)); err == nil {
		t.Error("marshalled the zero State")
	}
	if _, err := ParseState("Approved"); err == nil {
		t.Error("ParseState is case-insensitive; names are exact")
	}
	for k, want := range map[EventKind]string{EventRequested: "requested", EventApproved: "approved", EventDenied: "denied", EventRevoked: "revoked", EventExpired: "expired"} {
		if got := k.String(); got != want {
			t.Errorf("EventKind(%d) = %q, want %q", int(k), got, want)
		}
	}
	for s, want := range map[State]EventKind{StatePending: EventRequested, StateApproved: EventApproved, StateDenied: EventDenied, StateRevoked: EventRevoked, StateExpired: EventExpired} {
		if got := eventFor(s); got != want {
			t.Errorf("eventFor(%s) = %s, want %s", s, got, want)
		}
	}
}

func TestGrantJSON(t *testing.T) {
	now := ms(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	g := Grant{
		ID: "gr_abcdefghijklmnopqrst", Requester: IdentityOf(agent), Target: "orders-db",
		Classes: Classes{policies.ClassWrite, policies.ClassDDL}, Duration: 15 * time.Minute, Reason: "ticket 42",
		State: StateApproved, CreatedAt: now, PendingExpiresAt: now.Add(time.Hour),
		DecidedAt: now.Add(time.Minute), DecidedBy: IdentityOf(bob), ExpiresAt: now.Add(16 * time.Minute),
	}
	b, err := json.Marshal(g)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"state":"approved"`, `"classes":["write","ddl"]`, `"duration":"15m0s"`, `"on_behalf_of":"alice"`, `"decided_by":{"issuer":"https://idp","subject":"bob"`, `"expires_at":"2026-11-27T10:16:00Z"`} {
		if !strings.Contains(s, want) {
			t.Errorf("JSON lacks %s:\n%s", want, s)
		}
	}
	for _, absent := range []string{"revoked_at", "revoked_by", "fingerprint", "Duration"} {
		if strings.Contains(s, absent) {
			t.Errorf("JSON has %s:\n%s", absent, s)
		}
	}
	var back Grant
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if b2, _ := json.Marshal(back); string(b2) != s {
		t.Errorf("round trip changed the grant:\n%s\n%s", s, b2)
	}
	if err := json.Unmarshal([]byte(strings.Replace(s, `"write"`, `"delete"`, 1)), &back); err == nil {
		t.Error("accepted an unknown class name")
	}
	ev, _ := json.Marshal(Event{Kind: EventApproved, Grant: g})
	if !strings.HasPrefix(string(ev), `{"kind":"approved","grant":{"id":"gr_`) {
		t.Errorf("event JSON = %s", ev)
	}
}

func TestStateAt(t *testing.T) {
	now := time.Now()
	pending := Grant{State: StatePending, PendingExpiresAt: now.Add(time.Minute)}
	approved := Grant{State: StateApproved, ExpiresAt: now.Add(time.Minute)}
	for _, tc := range []struct {
		g    Grant
		at   time.Time
		want State
	}{
		{pending, now, StatePending},
		{pending, now.Add(time.Minute), StateExpired},
		{approved, now.Add(time.Minute - 1), StateApproved},
		{approved, now.Add(time.Minute), StateExpired},
		{Grant{State: StateRevoked}, now, StateRevoked},
		{Grant{State: StateDenied}, now, StateDenied},
	} {
		if got := tc.g.StateAt(tc.at); got != tc.want {
			t.Errorf("%s grant at %s: %s, want %s", tc.g.State, tc.at.Sub(now), got, tc.want)
		}
	}
}

func TestIsSelf(t *testing.T) {
	req := Identity{Issuer: "iss", Subject: "agent", OnBehalfOf: "alice"}
	for _, tc := range []struct {
		by   policies.Principal
		want bool
	}{
		{policies.Principal{Issuer: "iss", Subject: "agent"}, true},
		{policies.Principal{Issuer: "other", Subject: "agent"}, false},
		{policies.Principal{Issuer: "iss", Subject: "alice"}, true},
		{policies.Principal{Issuer: "other", Subject: "alice"}, true}, // act subjects carry no issuer: refuse
		{policies.Principal{Issuer: "iss", Subject: "bot", OnBehalfOf: "alice"}, true},
		{policies.Principal{Issuer: "iss", Subject: "bot", OnBehalfOf: "agent"}, true},
		{policies.Principal{Issuer: "iss", Subject: "bob"}, false},
		{policies.Principal{Issuer: "iss", Subject: "bob", OnBehalfOf: "carol"}, false},
	} {
		if got := isSelf(req, tc.by); got != tc.want {
			t.Errorf("isSelf(%+v) = %v, want %v", tc.by, got, tc.want)
		}
	}
	if isSelf(Identity{Issuer: "iss", Subject: "agent"}, policies.Principal{Issuer: "iss", Subject: "bob"}) {
		t.Error("no on-behalf-of on either side, different subjects: not self")
	}
}
