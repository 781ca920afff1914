package postgres

import (
	"context"
	"fmt"
	"strings"

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
// authenticated: statements go through the gate, the rest passes as is.
func (s *Session) onReadyClient(ctx context.Context, fr frame) {
	switch fr.typ {
	case 'Q':
		s.onQuery(ctx, fr)
		s.awaiting++
		return
	case 'P':
		s.onParse(ctx, fr)
		return
	case 'F':
		s.onFunctionCall(ctx, fr)
		s.awaiting++
		return
	case 'S':
		s.awaiting++
	case 'X':
		s.reason = "client sent Terminate"
	}
	s.toServer.pass(fr.raw)
}

func (s *Session) statement(p Protocol) Statement {
	return Statement{Protocol: p, Principal: s.identity.Principal, Target: s.cfg.Target, Startup: s.startup, TxStatus: s.txStatus}
}

// onQuery gates a simple-protocol Query. A denied Query is replaced by one
// that makes the server itself raise insufficient_privilege, so the
// transaction ends up exactly as a server-side permission error leaves it
// (design.md section 6, "Deny a statement").
func (s *Session) onQuery(ctx context.Context, fr frame) {
	var q pgproto3.Query
	if err := q.Decode(fr.body); err != nil {
		// The server would refuse it too; it sees it as sent.
		s.toServer.pass(fr.raw)
		return
	}
	st := s.statement(ProtocolSimple)
	st.SQL = q.String
	v := s.cfg.Gate.Decide(ctx, st)
	if v.Allowed() {
		s.toServer.pass(fr.raw)
		return
	}
	s.denyWithQuery(v)
}

// denyWithQuery sends the server a DO block that raises 42501 with a
// marker only this denial knows.
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
// created, so a Bind or Execute of it never runs.
func (s *Session) onParse(ctx context.Context, fr frame) {
	var p pgproto3.Parse
	if err := p.Decode(fr.body); err != nil {
		s.toServer.pass(fr.raw)
		return
	}
	st := s.statement(ProtocolExtended)
	st.SQL, st.Name = p.Query, p.Name
	v := s.cfg.Gate.Decide(ctx, st)
	if v.Allowed() {
		s.toServer.pass(fr.raw)
		return
	}
	marker := "sluice_denied_" + s.cfg.Nonce()
	s.sendServer(&pgproto3.Parse{Name: p.Name, Query: marker})
	s.addDenial(denial{marker: marker, code: codeSyntaxError, verdict: v})
}

// onFunctionCall gates a FunctionCall. A denied one becomes the denying
// Query, whose answer (ErrorResponse, ReadyForQuery) has the shape of a
// failed FunctionCall's.
func (s *Session) onFunctionCall(ctx context.Context, fr frame) {
	var f pgproto3.FunctionCall
	if err := f.Decode(fr.body); err != nil {
		s.toServer.pass(fr.raw)
		return
	}
	st := s.statement(ProtocolFunctionCall)
	st.FunctionOID = f.Function
	v := s.cfg.Gate.Decide(ctx, st)
	if v.Allowed() {
		s.toServer.pass(fr.raw)
		return
	}
	s.denyWithQuery(v)
}

func (s *Session) addDenial(d denial) {
	if len(s.denials) >= maxDenials {
		s.denials = s.denials[1:]
	}
	s.denials = append(s.denials, d)
}

// onReadyServer passes the server's answers on, turning a denial's error
// into sluice's words and following the transaction status.
func (s *Session) onReadyServer(fr frame) {
	switch fr.typ {
	case 'E':
		if len(s.denials) > 0 {
			if e, ok := s.rewriteDenial(fr); ok {
				s.sendClient(e)
				return
			}
		}
	case 'Z':
		s.txStatus = readyStatus(fr)
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
		out := stmtError(codeInsufficientPrivilege, d.verdict.Reason, d.verdict.Detail, d.verdict.Hint)
		if out.Message == "" {
			out.Message = fmt.Sprintf("sluice: statement denied on %s", s.cfg.Target)
		}
		return out, true
	}
	return nil, false
}
