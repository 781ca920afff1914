package postgres

import (
	"encoding/binary"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sluicehq/sluice/filters/mask"
)

// ResultPlan is what happens to the rows an allowed statement returns. A
// nil plan passes them as the server sent them.
type ResultPlan struct {
	// MaskColumn reports whether column i of a result set of n columns is
	// masked by a column rule; name is the column's name as the server
	// described it ("" when it did not, as for COPY). set counts the
	// statement's result sets from 0 (a Query of several statements
	// returns several). The gate answers from lineage and fails closed: a
	// column whose source it cannot tell is masked. nil masks no column by
	// rule.
	MaskColumn func(set, i, n int, name string) bool
	// Detectors look for personal data in every value no rule masks.
	Detectors *mask.Detectors
	// MaxRows and MaxBytes bound each result set the client receives (0:
	// no bound). Bytes count DataRow and CopyData bodies as sent.
	MaxRows, MaxBytes int64
	// Policies name the policies the budgets come from, for the error.
	Policies string
}

// active reports whether the plan changes anything.
func (p *ResultPlan) active() bool {
	return p != nil && (p.MaskColumn != nil || !p.Detectors.Empty() || p.MaxRows > 0 || p.MaxBytes > 0)
}

// masks reports whether the plan masks values (rules or detectors).
func (p *ResultPlan) masks() bool {
	return p != nil && (p.MaskColumn != nil || !p.Detectors.Empty())
}

// scrubError applies a masking plan to a server error or notice, which may
// quote the values a result would have masked: "Key (email)=(…) already
// exists" is in the DETAIL, a RAISE may put anything in the message. With
// column rules, the DETAIL (where Postgres puts values) is withheld, since
// sluice cannot tell which column a quoted value came from; detector hits
// are redacted in every text field. Fields of a code Postgres does not
// document are dropped: sluice cannot tell what they carry, and pgproto3
// would re-encode them in map order. The SQLSTATE and the rest stay, so a
// client still knows what went wrong.
func scrubError(e *pgproto3.ErrorResponse, p *ResultPlan) *pgproto3.ErrorResponse {
	e.UnknownFields = nil
	if p.MaskColumn != nil && e.Detail != "" {
		e.Detail = "sluice: detail withheld, it may quote values that masking hides"
	}
	if !p.Detectors.Empty() {
		for _, f := range []*string{&e.Message, &e.Detail, &e.Hint, &e.Where, &e.InternalQuery} {
			if spans := p.Detectors.Find([]byte(*f)); len(spans) > 0 {
				*f = string(mask.Redact(nil, []byte(*f), spans))
			}
		}
	}
	return e
}

// colAction is what happens to one column's values.
type colAction uint8

const (
	colPass   colAction = iota // as sent
	colDetect                  // redact detector hits
	colMask                    // replace every value
)

// resultSet is one result set streaming to the client: its columns, how
// each is treated, and the budget spent.
type resultSet struct {
	plan    *ResultPlan
	set     int
	actions []colAction
	types   []uint32
	formats []int16
	// portal is the portal an Execute reads, whose budget spans Executes.
	portal *portal
	// copyOut is set for the rows of COPY TO STDOUT (CopyData messages).
	copyOut bool
	binary  bool // COPY's overall format is binary
	names   []string

	rows, bytes int64
	over        bool // a budget is spent: rows are dropped
	// dropComplete marks the end of a COPY whose error the client already
	// has: the server's CommandComplete is not passed on.
	dropComplete bool
	overWhy      string // which budget
	scratch      []byte
	cell         []byte
}

// newResultSet plans the treatment of a result set described by fields
// (nil for a COPY, which describes only formats).
func newResultSet(plan *ResultPlan, set int, fields []pgproto3.FieldDescription) *resultSet {
	rs := &resultSet{plan: plan, set: set}
	rs.describe(fields)
	return rs
}

func (rs *resultSet) describe(fields []pgproto3.FieldDescription) {
	n := len(fields)
	rs.actions = make([]colAction, n)
	rs.types = make([]uint32, n)
	rs.formats = make([]int16, n)
	rs.names = make([]string, n)
	for i, f := range fields {
		rs.types[i], rs.formats[i], rs.names[i] = f.DataTypeOID, f.Format, string(f.Name)
	}
	rs.plan.decide(rs, n, rs.names)
}

// describeCopy plans a COPY TO STDOUT's rows from its CopyOutResponse.
func (rs *resultSet) describeCopy(m *pgproto3.CopyOutResponse) {
	n := len(m.ColumnFormatCodes)
	rs.copyOut, rs.binary = true, m.OverallFormat != 0
	rs.actions = make([]colAction, n)
	rs.types = make([]uint32, n) // COPY says no types: unknown
	rs.formats = make([]int16, n)
	rs.names = make([]string, n)
	rs.plan.decide(rs, n, rs.names) // COPY names no columns
	for i := range rs.names {
		rs.names[i] = fmt.Sprintf("column %d", i+1)
	}
}

func (p *ResultPlan) decide(rs *resultSet, n int, names []string) {
	if p == nil {
		return
	}
	for i := range n {
		switch {
		case p.MaskColumn != nil && p.MaskColumn(rs.set, i, n, names[i]):
			rs.actions[i] = colMask
		case !p.Detectors.Empty():
			rs.actions[i] = colDetect
		}
	}
}

// rewrites reports whether any value may change.
func (rs *resultSet) rewrites() bool {
	for _, a := range rs.actions {
		if a != colPass {
			return true
		}
	}
	return false
}

// row handles one DataRow (or CopyData) body. It returns the message to
// send, or ok false when the row is dropped (over budget) or malformed
// (err set).
func (rs *resultSet) row(typ byte, raw, body []byte) (out []byte, keep bool, err error) {
	if rs.over {
		return nil, false, nil
	}
	if p := rs.plan; p != nil && (p.MaxRows > 0 && rs.rows+1 > p.MaxRows) {
		rs.over, rs.overWhy = true, fmt.Sprintf("max_rows %d", p.MaxRows)
		return nil, false, nil
	}
	out = raw
	if rs.rewrites() {
		if typ == 'd' {
			out, err = rs.maskCopyRow(body)
		} else {
			out, err = rs.maskDataRow(body)
		}
		if err != nil {
			return nil, false, err
		}
	}
	size := int64(len(out) - 5)
	if p := rs.plan; p != nil && p.MaxBytes > 0 && rs.bytes+size > p.MaxBytes {
		rs.over, rs.overWhy = true, fmt.Sprintf("max_bytes %d", p.MaxBytes)
		return nil, false, nil
	}
	rs.rows++
	rs.bytes += size
	return out, true, nil
}

// maskDataRow rewrites a DataRow body: Int16 count, then per column an
// Int32 length (-1 for NULL) and the value.
func (rs *resultSet) maskDataRow(body []byte) ([]byte, error) {
	if len(body) < 2 {
		return nil, fmt.Errorf("DataRow of %d bytes", len(body))
	}
	n := int(binary.BigEndian.Uint16(body))
	if n != len(rs.actions) {
		return nil, fmt.Errorf("DataRow has %d columns, its RowDescription %d", n, len(rs.actions))
	}
	out := append(rs.scratch[:0], 'D', 0, 0, 0, 0, body[0], body[1])
	rest := body[2:]
	for i := range n {
		if len(rest) < 4 {
			return nil, fmt.Errorf("DataRow column %d is cut short", i+1)
		}
		l := int32(binary.BigEndian.Uint32(rest))
		rest = rest[4:]
		null := l < 0
		var v []byte
		if !null {
			if int(l) > len(rest) {
				return nil, fmt.Errorf("DataRow column %d is cut short", i+1)
			}
			v, rest = rest[:l], rest[l:]
		}
		v, null = rs.value(i, v, null)
		if null {
			out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
			continue
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
		out = append(out, v...)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("DataRow has %d bytes after its last column", len(rest))
	}
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	rs.scratch = out
	return out, nil
}

// value is the treatment of one cell.
func (rs *resultSet) value(i int, v []byte, null bool) ([]byte, bool) {
	if null {
		return nil, true
	}
	switch rs.actions[i] {
	case colMask:
		rs.cell, null = mask.Value(rs.cell, rs.types[i], rs.formats[i], v, false)
		return rs.cell, null
	case colDetect:
		spans := rs.plan.Detectors.Find(v)
		if len(spans) == 0 {
			return v, false
		}
		if !mask.IsText(rs.types[i]) {
			// Redacting part of a number, a date or a binary value leaves
			// bytes its type may not parse: the whole value is replaced.
			rs.cell, null = mask.Value(rs.cell, rs.types[i], rs.formats[i], v, false)
			return rs.cell, null
		}
		rs.cell = mask.Redact(rs.cell[:0], v, spans)
		return rs.cell, false
	}
	return v, false
}

// maskCopyRow rewrites one CopyData row of COPY TO STDOUT in text format:
// fields separated by tabs, NULL as \N, a newline at the end. A masked
// field keeps its shape (mask.Shape) with its backslash escapes as they
// were (COPY TO writes only \\, \b, \f, \n, \r, \t and \v), so the
// output stays valid COPY text. Binary COPY, whose fields sluice cannot
// rewrite here, is refused by the caller.
func (rs *resultSet) maskCopyRow(body []byte) ([]byte, error) {
	out := append(rs.scratch[:0], 'd', 0, 0, 0, 0)
	line := body
	nl := len(line) > 0 && line[len(line)-1] == '\n'
	if nl {
		line = line[:len(line)-1]
	}
	col := 0
	for start := 0; start <= len(line); {
		end := start
		for end < len(line) && line[end] != '\t' {
			end++
		}
		f := line[start:end]
		if col >= len(rs.actions) {
			return nil, fmt.Errorf("COPY row has more than %d fields", len(rs.actions))
		}
		switch {
		case string(f) == `\N`:
			out = append(out, f...)
		case rs.actions[col] == colMask:
			out = copyShape(out, f)
		case rs.actions[col] == colDetect:
			if spans := rs.plan.Detectors.Find(f); len(spans) > 0 {
				out = mask.Redact(out, f, spans)
			} else {
				out = append(out, f...)
			}
		default:
			out = append(out, f...)
		}
		col++
		if end == len(line) {
			break
		}
		out = append(out, '\t')
		start = end + 1
	}
	if col != len(rs.actions) {
		return nil, fmt.Errorf("COPY row has %d fields, its CopyOutResponse %d", col, len(rs.actions))
	}
	if nl {
		out = append(out, '\n')
	}
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	rs.scratch = out
	return out, nil
}

// copyShape is mask.Shape for a COPY text field: a backslash escape stays
// a valid escape of the same length.
func copyShape(dst, f []byte) []byte {
	for i := 0; i < len(f); i++ {
		if f[i] == '\\' && i+1 < len(f) {
			dst = append(dst, '\\', f[i+1])
			i++
			continue
		}
		dst = mask.Shape(dst, f[i:i+1])
	}
	return dst
}

// budgetError is what the client gets in place of an oversized result's
// CommandComplete.
func (rs *resultSet) budgetError() *pgproto3.ErrorResponse {
	by := ""
	if rs.plan.Policies != "" {
		by = " set by policy " + rs.plan.Policies
	}
	return stmtError(codeProgramLimitExceeded,
		fmt.Sprintf("sluice: the result exceeds %s%s", rs.overWhy, by),
		fmt.Sprintf("The first %d rows (%d bytes) were sent; the rest were dropped. The statement itself ran to completion on the server.", rs.rows, rs.bytes),
		"Ask for fewer rows (LIMIT, a narrower WHERE, fewer columns).")
}
