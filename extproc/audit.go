package extproc

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/policies"
)

// The audit events of a Postgres session, built by small pure
// constructors so that tests can compare them whole.

func sessionStartEvent(now time.Time, session, target, source string) audit.Event {
	return audit.Event{Time: now, Kind: audit.KindSessionStart, SessionID: session, Target: target, Source: source, Decision: policies.Allow.String()}
}

// authnEvent records a login attempt; refusal is nil for a success. The
// Request is the client's StartupMessage as it claimed it, never the
// token.
func authnEvent(now time.Time, session, target, source string, p policies.Principal, l postgres.Login, refusal *postgres.AuthError) audit.Event {
	ev := audit.Event{Time: now, Kind: audit.KindAuthn, SessionID: session, Principal: p, Target: target, Source: source,
		Request: startupSummary(l), Decision: policies.Allow.String(), Reason: "token verified; upstream " + l.Mode}
	if refusal != nil {
		ev.Decision, ev.Reason, ev.SQLState = policies.Deny.String(), refusal.Reason, refusal.SQLState
	}
	return ev
}

func sessionEndEvent(now time.Time, session, target, source string, p policies.Principal, reason string) audit.Event {
	return audit.Event{Time: now, Kind: audit.KindSessionEnd, SessionID: session, Principal: p, Target: target, Source: source, Reason: reason}
}

// startupSummary prints the StartupMessage parameters in a stable order.
func startupSummary(l postgres.Login) string {
	var b strings.Builder
	b.WriteString("startup")
	for _, k := range slices.Sorted(maps.Keys(l.Startup)) {
		fmt.Fprintf(&b, " %s=%q", k, l.Startup[k])
	}
	return b.String()
}
