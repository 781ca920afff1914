package extproc

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
)

// PolicyGate decides each statement with the SQL analyser, the policy
// decision and the principal's grants, and appends the statement's audit
// event before the verdict: a statement runs only after its record is
// durable (design.md section 8).
//
// What it cannot do yet, it refuses: when the decision asks for masking
// or row/byte budgets, which the session does not apply to results yet,
// the statement is denied rather than answered unmasked.
type PolicyGate struct {
	Analyzer *sql.Analyzer
	// Config returns the running config (it changes on reload).
	Config func() *policies.Config
	Grants authz.GrantStore
	Audit  audit.Sink
	Now    func() time.Time
}

var _ postgres.Gate = (*PolicyGate)(nil)

// Decide implements postgres.Gate.
func (g *PolicyGate) Decide(ctx context.Context, st postgres.Statement) postgres.Verdict {
	cfg := g.Config()
	now := g.Now()
	req := policies.Request{Principal: st.Principal, Target: st.Target}
	ev := audit.Event{Time: now, Kind: audit.KindStatement, Principal: st.Principal, Target: st.Target, Request: st.SQL}
	var statement *sql.Statement
	if st.Protocol == postgres.ProtocolFunctionCall {
		// A FunctionCall names a function by OID: nothing to analyse, and
		// it can be anything the role may call.
		req.Classes = []policies.OperationClass{policies.ClassAdmin}
		ev.Request = fmt.Sprintf("FunctionCall oid=%d", st.FunctionOID)
	} else {
		a := g.Analyzer.Analyze(st.SQL)
		req.Classes = a.Classes.List()
		for _, s := range a.Statements {
			for _, t := range s.Tables {
				ev.Tables = append(ev.Tables, t.String())
			}
		}
		if len(a.Statements) == 1 {
			statement = a.Statements[0]
		}
	}
	ev.Classes = req.Classes

	grants, err := g.Grants.Active(ctx, st.Principal, st.Target, now)
	if err != nil {
		return g.refuse(ctx, ev, "sluice: the grant store is unavailable; try again", "", "")
	}
	// The fingerprint is a second parse inside pg_query; it is needed only
	// when a one-statement grant could match or an approval is requested.
	if statement != nil && slices.ContainsFunc(grants, func(gr policies.Grant) bool { return gr.Fingerprint != "" }) {
		req.Fingerprint = statement.Fingerprint()
	}
	d := cfg.Decide(req, grants)
	ev.Decision, ev.Reason, ev.GrantID = d.Outcome.String(), d.Reason, d.GrantID

	switch d.Outcome {
	case policies.Allow:
		if len(d.Masks) > 0 || d.MaxRows > 0 || d.MaxBytes > 0 {
			ev.Decision = policies.Deny.String()
			ev.Reason = fmt.Sprintf("policy %s requires masking or result budgets, which this sluice build does not yet apply to Postgres results", strings.Join(d.Policies, ", "))
			return g.refuse(ctx, ev, "sluice: "+ev.Reason, "Refusing rather than returning unmasked or unbounded rows.", "")
		}
		if err := g.Audit.Append(ctx, ev); err != nil {
			return postgres.Deny("sluice: the audit store is unavailable; nothing runs unaudited", "", "")
		}
		return postgres.Allow()
	case policies.ApprovalRequired:
		ar := authz.ApprovalRequest{Principal: st.Principal, Target: st.Target, Class: d.Class,
			Reason: "refused statement", Duration: authz.ApprovalDuration(cfg, st.Target), Now: now}
		if statement != nil {
			ar.Fingerprint, ar.Statement = statement.Fingerprint(), st.SQL
		}
		id, err := g.Grants.RequestApproval(ctx, ar)
		if err != nil {
			return g.refuse(ctx, ev, "sluice: the grant store is unavailable; try again", "", "")
		}
		ev.GrantID = id
		return g.refuse(ctx, ev, "sluice: "+d.Reason,
			"Approval request "+id+" is open.",
			fmt.Sprintf("Ask someone in %s to run: sluice grants approve %s", strings.Join(cfg.Approvers.Groups, " or "), id))
	}
	return g.refuse(ctx, ev, "sluice: "+d.Reason, "", "")
}

// refuse records the refusal (best effort: a refused statement runs
// nothing, so a failed record loses no access) and denies.
func (g *PolicyGate) refuse(ctx context.Context, ev audit.Event, reason, detail, hint string) postgres.Verdict {
	if ev.Decision == "" || ev.Decision == policies.Allow.String() {
		ev.Decision = policies.Deny.String()
	}
	if ev.Reason == "" {
		ev.Reason = reason
	}
	_ = g.Audit.Append(ctx, ev)
	return postgres.Deny(reason, detail, hint)
}
