package extproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/filters/mask"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
)

// PolicyGate decides each statement with the SQL analyser, the policy
// decision and the principal's grants, and appends the statement's audit
// event before the verdict: a statement runs only after its record is
// durable (design.md section 8). An allowed statement carries the plan for
// its rows: the masking rules the decision selected, applied through the
// statement's column lineage, and its row and byte budgets.
type PolicyGate struct {
	Analyzer *sql.Analyzer
	// Config returns the running config (it changes on reload).
	Config func() *policies.Config
	Grants authz.GrantStore
	Audit  audit.Sink
	Now    func() time.Time
	// Views, when set, resolves the relations a statement reads so that
	// column rules hold through views; without it a relation's name is
	// taken to be a table's.
	Views *ViewCatalog

	// rules caches compiled masking rules per config and rule names.
	rules perConfig[*mask.Rules]
	// background counts the result records in flight (Wait).
	background inFlight
}

// Wait returns once the result records the gate made in the background
// are appended (or ctx ends): shutdown calls it after the servers have
// stopped, before the audit store closes.
func (g *PolicyGate) Wait(ctx context.Context) error { return g.background.wait(ctx) }

// inFlight counts records made in the background, so that shutdown can
// wait for them before the audit store closes.
type inFlight struct{ wg sync.WaitGroup }

func (f *inFlight) run(fn func()) { f.wg.Go(fn) }

func (f *inFlight) wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var _ postgres.Gate = (*PolicyGate)(nil)

// Decide implements postgres.Gate.
//
// Everything Decide waits for (the grant store, the audit store) shares
// one deadline below Envoy's ext_proc message timeout (auditBudget), so
// that a store that hangs makes sluice refuse in words before Envoy gives
// up on the chunk and drops the connection. A statement held for approval
// gets a fresh deadline once its wait is over.
func (g *PolicyGate) Decide(ctx context.Context, st postgres.Statement) postgres.Verdict {
	cfg := g.Config()
	now := g.Now()
	budget := auditBudget(cfg)
	begun := time.Now()
	waitCtx := ctx
	ctx, cancel := context.WithTimeoutCause(ctx, budget, errBudget(budget))
	defer cancel()
	req := policies.Request{Principal: st.Principal, Target: st.Target}
	ev := audit.Event{Time: now, Kind: audit.KindStatement, SessionID: st.SessionID, Principal: st.Principal,
		Target: st.Target, Request: st.SQL}
	var statement *sql.Statement
	var analysis *sql.Analysis
	if st.Protocol == postgres.ProtocolFunctionCall {
		// A FunctionCall names a function by OID: nothing to analyse, and
		// it can be anything the role may call.
		req.Classes = []policies.OperationClass{policies.ClassAdmin}
		ev.Request = fmt.Sprintf("FunctionCall oid=%d", st.FunctionOID)
	} else {
		a := resolve(g.Analyzer.Analyze(st.SQL), st.Memory)
		analysis = a
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

	active, err := g.Grants.Active(ctx, st.Principal, st.Target, now)
	if err != nil {
		return transient(g.refuse(ctx, ev, "sluice: the grant store is unavailable; try again", "", ""))
	}
	// The fingerprint is a second parse inside pg_query; it is needed only
	// when a one-statement grant could match or an approval is requested.
	if statement != nil && slices.ContainsFunc(active, func(gr policies.Grant) bool { return gr.Fingerprint != "" }) {
		req.Fingerprint = statement.Fingerprint()
	}
	d := cfg.Decide(req, active)
	ev.Decision, ev.Reason, ev.GrantID = d.Outcome.String(), d.Reason, d.GrantID

	switch d.Outcome {
	case policies.Allow:
		return g.allow(ctx, cfg, d, analysis, ev, st.Protocol != postgres.ProtocolExtended)
	case policies.ApprovalRequired:
		ar := authz.ApprovalRequest{Principal: st.Principal, Target: st.Target, Class: d.Class,
			Reason: "refused statement", Duration: authz.ApprovalDuration(cfg, st.Target), Now: now}
		if statement != nil {
			ar.Fingerprint, ar.Statement = statement.Fingerprint(), st.SQL
		}
		id, err := g.Grants.RequestApproval(ctx, ar)
		if err != nil {
			msg := "sluice: the grant store is unavailable; try again"
			if errors.Is(err, authz.ErrAuditUnavailable) {
				msg = "sluice: the audit store is unavailable, so no approval request was opened; try again"
			}
			return transient(g.refuse(ctx, ev, msg, "", ""))
		}
		ev.GrantID = id
		if d.Wait > 0 {
			cancel() // the wait has its own bound: Envoy's timeout covers it
			// Envoy's timeout for this message is the wait plus one message
			// timeout; everything the hold records ends within the wait
			// plus this message's budget, counted from its arrival.
			return g.hold(waitCtx, cfg, req, statement, analysis, ev, id, d, st.Protocol != postgres.ProtocolExtended, begun.Add(d.Wait+budget))
		}
		return g.refuse(ctx, ev, "sluice: "+d.Reason,
			"Approval request "+id+" is open.",
			fmt.Sprintf("Ask someone in %s to run: sluice grants approve %s", strings.Join(cfg.Approvers.Groups, " or "), id))
	}
	return g.refuse(ctx, ev, "sluice: "+d.Reason, "", "")
}

// allow records an allowed statement, durably, and lets it run with the
// plan for its rows; a statement whose record fails or does not come in
// time (ctx's deadline) is refused with SQLSTATE 57P03 and never reaches
// the server.
//
// A Parse (runs is false) runs nothing, but it hands the server the
// statement's text, which the server parses, and plans (folding IMMUTABLE
// functions) at the Bind that follows without another decision. So its
// allow is recorded like a statement's, before the Parse is forwarded;
// the record's reason says it was a Parse. Each Execute of it is decided
// and recorded again as it runs, with the plan for its rows. (Holding the
// Parse back until the Execute would save the record but break the
// Describe and ParseComplete the client waits for in between.)
func (g *PolicyGate) allow(ctx context.Context, cfg *policies.Config, d policies.Decision, analysis *sql.Analysis, ev audit.Event, runs bool) postgres.Verdict {
	ev.Decision, ev.Reason, ev.GrantID = d.Outcome.String(), d.Reason, d.GrantID
	plan, err := g.plan(cfg, d)
	if err != nil {
		ev.Decision, ev.Reason = policies.Deny.String(), err.Error()
		return g.refuse(ctx, ev, "sluice: "+err.Error(), "Refusing rather than returning unmasked rows.", "")
	}
	v := postgres.Allow()
	if !runs {
		ev.RequestID = newRequestID()
		ev.Reason = strings.TrimPrefix(ev.Reason+"; ", "; ") + parseNote
		if err := g.Audit.Append(ctx, ev); err != nil {
			return auditRefusal(ctx)
		}
		return v // the plan that applies is the Execute's
	}
	if plan != nil {
		plan.MaskColumn = nil
		if pats := plan.patterns; len(pats) > 0 {
			var rels *Relations
			if g.Views != nil {
				rels = g.Views.Relations(ctx, ev.Target, sourceNames(analysis))
			}
			plan.MaskColumn = maskColumns(analysis, pats, rels)
		}
	}
	ev.RequestID = newRequestID()
	if err := g.Audit.Append(ctx, ev); err != nil {
		return auditRefusal(ctx)
	}
	if plan != nil {
		v.Results = plan.ResultPlan
	}
	v.Finished = func(o postgres.Outcome) {
		if g.Views != nil && slices.Contains(ev.Classes, policies.ClassDDL) {
			g.Views.Invalidate(ev.Target) // a view may have been created or redefined
		}
		g.recordOutcome(ev, analysis, o)
	}
	return v
}

// parseNote marks the record of an allowed Parse: prepared, not run.
const parseNote = "parse: prepared, not run (each run is recorded as it runs)"

// auditRefusal is the verdict for a statement whose record failed: nothing
// was forwarded, and the condition is sluice's and transient (57P03, as at
// login). The store's own error stays in sluice's log side, not the
// agent's: it may name files or hosts.
func auditRefusal(ctx context.Context) postgres.Verdict {
	detail := "sluice records every statement before the target sees it, and could not record this one."
	var be errBudget
	if errors.As(context.Cause(ctx), &be) && ctx.Err() != nil {
		detail = fmt.Sprintf("sluice records every statement before the target sees it, and the audit store did not answer within %s.", time.Duration(be))
	}
	return postgres.AuditUnavailable("sluice: the audit store is unavailable; the statement was not forwarded", detail,
		"Nothing ran. Try again later.")
}

// transient marks a refusal that is sluice's condition, not a policy's
// (the grant store did not answer): SQLSTATE 57P03, like an audit
// refusal, so the agent knows to try again rather than ask for access.
func transient(v postgres.Verdict) postgres.Verdict {
	v.SQLState = postgres.SQLStateAuditUnavailable
	return v
}

// auditBudget bounds what a gate waits for while answering one ext_proc
// message: three quarters of Envoy's message timeout
// (envoy.extproc_message_timeout, which xds gives both ext_proc filters,
// the network one adding the longest policy wait), leaving the rest for
// the chunk's way to sluice and the answer's way back. A store that has
// not answered by then gets the statement (or login) refused in sluice's
// words; past Envoy's timeout the agent would only see the connection
// drop.
func auditBudget(cfg *policies.Config) time.Duration {
	t := policies.DefaultExtProcMessageTimeout
	if cfg != nil && cfg.Envoy.ExtProcMessageTimeout > 0 {
		t = cfg.Envoy.ExtProcMessageTimeout
	}
	return t * 3 / 4
}

// errBudget is the cause of a gate's context when its budget ran out.
type errBudget time.Duration

func (e errBudget) Error() string {
	return fmt.Sprintf("no answer within %s, sluice's share of Envoy's ext_proc message timeout", time.Duration(e))
}

// budgeted returns a context bounded by the gate's budget, detached from
// parent's cancellation when detach is set (a record that must be made
// after the connection ended).
func budgeted(parent context.Context, cfg *policies.Config, detach bool) (context.Context, context.CancelFunc) {
	if detach {
		parent = context.WithoutCancel(parent)
	}
	b := auditBudget(cfg)
	return context.WithTimeoutCause(parent, b, errBudget(b))
}

// deadlined is budgeted with an absolute deadline (a held statement's):
// its expiry reads as the budget's.
func deadlined(parent context.Context, cfg *policies.Config, deadline time.Time, detach bool) (context.Context, context.CancelFunc) {
	if detach {
		parent = context.WithoutCancel(parent)
	}
	return context.WithDeadlineCause(parent, deadline, errBudget(auditBudget(cfg)))
}

// holdPoll is how often a held statement looks for its approval. The
// grant cache answers Active from memory, so polling costs little.
const holdPoll = 100 * time.Millisecond

// hold keeps a statement that needs approval (a policy's wait) until its
// request id is approved (then it is decided again and runs), denied, or
// the wait ends (then it is refused). The session's stream waits with it;
// Envoy's message_timeout for the target covers the longest wait
// (xds/translate.go).
func (g *PolicyGate) hold(ctx context.Context, cfg *policies.Config, req policies.Request, statement *sql.Statement,
	analysis *sql.Analysis, ev audit.Event, id string, d policies.Decision, runs bool, deadline time.Time) postgres.Verdict {
	timer := time.NewTimer(d.Wait)
	defer timer.Stop()
	tick := time.NewTicker(holdPoll)
	defer tick.Stop()
	states, _ := g.Grants.(authz.GrantStates)
	// Every look-up and record ends by deadline: the wait plus what the
	// message's budget had left when the hold began, inside Envoy's
	// timeout for the message (the wait plus one message timeout). A
	// connection that ended meanwhile has cancelled ctx, but its refusal
	// is still recorded, detached from it.
	for {
		select {
		case <-ctx.Done():
			rctx, cancel := deadlined(ctx, cfg, deadline, true)
			defer cancel()
			ev.Reason = fmt.Sprintf("%s; the connection ended while the statement waited for approval", d.Reason)
			return g.refuse(rctx, ev, "sluice: the connection ended while the statement waited for approval", "Approval request "+id+" is open.", "")
		case <-timer.C:
			rctx, cancel := deadlined(ctx, cfg, deadline, false)
			defer cancel()
			ev.Reason = fmt.Sprintf("%s; not approved within %s", d.Reason, d.Wait)
			return g.refuse(rctx, ev, "sluice: "+ev.Reason, "Approval request "+id+" is still open.",
				fmt.Sprintf("Ask someone in %s to run: sluice grants approve %s, then run the statement again", strings.Join(cfg.Approvers.Groups, " or "), id))
		case <-tick.C:
		}
		if v, done := g.holdCheck(ctx, cfg, req, statement, analysis, ev, id, d, runs, states, deadline); done {
			return v
		}
	}
}

// holdCheck looks once whether a held statement's request was decided:
// approved (the statement is decided again and, allowed, recorded and
// run), or denied, revoked or expired (refused). Its look-ups and records
// end by the hold's deadline.
func (g *PolicyGate) holdCheck(ctx context.Context, cfg *policies.Config, req policies.Request, statement *sql.Statement,
	analysis *sql.Analysis, ev audit.Event, id string, d policies.Decision, runs bool, states authz.GrantStates, deadline time.Time) (postgres.Verdict, bool) {
	ctx, cancel := deadlined(ctx, cfg, deadline, false)
	defer cancel()
	now := g.Now()
	active, err := g.Grants.Active(ctx, req.Principal, req.Target, now)
	if err == nil {
		if statement != nil && slices.ContainsFunc(active, func(gr policies.Grant) bool { return gr.Fingerprint != "" }) {
			req.Fingerprint = statement.Fingerprint()
		}
		if again := cfg.Decide(req, active); again.Outcome == policies.Allow {
			ev.Time = now
			return g.allow(ctx, cfg, again, analysis, ev, runs), true
		}
	}
	if states == nil {
		return postgres.Verdict{}, false
	}
	if st, err := states.State(ctx, id); err == nil && st != grants.StatePending && st != grants.StateApproved {
		ev.Reason = fmt.Sprintf("%s; approval request %s was %s", d.Reason, id, st)
		return g.refuse(ctx, ev, "sluice: "+ev.Reason, "", ""), true
	}
	return postgres.Verdict{}, false
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
	ctx, cancel := refusalContext(ctx)
	defer cancel()
	_ = g.Audit.Append(ctx, ev)
	return postgres.Deny(reason, detail, hint)
}

// refusalContext is the context a refusal is recorded with (best effort:
// it is refused either way). A budget the refusal's cause spent (a grant
// store that did not answer in time) gets a short grace, a sixth of it,
// so that the refusal is still recorded and answered inside Envoy's
// message timeout.
func refusalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	var b errBudget
	if ctx.Err() == nil || !errors.As(context.Cause(ctx), &b) {
		return ctx, func() {}
	}
	return context.WithTimeout(context.WithoutCancel(ctx), time.Duration(b)/6)
}

// statementPlan is a ResultPlan with the column patterns its MaskColumn
// is built from.
type statementPlan struct {
	*postgres.ResultPlan
	patterns []string
}

// plan builds the treatment of an allowed statement's rows, nil when the
// decision asks for none. Column rules apply through the statement's
// lineage (maskColumns): a FunctionCall (no SQL) has none, so every value
// it returns is masked.
func (g *PolicyGate) plan(cfg *policies.Config, d policies.Decision) (*statementPlan, error) {
	if len(d.Masks) == 0 && d.MaxRows <= 0 && d.MaxBytes <= 0 {
		return nil, nil
	}
	sp := &statementPlan{ResultPlan: &postgres.ResultPlan{MaxRows: d.MaxRows, MaxBytes: d.MaxBytes, Policies: strings.Join(d.Policies, ", ")}}
	if len(d.Masks) > 0 {
		cr, err := g.compiled(cfg, d.Masks)
		if err != nil {
			return nil, err
		}
		sp.Detectors = cr.Detectors
		sp.patterns = cr.Columns
	}
	return sp, nil
}

// maskColumns answers, from lineage, whether a result column may carry a
// value a pattern names. A Query's result sets come from its statements
// that return rows, in order; a set sluice cannot place, a column count
// the lineage does not explain, and a source sluice cannot resolve are
// all masked. In the columns a SELECT * expands to, the server's column
// name says which column of the relation each one is. With rels, a
// source is also every source it stands for through views, and a
// relation rels does not know may carry anything.
func maskColumns(a *sql.Analysis, patterns []string, rels *Relations) func(set, i, n int, name string) bool {
	var sets []sql.Lineage
	if a != nil {
		for _, st := range a.Statements {
			if st.Columns != nil {
				sets = append(sets, st.Columns)
			}
		}
	}
	return func(set, i, n int, name string) bool {
		srcs := []sql.Source{sql.UnknownSource}
		star := false
		if set < len(sets) {
			srcs, star = sets[set].FieldIn(i, n)
		}
		for _, src := range srcs {
			if star && name != "" && !src.Unknown && src.Column == "*" {
				src.Column = name
			}
			expanded := []sql.Source{src}
			if rels != nil {
				expanded = rels.Expand(src)
			}
			for _, s := range expanded {
				for _, p := range patterns {
					if s.Matches(p) {
						return true
					}
				}
			}
		}
		return false
	}
}

// compiled returns the masking rules named, compiled once per config.
// Config validation has checked that every name is defined.
func (g *PolicyGate) compiled(cfg *policies.Config, names []string) (*mask.Rules, error) {
	return g.rules.get(cfg, names, func() (*mask.Rules, error) {
		r, err := mask.Compile(cfg.Masking, names)
		if err != nil {
			return nil, fmt.Errorf("masking rules %s: %w", strings.Join(names, ", "), err)
		}
		return r, nil
	})
}

// recordOutcome appends how a run ended: rows, bytes, masked columns,
// SQLSTATE, duration, and the statement's fingerprint (a second parse on
// a cache miss, done here, off the decision's path). It runs after the
// server answered, so it waits for nothing: the statement's own event,
// durable before it ran, is the record that gates; a store that fails
// this one loses only these details.
//
// A run the session ended before it was answered (o.Unfinished) is
// recorded at once, not in the background: the connection's end is
// recorded after it, and the trail must not show the session over with a
// statement's rows still unaccounted for.
func (g *PolicyGate) recordOutcome(ev audit.Event, a *sql.Analysis, o postgres.Outcome) {
	ev.Kind = audit.KindStatementResult
	ev.Time = g.Now()
	ev.Rows, ev.Bytes, ev.Duration, ev.SQLState, ev.MaskedColumns = o.Rows, o.Bytes, o.Duration, o.SQLState, o.Masked
	if o.Truncated {
		ev.Error = "result cut short by max_rows or max_bytes"
	}
	if o.Unfinished != "" {
		ev.Error = strings.TrimPrefix(ev.Error+"; ", "; ") + "incomplete: the session ended before the result did (" + o.Unfinished + "); rows and bytes are what reached the client"
	}
	record := func(timeout time.Duration) {
		if a != nil && len(a.Statements) == 1 {
			ev.Fingerprint = a.Statements[0].Fingerprint()
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_ = g.Audit.Append(ctx, ev)
	}
	if o.Unfinished != "" {
		// On the connection's way out, one after another: a short bound
		// each, so that a store that hangs does not hold the connection's
		// end (and sluice's shutdown, which waits for it) for long.
		record(unfinishedRecordTimeout)
		return
	}
	g.background.run(func() { record(resultRecordTimeout) })
}

// resultRecordTimeout bounds how long a result's record may wait for the
// store.
const resultRecordTimeout = 10 * time.Second

// unfinishedRecordTimeout bounds the record of each run a session ended
// before it was answered.
const unfinishedRecordTimeout = time.Second

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sessionSQL is what the gate remembers of one session: the statements it
// prepared and the cursors it declared in SQL, so that a later EXECUTE or
// FETCH is decided and masked as what it runs.
type sessionSQL struct {
	prepared map[string]*sql.Statement
	cursors  map[string]*sql.Statement
}

// resolve returns a with every EXECUTE and FETCH replaced by what it
// runs, as far as the session's own PREPAREs and DECLAREs tell, and
// records the ones a defines. A name prepared twice keeps the more
// dangerous definition: sluice cannot tell which one the server kept
// when the second failed. The cached analysis is never modified.
func resolve(a *sql.Analysis, mem *postgres.Memory) *sql.Analysis {
	if mem == nil {
		return a
	}
	ss, _ := mem.Value.(*sessionSQL)
	var out *sql.Analysis
	for i, st := range a.Statements {
		if ss == nil && st.Prepare == nil && st.Declare == nil {
			continue
		}
		if ss == nil {
			ss = &sessionSQL{prepared: map[string]*sql.Statement{}, cursors: map[string]*sql.Statement{}}
			mem.Value = ss
		}
		r := st
		if st.Execute != "" {
			r = r.WithPrepared(ss.prepared[st.Execute])
		}
		if st.Fetch != "" {
			r = r.WithCursor(ss.cursors[st.Fetch])
		}
		switch {
		case st.Prepare != nil:
			if old := ss.prepared[st.Prepare.Name]; old == nil || old.Class() <= st.Prepare.Statement.Class() {
				ss.prepared[st.Prepare.Name] = st.Prepare.Statement
			}
		case st.Declare != nil:
			ss.cursors[st.Declare.Name] = st.Declare.Statement
		case st.Deallocate == "*":
			clear(ss.prepared)
		case st.Deallocate != "":
			delete(ss.prepared, st.Deallocate)
		}
		if st.Close == "*" {
			clear(ss.cursors)
		} else if st.Close != "" {
			delete(ss.cursors, st.Close)
		}
		if r == st {
			continue
		}
		if out == nil {
			out = &sql.Analysis{Query: a.Query, Statements: slices.Clone(a.Statements)}
		}
		out.Statements[i] = r
	}
	if out == nil {
		return a
	}
	for _, st := range out.Statements {
		out.Classes = out.Classes.Union(st.Classes)
	}
	return out
}
