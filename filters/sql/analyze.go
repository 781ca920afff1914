package sql

import (
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/sluicehq/sluice/filters/sql/internal/pgjson"
	"github.com/sluicehq/sluice/policies"
)

// Analysis is what sluice knows about one query string (a Simple Query may
// hold several statements). An Analysis may be shared through the cache:
// treat it and everything it points to as read-only.
type Analysis struct {
	// Query is the text that was analysed.
	Query string
	// Statements are the statements in the order the server runs them. An
	// unparseable query is one statement of class unknown with Err set; an
	// empty query (only whitespace, comments or semicolons) has none.
	Statements []*Statement
	// Classes is the union of every statement's classes.
	Classes Classes
}

// Class returns the most dangerous class in the query.
func (a *Analysis) Class() policies.OperationClass { return a.Classes.Max() }

// Statement is the analysis of one statement.
type Statement struct {
	// Text is the statement's text, without surrounding whitespace and
	// without the terminating semicolon.
	Text string
	// Location and Length locate the statement in the query, in bytes.
	Location, Length int
	// Kind is the parse node's name ("SelectStmt", "DoStmt"), "" when the
	// statement could not be parsed.
	Kind string
	// Classes holds every class found in the statement's parse tree
	// (doc.go lists the rules). It holds unknown until an EXECUTE is
	// resolved with WithPrepared.
	Classes Classes
	// Tables are the relations the statement names, with what it does to
	// each, in order of first appearance. CTE names are not relations.
	Tables []Table
	// Functions are the functions the statement calls, with their classes.
	Functions []Function
	// Columns is the lineage of the rows the statement returns, nil when it
	// returns none (lineage.go).
	Columns Lineage
	// Err is the parse error of an unparseable statement.
	Err error

	// Prepare is set for PREPARE name AS inner: the session keeps it so
	// that a later EXECUTE name can be resolved.
	Prepare *Named
	// Declare is set for DECLARE name CURSOR FOR inner: the session keeps it
	// so that FETCH name gets the cursor's lineage.
	Declare *Named
	// Execute names the prepared statement an EXECUTE runs (also inside
	// EXPLAIN ANALYZE or CREATE TABLE AS). See WithPrepared.
	Execute string
	// Fetch names the cursor a FETCH reads. See WithCursor.
	Fetch string
	// Deallocate names the prepared statement DEALLOCATE drops, "*" for
	// DEALLOCATE ALL and DISCARD ALL.
	Deallocate string
	// Close names the cursor CLOSE drops, "*" for CLOSE ALL and DISCARD ALL.
	Close string

	// base is Classes without the unknown an unresolved EXECUTE adds.
	base Classes
	// fp computes Fingerprint on first use; copies share it.
	fp *lazyFingerprint
}

// Fingerprint identifies the statement's shape regardless of constants,
// comments and whitespace: pg_query's fingerprint, in hex, as grants and
// audit use it. It is "" for an unparseable statement. It costs another
// parse (several µs), so it is computed on first use, off the decision
// path when only audit needs it, and kept with the cached analysis.
//
// pg_query's fingerprint ignores constants and stops at depth 100 of the
// parse tree: two statements with one fingerprint may differ in what their
// constants or deep subexpressions do. A grant scoped to a fingerprint
// must also check the statement's classes.
func (s *Statement) Fingerprint() string {
	if s.fp == nil {
		return ""
	}
	s.fp.once.Do(func() { s.fp.value = fingerprint(s.fp.text) })
	return s.fp.value
}

type lazyFingerprint struct {
	once  sync.Once
	text  string
	value string
}

// Class returns the most dangerous class in the statement.
func (s *Statement) Class() policies.OperationClass { return s.Classes.Max() }

// Named is a prepared statement or cursor a statement defines.
type Named struct {
	Name      string
	Statement *Statement
}

// Table is a relation a statement names. The parser cannot tell a table
// from a view, a materialized view or a foreign table.
type Table struct {
	Schema string // "" when unqualified (search_path decides)
	Name   string
	Op     TableOp
}

// String returns "schema.name:op" or "name:op".
func (t Table) String() string {
	if t.Schema != "" {
		return t.Schema + "." + t.Name + ":" + t.Op.String()
	}
	return t.Name + ":" + t.Op.String()
}

// Function is a function a statement calls.
type Function struct {
	Schema string // "" when unqualified
	Name   string
	Class  policies.OperationClass
}

// String returns the qualified name.
func (f Function) String() string {
	if f.Schema != "" {
		return f.Schema + "." + f.Name
	}
	return f.Name
}

// Analyze analyses query with the default Analyzer.
func Analyze(query string) *Analysis { return defaultAnalyzer.Analyze(query) }

var defaultAnalyzer = New()

// Analyze parses query and analyses every statement in it. It never fails:
// what cannot be parsed is a statement of class unknown.
func (a *Analyzer) Analyze(query string) *Analysis {
	if an, ok := a.cache.get(query); ok {
		return an
	}
	cacheable := len(query) <= a.maxCached
	var norm string
	if cacheable && a.shapes.max > 0 && mayHaveConstants(query) {
		// The same statement with other constants: its analysis is the
		// shape's, placed in this text (shape.go says why that is safe).
		if n, err := pg_query.Normalize(query); err == nil && n != query {
			norm = n
			if sh, ok := a.shapes.get(norm); ok {
				if an := sh.instantiate(query); an != nil {
					a.cache.put(query, an)
					return an
				}
			}
		}
	}
	an := a.analyze(query, 0)
	if cacheable {
		a.cache.put(query, an)
		if sh, ok := shapeOf(an); ok && norm != "" {
			a.shapes.put(norm, sh)
		}
	}
	return an
}

// maxDepth bounds analysis of SQL inside SQL (LANGUAGE sql function bodies).
const maxDepth = 4

func (a *Analyzer) analyze(query string, depth int) *Analysis {
	an := &Analysis{Query: query}
	// pgjson.Parse is pg_query.Parse without protobuf (a third of the
	// cost); its tests hold the two to the same trees and errors.
	tree, err := pgjson.Parse(query)
	if err != nil {
		st := &Statement{
			Text:    strings.TrimSpace(query),
			Length:  len(query),
			Classes: ClassesOf(policies.ClassUnknown),
			Columns: unknownLineage(),
			Err:     err,
		}
		st.base = st.Classes
		an.Statements = []*Statement{st}
		an.Classes = st.Classes
		return an
	}
	for _, raw := range tree.GetStmts() {
		loc, n := int(raw.GetStmtLocation()), int(raw.GetStmtLen())
		if n == 0 || loc+n > len(query) {
			n = len(query) - loc
		}
		text := query[loc : loc+n]
		st := a.statement(raw.GetStmt(), depth)
		st.Location, st.Length = loc, n
		st.Text = strings.TrimSpace(text)
		st.fp = &lazyFingerprint{text: st.Text}
		an.Statements = append(an.Statements, st)
		an.Classes = an.Classes.Union(st.Classes)
	}
	return an
}

// fingerprint returns pg_query's fingerprint of one statement's text. The
// statement was just parsed, so an error here would mean the parser
// disagrees with itself; the fingerprint is then left empty, which matches
// no grant.
func fingerprint(text string) string {
	fp, err := pg_query.Fingerprint(text)
	if err != nil {
		return ""
	}
	return fp
}

// statement analyses one parsed statement.
func (a *Analyzer) statement(n *pg_query.Node, depth int) *Statement {
	w := newWalker(a, depth)
	w.walk(n)
	st := w.result()
	if m := unwrapNode(n); m != nil {
		st.Kind = string(m.ProtoReflect().Descriptor().Name())
	}
	st.Columns = a.lineageOf(n)
	return st
}

// WithPrepared returns a copy of s, an EXECUTE, resolved against p, the
// statement its name was prepared with (Prepare.Statement of an earlier
// PREPARE or the session's record of a protocol-level Parse). A nil p (no
// such name) leaves the class unknown. When a name was prepared twice and
// the session cannot tell which definition the server kept, it must pass
// the more dangerous one.
func (s *Statement) WithPrepared(p *Statement) *Statement {
	if s.Execute == "" || p == nil {
		return s
	}
	c := *s
	c.Classes = s.base.Union(p.Classes)
	c.base = c.Classes
	if s.Kind == "ExecuteStmt" {
		c.Columns = p.Columns
		c.Tables = append(append([]Table(nil), s.Tables...), p.Tables...)
		c.Functions = append(append([]Function(nil), s.Functions...), p.Functions...)
	}
	return &c
}

// WithCursor returns a copy of s, a FETCH, whose result lineage is that of
// cursor, the Declare.Statement of the DECLARE that opened it. A nil cursor
// leaves the lineage unknown.
func (s *Statement) WithCursor(cursor *Statement) *Statement {
	if s.Fetch == "" || cursor == nil {
		return s
	}
	c := *s
	c.Columns = cursor.Columns
	return &c
}
