// Package audit is sluice's record of who did what. This file holds the
// interface the gates write through and a logging implementation; the
// durable stores, hash chain, query and export are issue 5 and extend the
// Event here rather than replace it.
package audit

import (
	"context"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Kind names what an event records.
type Kind string

// Event kinds written so far.
const (
	KindAuthzDecision Kind = "authz.decision"
	KindGrantCreated  Kind = "grant.requested"
	KindGrantApproved Kind = "grant.approved"
	KindGrantDenied   Kind = "grant.denied"
	KindGrantRevoked  Kind = "grant.revoked"
	KindGrantExpired  Kind = "grant.expired"
)

// Event is one audit record.
type Event struct {
	Time      time.Time
	Kind      Kind
	Principal policies.Principal
	// Actor is who acted when it is not the principal (an approver).
	Actor    string
	Target   string
	Source   string // the agent's address
	Request  string // the statement, or "METHOD path"
	Classes  []policies.OperationClass
	Decision string
	Reason   string
	GrantID  string
	TraceID  string
}

// Sink receives events. Append returns once the event is recorded; a gate
// forwards nothing whose event could not be appended.
type Sink interface {
	Append(ctx context.Context, e Event) error
}

// LogSink writes events to a structured log. It is what serves until the
// durable store lands; it is not tamper-evident and not queryable.
type LogSink struct{ Log *slog.Logger }

// Append logs the event; it cannot fail.
func (s LogSink) Append(_ context.Context, e Event) error {
	classes := make([]string, len(e.Classes))
	for i, c := range e.Classes {
		classes[i] = c.String()
	}
	s.Log.Info("audit", "kind", string(e.Kind), "time", e.Time.UTC().Format(time.RFC3339Nano),
		"subject", e.Principal.Subject, "issuer", e.Principal.Issuer, "client", e.Principal.Client,
		"on_behalf_of", e.Principal.OnBehalfOf, "actor", e.Actor, "target", e.Target, "source", e.Source,
		"request", e.Request, "classes", classes, "decision", e.Decision, "reason", e.Reason,
		"grant_id", e.GrantID, "trace_id", e.TraceID)
	return nil
}

var _ Sink = LogSink{}
