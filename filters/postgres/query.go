package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// maxDenials bounds the denials waiting for their error. They are cleared
// whenever the server has answered everything sent, so only a client that
// never lets the server catch up reaches it.
const maxDenials = 64

// denial is a refused statement whose replacement is at the server: the
// server's error carrying marker becomes verdict's words.
type denial struct {
	marker  string
	code    string // the SQLSTATE the replacement raises
	verdict Verdict
}

// onReadyClient handles a client message once the session is
// authenticated: statements go through the gate, the rest passes as is,
// and every message the server answers is tracked so that each result
// is treated by its own statement's plan.
func (s *Session) onReadyClient(ctx context.Context, fr frame) (Reply, bool) {
	var err error
	switch fr.typ {
	case 'Q':
		v := s.onQuery(ctx, fr)
		s.awaiting++
		err = s.track.push(op{kind: opQuery, plan: v.Results, finished: v.Finished, start: s.cfg.Now()})
	case 'P':
		name, sql, plan := s.onParse(ctx, fr)
		s.track.parsed(name, sql, plan)
		err = s.track.push(op{kind: opParse, name: name})
	case 'F':
		v := s.onFunctionCall(ctx, fr)
		s.awaiting++
		err = s.track.push(op{kind: opFunctionCall, finished: v.Finished, start: s.cfg.Now()})
	case 'B':
		err = s.onBind(fr)
	case 'D':
		err = s.onDescribe(fr)
	case 'E':
		err = s.onExecute(ctx, fr)
	case 'C':
		var c pgproto3.Close
		if err = c.Decode(fr.body); err == nil {
			s.track.closed(c.ObjectType, c.Name)
			s.toServer.pass(fr.raw)
			err = s.track.push(op{kind: opClose, name: c.Name})
		}
	case 'S':
		s.awaiting++
		s.toServer.pass(fr.raw)
		err = s.track.push(op{kind: opSync})
	case 'X':
		s.reason = "client sent Terminate"
		s.toServer.pass(fr.raw)
	default:
		// Flush, CopyData, CopyDone, CopyFail: answered by nothing of their
		// own. Anything else the server refuses itself.
		s.toServer.pass(fr.raw)
	}
	if err != nil {
		// The server would end the connection for a malformed message;
		// sluice ends it first, before anything it cannot follow runs.
		return s.closeNow(fmt.Sprintf("client: malformed %q message: %v", fr.typ, err))
	}
	return Reply{}, false
}

func (s *Session) statement(p Protocol) Statement {
	return Statement{Protocol: p, Principal: s.identity.Principal, Target: s.cfg.Target, SessionID: s.cfg.SessionID,
		Startup: s.startup, TxStatus: s.txStatus, Memory: &s.memory}
}

// decide asks the gate, unless the session's token has expired: then no
// statement runs, and the agent is told to reconnect with a fresh token
// (the server's own session outlives the token, so sluice is the one
// that stops it).
func (s *Session) decide(ctx context.Context, st Statement) Verdict {
	if exp := s.identity.Expiry; !exp.IsZero() && !s.cfg.Now().Before(exp) {
		return Deny(fmt.Sprintf("sluice: your token expired at %s", exp.UTC().Format(time.RFC3339)),
			"No statement runs on a session whose token has expired.", "Reconnect with a fresh token.")
	}
	return s.cfg.Gate.Decide(ctx, st)
}

// malformed is the verdict for a statement message sluice cannot decode:
// nothing it cannot read reaches the server.
func malformed(kind string, err error) Verdict {
	return Deny(fmt.Sprintf("sluice: malformed %s message: %v", kind, err), "", "")
}

// onQuery gates a simple-protocol Query. A denied Query is replaced by one
// that makes the server itself raise insufficient_privilege, so the
// transaction ends up exactly as a server-side permission error leaves it
// (design.md section 6, "Deny a statement"). It returns the verdict of an
// allowed Query (its result plan and completion hook), else the zero one.
func (s *Session) onQuery(ctx context.Context, fr frame) Verdict {
	var q pgproto3.Query
	if err := q.Decode(fr.body); err != nil {
		v := malformed("Query", err)
		s.denyWithQuery(v)
		return v
	}
	st := s.statement(ProtocolSimple)
	st.SQL = q.String
	v := s.decide(ctx, st)
	if v.Allowed() {
		s.toServer.pass(fr.raw)
		return v
	}
	s.denyWithQuery(v)
	return Verdict{}
}

// denyWithQuery sends the server a DO block that raises 42501 with a
// marker only this denial knows. The client reads the verdict's SQLSTATE
// (rewriteDenial); the replacement's own code only identifies it.
func (s *Session) denyWithQuery(v Verdict) {
	nonce := s.cfg.Nonce()
	marker := "sluice-denied-" + nonce
	s.sendServer(&pgproto3.Query{String: denySQL(nonce, marker, v.Reason)})
	s.addDenial(denial{marker: marker, code: codeInsufficientPrivilege, verdict: v})
}

// denySQL is the replacement statement. Nothing the agent wrote is in it.
// The marker is hex, so it needs no quoting. Sluice's reason goes to the
// server's log as the DETAIL, dollar-quoted with a tag made from the
// nonce: no escaping rule, standard_conforming_strings or backslash
// applies inside dollar quotes, and a reason with any "$" in it (which
// could end the quote) is left out rather than escaped.
func denySQL(nonce, marker, reason string) string {
	body, inner := "$sluice_"+nonce+"$", "$r_"+nonce+"$"
	detail := ""
	if reason != "" && !strings.ContainsAny(reason, "$\x00") {
		detail = ", DETAIL = " + inner + reason + inner
	}
	return "DO " + body + "BEGIN RAISE EXCEPTION USING ERRCODE = '" + codeInsufficientPrivilege +
		"', MESSAGE = '" + marker + "'" + detail + "; END" + body
}

// onParse gates an extended-protocol Parse. A denied Parse is replaced by
// one the server refuses to parse (a syntax error naming the marker): the
// error comes where a Parse's error comes, the server then skips to Sync as
// after any extended-protocol error, and the statement name is never
// created, so a Bind or Execute of it never runs. It returns the
// statement's name and text and the plan for its results.
func (s *Session) onParse(ctx context.Context, fr frame) (name, sql string, plan *ResultPlan) {
	var p pgproto3.Parse
	if err := p.Decode(fr.body); err != nil {
		// The name is unreadable too: the unnamed statement is as good
		// as any, since the replacement never creates one.
		s.denyParse("", malformed("Parse", err))
		return "", "", nil
	}
	st := s.statement(ProtocolExtended)
	st.SQL, st.Name = p.Query, p.Name
	v := s.decide(ctx, st)
	if v.Allowed() {
		s.toServer.pass(fr.raw)
		return p.Name, p.Query, v.Results
	}
	s.denyParse(p.Name, v)
	return p.Name, p.Query, nil
}

func (s *Session) denyParse(name string, v Verdict) {
	marker := "sluice_denied_" + s.cfg.Nonce()
	s.sendServer(&pgproto3.Parse{Name: name, Query: marker})
	s.addDenial(denial{marker: marker, code: codeSyntaxError, verdict: v})
}

// onFunctionCall gates a FunctionCall. A denied one becomes the denying
// Query, whose answer (ErrorResponse, ReadyForQuery) has the shape of a
// failed FunctionCall's.
func (s *Session) onFunctionCall(ctx context.Context, fr frame) Verdict {
	var f pgproto3.FunctionCall
	if err := f.Decode(fr.body); err != nil {
		s.denyWithQuery(malformed("FunctionCall", err))
		return Verdict{}
	}
	st := s.statement(ProtocolFunctionCall)
	st.FunctionOID = f.Function
	v := s.decide(ctx, st)
	if v.Allowed() {
		s.toServer.pass(fr.raw)
		return v
	}
	s.denyWithQuery(v)
	return Verdict{}
}

// onBind records which statement a portal runs and in which formats its
// rows come.
func (s *Session) onBind(fr frame) error {
	b, err := parseBindHead(fr.body)
	if err != nil {
		return err
	}
	s.track.bound(b)
	s.toServer.pass(fr.raw)
	return s.track.push(op{kind: opBind, name: b.portal})
}

// onDescribe tracks a Describe, whose RowDescription sluice learns from.
func (s *Session) onDescribe(fr frame) error {
	var d pgproto3.Describe
	if err := d.Decode(fr.body); err != nil {
		return err
	}
	s.toServer.pass(fr.raw)
	kind := opDescribePortal
	if d.ObjectType == 'S' {
		kind = opDescribeStatement
	} else if po := s.track.portals[d.Name]; po != nil {
		po.describing = true
	}
	return s.track.push(op{kind: kind, name: d.Name})
}

// onExecute decides and tracks an Execute: each run of a prepared
// statement is decided again (a grant revoked or a token expired since the
// Parse stops it) and recorded before it runs. A refused Execute is
// replaced by a Parse the server cannot parse, named by a marker, so the
// server answers with an error where the Execute's answer was due, skips
// to Sync as after any error, and creates nothing. When the rows of an
// allowed run are to be masked or counted and sluice has not seen their
// description, it asks the server for it first (a Describe of the portal)
// and keeps the answer to itself.
func (s *Session) onExecute(ctx context.Context, fr frame) error {
	var e pgproto3.Execute
	if err := e.Decode(fr.body); err != nil {
		return err
	}
	po := s.track.portals[e.Portal]
	if po == nil {
		// Every Bind passes through sluice, so a portal it has not seen
		// bound is a cursor the client declared in SQL (DECLARE, WITH HOLD
		// across transactions), which the protocol may Execute by name;
		// or nothing, which the server refuses. It runs as a FETCH from
		// that cursor: decided, recorded and masked as one.
		po = &portal{cursor: true}
		s.track.setPortal(e.Portal, po)
	}
	var plan *ResultPlan
	var finished func(Outcome)
	// Every run is decided, even of a statement whose last Parse sluice
	// refused: a refused Parse of a name already prepared leaves the
	// earlier statement of that name on the server, and a Bind of the
	// name binds that one. Deciding the refused text again refuses the
	// run, which fails closed.
	{
		st := s.statement(ProtocolExecute)
		st.Name, st.SQL = po.stmt, s.track.text(po.stmt)
		if po.cursor {
			st.Name, st.SQL = e.Portal, "FETCH ALL FROM "+quoteIdent(e.Portal)
		}
		v := s.decide(ctx, st)
		if !v.Allowed() {
			marker := "sluice_denied_" + s.cfg.Nonce()
			s.sendServer(&pgproto3.Parse{Name: marker, Query: marker})
			s.addDenial(denial{marker: marker, code: codeSyntaxError, verdict: v})
			return s.track.push(op{kind: opParse, name: marker})
		}
		plan, finished = v.Results, v.Finished
		po.plan = plan
	}
	if plan.active() && po.desc == nil && !po.describing {
		s.sendServer(&pgproto3.Describe{ObjectType: 'P', Name: e.Portal})
		if err := s.track.push(op{kind: opDescribePortal, name: e.Portal, injected: true}); err != nil {
			return err
		}
	}
	s.toServer.pass(fr.raw)
	return s.track.push(op{kind: opExecute, name: e.Portal, plan: plan, finished: finished, start: s.cfg.Now()})
}

func (s *Session) addDenial(d denial) {
	if len(s.denials) >= maxDenials {
		s.denials = s.denials[1:]
	}
	s.denials = append(s.denials, d)
}

// onReadyServer passes the server's answers on: rows through their
// statement's plan, a denial's error in sluice's words, and the
// transaction status followed.
func (s *Session) onReadyServer(fr frame) {
	if err := s.onAnswer(fr); err != nil {
		s.endWith(fatal(codeProtocolViolation, fmt.Sprintf("sluice: %v; ending the session rather than pass what it cannot follow", err), "", ""))
	}
}

func (s *Session) onAnswer(fr frame) error {
	h := s.track.head()
	switch fr.typ {
	case 'N':
		// Notices come at any time; one may quote a value (a RAISE NOTICE
		// of a masked column), so the statement's plan applies to it.
		if h != nil && h.plan.masks() {
			e := decodeError(fr.body)
			s.sendClient((*pgproto3.NoticeResponse)(scrubError(e, h.plan)))
			return nil
		}
	case 'S', 'A', 'v':
		// Parameter changes and notifications come at any time.
	case 'T':
		switch {
		case h != nil && h.kind == opQuery && !h.plan.active():
			h.sets++ // rows pass as sent: nothing to learn from it
		case h != nil && h.kind == opQuery:
			// Each result set of a Query begins with its description (an
			// Execute's rows never do: their Describe came before).
			var rd pgproto3.RowDescription
			if err := rd.Decode(fr.body); err != nil {
				return fmt.Errorf("malformed RowDescription: %v", err)
			}
			h.cur = newResultSet(h.plan, h.sets, rd.Fields)
			h.sets++
		case h != nil && (h.kind == opDescribeStatement || h.kind == opDescribePortal):
			var rd pgproto3.RowDescription
			if err := rd.Decode(fr.body); err != nil {
				return fmt.Errorf("malformed RowDescription: %v", err)
			}
			fields := slices.Clone(rd.Fields) // Decode's names alias the frame
			for i := range fields {
				fields[i].Name = slices.Clone(fields[i].Name)
			}
			if h.kind == opDescribeStatement {
				s.track.statement(h.name).desc = fields
			} else if po := s.track.portals[h.name]; po != nil {
				po.desc = fields
			}
			injected := h.injected
			s.track.pop()
			if injected {
				return nil
			}
		default:
			return s.unplaced(fr)
		}
	case 'n': // NoData
		if h == nil || (h.kind != opDescribeStatement && h.kind != opDescribePortal) {
			return s.unplaced(fr)
		}
		injected := h.injected
		s.track.pop()
		if injected {
			return nil
		}
	case 't': // ParameterDescription, before a statement's RowDescription
		if h == nil || h.kind != opDescribeStatement {
			return s.unplaced(fr)
		}
	case '1', '2', '3':
		want := opParse
		switch fr.typ {
		case '2':
			want = opBind
		case '3':
			want = opClose
		}
		if h == nil || h.kind != want {
			return s.unplaced(fr)
		}
		s.track.pop()
	case 'D', 'd':
		if h == nil || (h.kind != opQuery && h.kind != opExecute) {
			return s.unplaced(fr)
		}
		return s.onRow(h, fr)
	case 'H': // CopyOutResponse
		if h == nil || (h.kind != opQuery && h.kind != opExecute) {
			return s.unplaced(fr)
		}
		if !h.plan.active() {
			h.sets++
			break
		}
		var m pgproto3.CopyOutResponse
		if err := m.Decode(fr.body); err != nil {
			return fmt.Errorf("malformed CopyOutResponse: %v", err)
		}
		h.cur = &resultSet{plan: h.plan, set: h.sets}
		h.cur.describeCopy(&m)
		h.sets++
		if h.cur.binary && h.cur.rewrites() {
			// Binary COPY rows are not rewritten: none of them may pass.
			h.cur.over, h.cur.overWhy = true, "masking, which binary COPY output does not support"
		}
	case 'c': // CopyDone
		if h != nil && h.cur != nil && h.cur.copyOut && h.cur.over {
			// The client sees the error where the copy ends; the
			// server's CommandComplete that follows is dropped.
			s.sendClient(s.endSet(h))
			h.cur = &resultSet{dropComplete: true}
			return nil
		}
	case 'C', 'I', 's': // CommandComplete, EmptyQueryResponse, PortalSuspended
		if h == nil || (h.kind != opQuery && h.kind != opExecute) {
			return s.unplaced(fr)
		}
		if fr.typ == 'C' {
			h.out.Rows += tagRows(fr.body)
			h.partRows = 0
		}
		if h.cur != nil && h.cur.dropComplete {
			h.cur = nil
			if h.kind == opExecute {
				s.track.pop()
			}
			return nil
		}
		if e := s.endSet(h); e != nil {
			s.sendClient(e)
			if h.kind == opExecute {
				s.track.pop()
			}
			return nil
		}
		if h.kind == opExecute {
			s.track.pop()
		}
	case 'V': // FunctionCallResponse
		if h == nil || h.kind != opFunctionCall {
			return s.unplaced(fr)
		}
	case 'G', 'W': // CopyInResponse, CopyBothResponse: the client sends
	case 'E':
		var plan *ResultPlan
		if h != nil {
			plan = h.plan
			s.endSet(h)
			code := errorCode(fr.body)
			if h.kind.extended() {
				// The server skips everything up to the next Sync.
				for h := s.track.head(); h != nil && h.kind != opSync; h = s.track.head() {
					if h.out.SQLState == "" {
						h.out.SQLState = code
					}
					s.track.pop()
				}
			} else if h.out.SQLState == "" {
				h.out.SQLState = code
			}
		}
		if len(s.denials) > 0 {
			if e, ok := s.rewriteDenial(fr); ok {
				s.sendClient(e)
				return nil
			}
		}
		if plan.masks() {
			s.sendClient(scrubError(decodeError(fr.body), plan))
			return nil
		}
	case 'Z':
		if h == nil || (h.kind != opQuery && h.kind != opFunctionCall && h.kind != opSync) {
			return s.unplaced(fr)
		}
		s.endSet(h)
		s.track.pop()
		s.txStatus = readyStatus(fr)
		if s.txStatus == 'I' {
			s.track.idle()
		}
		if s.awaiting > 0 {
			s.awaiting--
		}
		if s.awaiting == 0 {
			// Everything sent has been answered: no denial's error can
			// still come.
			s.denials = s.denials[:0]
		}
	}
	s.toClient.pass(fr.raw)
	return nil
}

// onRow passes, rewrites or drops one DataRow or CopyData.
func (s *Session) onRow(h *op, fr frame) error {
	if !h.plan.active() {
		h.out.Bytes += int64(len(fr.raw) - 5)
		h.partRows++
		s.toClient.pass(fr.raw)
		return nil
	}
	rs := h.cur
	if rs == nil {
		if fr.typ == 'd' || h.kind != opExecute {
			return s.unplaced(fr)
		}
		// The first row of an Execute: its portal says how rows look.
		rs = s.executeSet(h, fr.body)
		h.cur = rs
	}
	out, keep, err := rs.row(fr.typ, fr.raw, fr.body)
	if err != nil {
		return err
	}
	if !keep {
		return nil
	}
	h.out.Bytes += int64(len(out) - 5)
	h.partRows++
	if len(out) > 0 && &out[0] == &fr.raw[0] {
		s.toClient.pass(fr.raw)
	} else {
		s.toClient.add(out)
	}
	return nil
}

// executeSet starts the result set of an Execute from its portal's
// description. Without one (the Describe sluice asked for failed, or no
// plan needed it) the types are unknown: a value the plan would touch is
// replaced whole.
func (s *Session) executeSet(h *op, row []byte) *resultSet {
	var desc []pgproto3.FieldDescription
	po := s.track.portals[h.name]
	if po != nil {
		desc = po.desc
	}
	if desc == nil && len(row) >= 2 {
		desc = make([]pgproto3.FieldDescription, binary.BigEndian.Uint16(row))
	}
	rs := newResultSet(h.plan, 0, desc)
	if po != nil {
		// A portal read a few rows per Execute (a fetch size) spends one
		// budget, not one per Execute.
		rs.rows, rs.bytes = po.rows, po.bytes
		rs.portal = po
	}
	return rs
}

// endSet ends the op's current result set: it adds the set to the run's
// outcome and returns the error the client gets in place of its completion
// when a budget cut it short.
func (s *Session) endSet(h *op) *pgproto3.ErrorResponse {
	rs := h.cur
	h.cur = nil
	if rs == nil || rs.plan == nil {
		return nil
	}
	if rs.portal != nil {
		rs.portal.rows, rs.portal.bytes = rs.rows, rs.bytes
	}
	for i, a := range rs.actions {
		if a == colMask && !slices.Contains(h.out.Masked, rs.names[i]) {
			h.out.Masked = append(h.out.Masked, rs.names[i])
		}
	}
	h.out.Truncated = h.out.Truncated || rs.over
	if rs.over {
		return rs.budgetError()
	}
	return nil
}

// unplaced reports a server message sluice cannot place.
func (s *Session) unplaced(fr frame) error {
	if h := s.track.head(); h != nil {
		return fmt.Errorf("the target sent message type %q while %s was awaiting its answer", fr.typ, h.kind)
	}
	return fmt.Errorf("the target sent message type %q when nothing awaited an answer", fr.typ)
}

// rewriteDenial matches a server error to the denial that caused it. Only
// the exact marker with the expected SQLSTATE matches: in an aborted
// transaction the replacement never runs and the server's 25P02 passes on
// unchanged, as it would for the original statement.
func (s *Session) rewriteDenial(fr frame) (*pgproto3.ErrorResponse, bool) {
	e := decodeError(fr.body)
	for i, d := range s.denials {
		if e.Code != d.code || !strings.Contains(e.Message, d.marker) {
			continue
		}
		if d.code == codeInsufficientPrivilege && e.Message != d.marker {
			continue
		}
		s.denials = append(s.denials[:i], s.denials[i+1:]...)
		code := d.verdict.SQLState
		if code == "" {
			code = codeInsufficientPrivilege
		}
		out := stmtError(code, d.verdict.Reason, d.verdict.Detail, d.verdict.Hint)
		if out.Message == "" {
			out.Message = fmt.Sprintf("sluice: statement denied on %s", s.cfg.Target)
		}
		return out, true
	}
	return nil, false
}

// tagRows is the row count a CommandComplete tag ends with ("SELECT 5",
// "INSERT 0 3", "COPY 10"); 0 for a tag without one ("BEGIN"). It runs
// once per statement, so it reads the bytes without copying them.
func tagRows(body []byte) int64 {
	tag := bytes.TrimRight(body, "\x00")
	digits := tag[bytes.LastIndexByte(tag, ' ')+1:]
	if len(digits) == 0 || len(digits) > 18 || len(digits) == len(tag) {
		return 0
	}
	var n int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// errorCode is an ErrorResponse's SQLSTATE, without decoding the rest.
func errorCode(body []byte) string {
	for len(body) > 0 && body[0] != 0 {
		f := body[0]
		end := bytes.IndexByte(body[1:], 0)
		if end < 0 {
			return ""
		}
		if f == 'C' {
			return string(body[1 : 1+end])
		}
		body = body[2+end:]
	}
	return ""
}
