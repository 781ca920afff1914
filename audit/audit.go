package audit

import (
	"context"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Kind names what an event records. Kinds are part of the versioned
// schema: a new kind is added, an old one never renamed.
type Kind string

// Event kinds.
const (
	KindSessionStart Kind = "session.start"
	KindSessionEnd   Kind = "session.end"
	KindAuthn        Kind = "authn"
	KindStatement    Kind = "statement"
	// KindStatementResult records how a statement's rows reached the
	// client (rows, bytes, masked columns); RequestID links it to the
	// statement's own event.
	KindStatementResult Kind = "statement.result"
	KindHTTPRequest     Kind = "http.request"
	// KindHTTPResponse records how an HTTP response reached the agent
	// (bytes, digest, masked paths); RequestID links it to its request.
	KindHTTPResponse  Kind = "http.response"
	KindAuthzDecision Kind = "authz.decision"
	KindGrantCreated  Kind = "grant.requested"
	KindGrantApproved Kind = "grant.approved"
	KindGrantDenied   Kind = "grant.denied"
	KindGrantRevoked  Kind = "grant.revoked"
	KindGrantExpired  Kind = "grant.expired"
	KindConfigReload  Kind = "config.reload"
	// KindAuditQuery records a read of the audit trail through the API.
	KindAuditQuery Kind = "audit.query"
)

// String returns the kind as records show it.
func (k Kind) String() string { return string(k) }

// Event is one audit record as the gates build it: schema version
// SchemaVersion. Zero fields are omitted from the stored record.
type Event struct {
	Time time.Time // set by the store when zero
	Kind Kind
	// SessionID links the events of one connection; RequestID one
	// statement or HTTP request across its decision and its result.
	SessionID string
	RequestID string
	// Principal is who the verified token names: subject, groups, client
	// and the human it acts for.
	Principal policies.Principal
	// Actor is who acted when it is not the principal (an approver).
	Actor   string
	Target  string
	Source  string // the agent's address
	Request string // the statement, or "METHOD path"
	Classes []policies.OperationClass
	Tables  []string
	// Decision is allow, deny or approval_required (or a grant state for
	// grant events); Reason says why.
	Decision      string
	Reason        string
	MaskedColumns []string
	Rows          int64
	Bytes         int64
	Duration      time.Duration
	Error         string
	SQLState      string
	GrantID       string
	TraceID       string
	// HTTPStatus is the upstream's status of an HTTP exchange.
	HTTPStatus int
	// Digest is "sha256:<hex>" of the body the event describes (an HTTP
	// request's, or the response as the agent received it), recorded in
	// place of the body itself.
	Digest string
	// Fingerprint identifies a SQL statement's shape regardless of its
	// literals (pg_query's fingerprint), as one-statement grants do.
	Fingerprint string
}

// Sink receives events. Append returns once the event is recorded; a gate
// forwards nothing whose event could not be appended.
type Sink interface {
	Append(ctx context.Context, e Event) error
}

// LogSink writes events to a structured log. It is not durable, not
// tamper-evident and not queryable: tests and tools use it, serve uses a
// Store.
type LogSink struct{ Log *slog.Logger }

// Append logs the event; it cannot fail.
func (s LogSink) Append(_ context.Context, e Event) error {
	s.Log.Info("audit", "kind", string(e.Kind), "time", e.Time.UTC().Format(time.RFC3339Nano),
		"session_id", e.SessionID, "request_id", e.RequestID,
		"subject", e.Principal.Subject, "issuer", e.Principal.Issuer, "client", e.Principal.Client,
		"on_behalf_of", e.Principal.OnBehalfOf, "actor", e.Actor, "target", e.Target, "source", e.Source,
		"request", e.Request, "classes", classNames(e.Classes), "tables", e.Tables, "decision", e.Decision, "reason", e.Reason,
		"masked_columns", e.MaskedColumns, "rows", e.Rows, "bytes", e.Bytes, "duration", e.Duration,
		"error", e.Error, "sqlstate", e.SQLState, "grant_id", e.GrantID, "trace_id", e.TraceID,
		"http_status", e.HTTPStatus, "digest", e.Digest, "fingerprint", e.Fingerprint)
	return nil
}

func classNames(cs []policies.OperationClass) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}

var _ Sink = LogSink{}
