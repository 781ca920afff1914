package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Gate decides whether a statement reaches the target. The session asks
// it before forwarding every Query, Parse and FunctionCall, and forwards
// nothing it has not allowed. The real gate (filters/sql's analysis, then
// policies.Config.Decide, then the audit record) plugs in here; everything
// the decision needs about who and where is in the Statement.
type Gate interface {
	Decide(ctx context.Context, st Statement) Verdict
}

// GateFunc adapts a function to Gate.
type GateFunc func(ctx context.Context, st Statement) Verdict

// Decide calls f.
func (f GateFunc) Decide(ctx context.Context, st Statement) Verdict { return f(ctx, st) }

// Protocol is how a statement reached sluice.
type Protocol uint8

// Protocols.
const (
	// ProtocolSimple is a Query message: one string, possibly several
	// statements.
	ProtocolSimple Protocol = iota + 1
	// ProtocolExtended is a Parse message: one statement, parameters bound
	// later. The statement's text reaches the server with the Parse, and
	// the server may plan it (and fold IMMUTABLE functions) at the Bind, so
	// the gate decides and records the Parse like a statement: an allowed
	// Parse is forwarded only once its record is durable, a refused one
	// fails where the client expects it. Each run is a ProtocolExecute.
	ProtocolExtended
	// ProtocolFunctionCall is a FunctionCall message: a function by OID,
	// no SQL.
	ProtocolFunctionCall
	// ProtocolExecute is an Execute message: one run of a prepared
	// statement. SQL is the statement's text as its Parse sent it, or
	// "EXECUTE name" for one prepared in SQL; Name is the statement's. It
	// is decided again, so a grant revoked or a token expired since the
	// Parse stops it, and recorded before it runs.
	ProtocolExecute
)

func (p Protocol) String() string {
	switch p {
	case ProtocolSimple:
		return "simple"
	case ProtocolExtended:
		return "extended"
	case ProtocolFunctionCall:
		return "function_call"
	case ProtocolExecute:
		return "execute"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Statement is one thing the client asked the target to run, with the
// session context a decision needs.
type Statement struct {
	Protocol Protocol
	// SQL is the text as sent (empty for a FunctionCall).
	SQL string
	// Name is the prepared statement's name (extended protocol).
	Name string
	// FunctionOID is the function a FunctionCall names.
	FunctionOID uint32
	// Principal is the verified agent; Target the target's name.
	Principal policies.Principal
	Target    string
	SessionID string
	// Startup is the client's StartupMessage parameters
	// (application_name and the like, for the record).
	Startup map[string]string
	// TxStatus is the transaction status before the statement ('I', 'T'
	// or 'E').
	TxStatus byte
	// Memory is the session's slot for the gate's own state between
	// statements (what the session prepared in SQL, its cursors). It
	// lives and dies with the session; never nil.
	Memory *Memory
}

// Memory holds a gate's per-session state. The session that owns it calls
// the gate from one goroutine, so it needs no lock.
type Memory struct {
	Value any
}

// Verdict is a Gate's answer. The zero Verdict denies: a gate that did not
// decide has not allowed.
type Verdict struct {
	Outcome policies.Outcome
	// Reason, Detail and Hint become the ErrorResponse the client sees on
	// a refusal (Detail carries an approval request id, say).
	Reason, Detail, Hint string
	// SQLState is the refusal's SQLSTATE. Empty is 42501
	// insufficient_privilege, a policy's refusal;
	// SQLStateAuditUnavailable says sluice could not record the
	// statement, which may pass.
	SQLState string
	// Results is what happens to the rows an allowed statement returns;
	// nil passes them as sent.
	Results *ResultPlan
	// Finished, when set, hears how an allowed run ended, once the server
	// has answered it (for the record of rows, bytes and SQLSTATE).
	Finished func(Outcome)
}

// Outcome is how one run of a statement ended.
type Outcome struct {
	// Rows is what the server's completion tags report (rows returned,
	// inserted, updated, copied), summed over the run's statements.
	Rows int64
	// Bytes is what the client received of the rows: DataRow and
	// CopyData bodies, after masking.
	Bytes int64
	// SQLState is the first error's, "" when there was none.
	SQLState string
	// Masked names the result columns masked by rule; Truncated is set
	// when a budget cut a result short.
	Masked    []string
	Truncated bool
	Duration  time.Duration
	// Unfinished is set when the session ended before the server had
	// answered the run completely (the client went away, Envoy closed the
	// connection): why it ended. Rows and Bytes are then what reached the
	// client so far.
	Unfinished string
}

// Allowed reports whether the statement may run.
func (v Verdict) Allowed() bool { return v.Outcome == policies.Allow }

// SQLStateAuditUnavailable is 57P03 cannot_connect_now: sluice could not
// record a login or a statement durably (or a store it decides with did
// not answer), so nothing was forwarded. It is the SQLSTATE of every such
// refusal, at login and per statement, so that
// drivers and agents see one condition: sluice's, not the agent's, and
// transient (class 57, operator intervention; poolers and drivers treat
// 57P03 as "try again later"). 42501 stays the code of a policy's
// refusal, which retrying does not change.
const SQLStateAuditUnavailable = "57P03"

// AuditUnavailable refuses a statement sluice could not record.
func AuditUnavailable(reason, detail, hint string) Verdict {
	v := Deny(reason, detail, hint)
	v.SQLState = SQLStateAuditUnavailable
	return v
}

// Allow is the verdict that lets a statement through.
func Allow() Verdict { return Verdict{Outcome: policies.Allow} }

// Deny refuses a statement with a reason the agent can act on.
func Deny(reason, detail, hint string) Verdict {
	return Verdict{Outcome: policies.Deny, Reason: reason, Detail: detail, Hint: hint}
}

// DefaultDenyMarker is what MarkerGate denies when given no marker.
const DefaultDenyMarker = "sluice:deny"

// MarkerGate denies every statement that contains Marker and allows the
// rest. It stands in for the SQL analyser and the policy decision until
// they are plugged in, and it lets tests deny on purpose.
type MarkerGate struct{ Marker string }

// Decide implements Gate.
func (g MarkerGate) Decide(_ context.Context, st Statement) Verdict {
	m := g.Marker
	if m == "" {
		m = DefaultDenyMarker
	}
	if strings.Contains(st.SQL, m) {
		return Deny(fmt.Sprintf("sluice: statement denied on %s", st.Target),
			fmt.Sprintf("The statement contains %q.", m), "Remove the marker, or ask for a grant.")
	}
	return Allow()
}
