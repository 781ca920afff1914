package postgres

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The tracker follows which client message each server message answers,
// so that every DataRow and CopyData is treated by the plan of the
// statement that produced it, with the column types and formats of its
// own result. It mirrors the server's rules (src/backend/tcop/postgres.c):
// messages are answered in order; after an error in the extended protocol
// the server skips everything up to Sync; a Query, a FunctionCall and a
// Sync each end with ReadyForQuery.

// opKind is a client message awaiting its answer.
type opKind uint8

const (
	opQuery opKind = iota + 1
	opFunctionCall
	opParse
	opBind
	opDescribeStatement
	opDescribePortal
	opExecute
	opClose
	opSync
)

func (k opKind) extended() bool { return k >= opParse && k <= opClose }

var opNames = [...]string{opQuery: "Query", opFunctionCall: "FunctionCall", opParse: "Parse", opBind: "Bind",
	opDescribeStatement: "Describe(S)", opDescribePortal: "Describe(P)", opExecute: "Execute", opClose: "Close", opSync: "Sync"}

func (k opKind) String() string {
	if int(k) < len(opNames) && opNames[k] != "" {
		return opNames[k]
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// op is one client message awaiting its answer.
type op struct {
	kind opKind
	name string // statement or portal
	plan *ResultPlan
	// injected marks a Describe sluice sent on its own: its answer is
	// sluice's, never the client's.
	injected bool
	sets     int        // result sets begun (Query)
	cur      *resultSet // the result set streaming
	// finished, when set, hears how the run ended once the op is answered.
	finished func(Outcome)
	start    time.Time
	out      Outcome
	// partRows counts the rows (DataRow, CopyData) sent to the client
	// since the last completion tag, which gives out.Rows their count: what
	// an unfinished run reports (flush).
	partRows int64
}

// prepared is what sluice knows of a prepared statement.
type prepared struct {
	plan *ResultPlan
	desc []pgproto3.FieldDescription // from a Describe, formats all text
	// sql is the statement's text, decided again at each Execute.
	sql string
}

// portal is what sluice knows of a portal.
type portal struct {
	plan    *ResultPlan
	stmt    string
	formats []int16 // Bind's result format codes
	desc    []pgproto3.FieldDescription
	// describing is set while the client's own Describe of the portal
	// awaits its answer, which will give desc before any row.
	describing bool
	// rows and bytes are what earlier Executes of the portal sent.
	rows, bytes int64
	// cursor marks a portal sluice never saw bound: a cursor declared in
	// SQL, run as FETCH from it.
	cursor bool
}

// maxOps bounds the messages awaiting answers. The server answers in
// order, so only a client that never reads reaches it.
const maxOps = 1 << 16

// tracker is the session's view of the conversation's state.
type tracker struct {
	now     func() time.Time
	ops     []op
	stmts   map[string]*prepared
	portals map[string]*portal
}

func (t *tracker) push(o op) error {
	if len(t.ops) >= maxOps {
		return fmt.Errorf("more than %d messages are waiting for the server's answers", maxOps)
	}
	t.ops = append(t.ops, o)
	return nil
}

func (t *tracker) head() *op {
	if len(t.ops) == 0 {
		return nil
	}
	return &t.ops[0]
}

func (t *tracker) pop() {
	if o := &t.ops[0]; o.finished != nil {
		o.out.Duration = t.now().Sub(o.start)
		o.finished(o.out)
	}
	t.ops[0] = op{}
	t.ops = t.ops[1:]
	if len(t.ops) == 0 {
		t.ops = t.ops[:0:0] // let the backing array go once drained
	}
}

// flush reports every run still awaiting its answer as unfinished, with
// the rows and bytes that reached the client so far, and forgets them: the
// connection ended (why) before the server completed them.
func (t *tracker) flush(why string) {
	for i := range t.ops {
		o := &t.ops[i]
		if o.finished == nil {
			continue
		}
		o.out.Rows += o.partRows
		o.out.Unfinished = why
		o.out.Duration = t.now().Sub(o.start)
		f := o.finished
		o.finished = nil
		f(o.out)
	}
	t.ops = nil
}

func (t *tracker) statement(name string) *prepared {
	if t.stmts == nil {
		t.stmts = make(map[string]*prepared)
	}
	p := t.stmts[name]
	if p == nil {
		p = &prepared{}
		t.stmts[name] = p
	}
	return p
}

// parsed records a Parse: the statement's plan replaces any earlier one
// of the same name (the server replaces the unnamed statement too).
func (t *tracker) parsed(name, sql string, plan *ResultPlan) {
	p := t.statement(name)
	p.plan, p.desc, p.sql = plan, nil, sql
}

// text is what a run of statement name executes: its Parse's text, or,
// for a statement the client prepared in SQL (PREPARE) and binds by name,
// EXECUTE of it, which the gate resolves from the session's PREPAREs.
func (t *tracker) text(name string) string {
	if p := t.stmts[name]; p != nil {
		return p.sql
	}
	return "EXECUTE " + quoteIdent(name)
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// bound records a Bind of statement stmt to portal name.
func (t *tracker) bound(b bindHead) {
	if t.portals == nil {
		t.portals = make(map[string]*portal)
	}
	st := t.stmts[b.stmt]
	po := &portal{stmt: b.stmt, formats: b.formats}
	if st != nil {
		po.plan = st.plan
		if st.desc != nil {
			po.desc = withFormats(st.desc, b.formats)
		}
	}
	t.portals[b.portal] = po
}

// setPortal records a portal sluice learnt of other than by a Bind.
func (t *tracker) setPortal(name string, po *portal) {
	if t.portals == nil {
		t.portals = make(map[string]*portal)
	}
	t.portals[name] = po
}

// withFormats applies Bind's result format codes to a statement's
// description: none means all text, one applies to all, else one each.
func withFormats(desc []pgproto3.FieldDescription, formats []int16) []pgproto3.FieldDescription {
	out := slices.Clone(desc)
	for i := range out {
		switch {
		case len(formats) == 1:
			out[i].Format = formats[0]
		case i < len(formats):
			out[i].Format = formats[i]
		default:
			out[i].Format = 0
		}
	}
	return out
}

// closed forgets a statement or portal the client closed.
func (t *tracker) closed(kind byte, name string) {
	if kind == 'S' {
		delete(t.stmts, name)
	} else {
		delete(t.portals, name)
	}
}

// idle forgets the portals: a transaction's end destroys them all.
func (t *tracker) idle() {
	clear(t.portals)
}

// bindHead is the part of a Bind the tracker needs.
type bindHead struct {
	portal, stmt string
	formats      []int16
}

// parseBindHead reads a Bind body without decoding its parameter values:
// portal, statement, parameter formats, parameters, result formats.
func parseBindHead(body []byte) (bindHead, error) {
	var b bindHead
	cstr := func() (string, bool) {
		i := bytes.IndexByte(body, 0)
		if i < 0 {
			return "", false
		}
		s := string(body[:i])
		body = body[i+1:]
		return s, true
	}
	u16 := func() (int, bool) {
		if len(body) < 2 {
			return 0, false
		}
		v := int(binary.BigEndian.Uint16(body))
		body = body[2:]
		return v, true
	}
	var ok bool
	if b.portal, ok = cstr(); !ok {
		return b, fmt.Errorf("Bind without a portal name")
	}
	if b.stmt, ok = cstr(); !ok {
		return b, fmt.Errorf("Bind without a statement name")
	}
	n, ok := u16()
	if !ok || len(body) < 2*n {
		return b, fmt.Errorf("Bind parameter formats cut short")
	}
	body = body[2*n:]
	if n, ok = u16(); !ok {
		return b, fmt.Errorf("Bind parameter count cut short")
	}
	for i := range n {
		if len(body) < 4 {
			return b, fmt.Errorf("Bind parameter %d cut short", i+1)
		}
		l := int32(binary.BigEndian.Uint32(body))
		body = body[4:]
		if l > 0 {
			if int(l) > len(body) {
				return b, fmt.Errorf("Bind parameter %d cut short", i+1)
			}
			body = body[l:]
		}
	}
	if n, ok = u16(); !ok || len(body) != 2*n {
		return b, fmt.Errorf("Bind result formats malformed")
	}
	b.formats = make([]int16, n)
	for i := range n {
		b.formats[i] = int16(binary.BigEndian.Uint16(body[2*i:]))
	}
	return b, nil
}
