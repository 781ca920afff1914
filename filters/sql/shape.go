package sql

import "strings"

// A shape is a statement with its constants taken out: pg_query's
// Normalize turns "SELECT * FROM t WHERE id = 42" into "... id = $1".
// Agents on the simple protocol inline their values, so the exact-text
// cache misses on every new value although the statement is the same;
// the shape cache answers those with the analysis of the first statement
// of that shape, for the cost of one Normalize (about 5 µs, against 50 to
// 200 µs for a parse into Go).
//
// That is only sound where no part of the analysis depends on a
// constant's value. The walker reads constants in three places:
// set_config's first argument (its class is the setting's), EXPLAIN's
// ANALYZE option, and the options of utility statements (a function's
// LANGUAGE and body). So a shape is kept only for one plain SELECT,
// INSERT, UPDATE or DELETE that calls no set_config: their classes come
// from the statement kind, the functions they call and the clauses they
// use; their tables and lineage from names. Everything else (other
// statements, several statements in one query, unparseable text) is
// analysed every time its exact text misses.
//
// Normalize replaces constants only, so the text around the statement
// (leading comments and whitespace, the trailing semicolon) is the same
// bytes in every query of one shape: prefix and suffix say where the
// statement sits.
type shape struct {
	an             *Analysis // the analysis of the first query of the shape
	prefix, suffix int       // bytes before and after the statement
}

// shapeKinds are the statements whose analysis no constant changes.
var shapeKinds = map[string]bool{"SelectStmt": true, "InsertStmt": true, "UpdateStmt": true, "DeleteStmt": true}

// shapeOf returns the shape of an analysis, false when it must not be
// shared by queries that differ in their constants.
func shapeOf(an *Analysis) (shape, bool) {
	if len(an.Statements) != 1 {
		return shape{}, false
	}
	st := an.Statements[0]
	if st.Err != nil || !shapeKinds[st.Kind] || st.Prepare != nil || st.Declare != nil ||
		st.Execute != "" || st.Fetch != "" || st.Deallocate != "" || st.Close != "" {
		return shape{}, false
	}
	for _, f := range st.Functions {
		if strings.EqualFold(f.Name, "set_config") {
			return shape{}, false
		}
	}
	end := st.Location + st.Length
	if st.Location < 0 || end > len(an.Query) {
		return shape{}, false
	}
	return shape{an: an, prefix: st.Location, suffix: len(an.Query) - end}, true
}

// instantiate returns the shape's analysis for query, a statement of the
// same shape: the same statement, placed in query's text, with its own
// fingerprint. Nil if query cannot hold the statement where the shape
// says (it then gets an analysis of its own).
func (sh shape) instantiate(query string) *Analysis {
	end := len(query) - sh.suffix
	if end < sh.prefix {
		return nil
	}
	st := *sh.an.Statements[0] // the rest is shared and never written
	st.Location, st.Length = sh.prefix, end-sh.prefix
	st.Text = strings.TrimSpace(query[sh.prefix:end])
	st.fp = &lazyFingerprint{text: st.Text}
	return &Analysis{Query: query, Statements: []*Statement{&st}, Classes: sh.an.Classes}
}

// mayHaveConstants reports whether query can contain a constant Normalize
// would replace: a number, a quoted string, a dollar-quoted string or a
// parameter. Without one its shape is its text, which the exact cache
// already missed, so Normalize is skipped.
//
// A query with a NUL byte is never shaped: libpg_query reads C strings,
// so Normalize drops everything after it, and two queries that differ
// there would share a key. (The wire protocol cannot carry one: its
// query strings end at the first NUL.)
func mayHaveConstants(query string) bool {
	return strings.ContainsAny(query, "0123456789'$") && strings.IndexByte(query, 0) < 0
}
