package sql

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// relation is a FROM item as lineage sees it: a base relation (table or
// view, the parser cannot tell) whose columns only the catalog knows, or a
// derived one (subquery, CTE, VALUES, function, join) whose columns the
// query itself defines, possibly with stars in them.
type relation struct {
	alias string // the name the query refers to it by; "" if none
	// Base relation: table != "". aliasCols renames its first columns.
	schema, table string
	aliasCols     []string
	// Derived relation.
	cols Lineage
}

func (r *relation) base() bool { return r.table != "" }

// expand is what r.* and SELECT * contribute.
func (r *relation) expand() Lineage {
	if r.base() {
		// An alias column list renames the first columns by position
		// (which ones they are needs the catalog); the rest keep their
		// own names, so a star stands only for those.
		out := make(Lineage, 0, len(r.aliasCols)+1)
		for _, name := range r.aliasCols {
			out = append(out, Column{Name: name, Sources: []Source{r.wildcard()}})
		}
		return append(out, Column{Name: "*", Star: true, Sources: []Source{r.wildcard()}})
	}
	return r.cols
}

func (r *relation) wildcard() Source {
	return Source{Schema: r.schema, Table: r.table, Column: "*"}
}

// all is where a whole-row reference to r may come from.
func (r *relation) all() []Source {
	if r.base() {
		return []Source{r.wildcard()}
	}
	return r.cols.Sources()
}

// column returns where r's column name may come from. found reports that
// r may have such a column, definite that it certainly has, so outer
// scopes need not be asked.
func (r *relation) column(name string) (srcs []Source, found, definite bool) {
	if r.base() {
		if contains(r.aliasCols, name) {
			// Renamed by position: which column it is needs the catalog.
			return []Source{r.wildcard()}, true, false
		}
		return []Source{{Schema: r.schema, Table: r.table, Column: name}}, true, false
	}
	for _, c := range r.cols {
		if !c.Star && c.Name == name {
			return c.Sources, true, true
		}
	}
	for _, c := range r.cols {
		if c.Star {
			srcs = addSources(srcs, c.Sources...)
			found = true
		}
	}
	return srcs, found, false
}

// scope is one level of name resolution: a query's FROM items and the
// CTEs it may refer to, inside the levels of the queries around it.
type scope struct {
	parent *scope
	items  []*relation // top-level FROM items, in order, for SELECT *
	names  []*relation // relations the query may name
	ctes   []*relation
}

func (s *scope) cte(name string) *relation {
	for ; s != nil; s = s.parent {
		for i := len(s.ctes) - 1; i >= 0; i-- {
			if s.ctes[i].alias == name {
				return s.ctes[i]
			}
		}
	}
	return nil
}

// lookupRel finds the relation qual ([table], [schema, table] or
// [catalog, schema, table]) names, innermost scope first.
func (s *scope) lookupRel(qual []string) *relation {
	if len(qual) == 0 {
		return nil
	}
	name := qual[len(qual)-1]
	var schema string
	if len(qual) > 1 {
		schema = qual[len(qual)-2]
	}
	for ; s != nil; s = s.parent {
		for _, r := range s.names {
			if r.alias == name && (schema == "" || r.schema == "" || r.schema == schema) {
				return r
			}
		}
	}
	return nil
}

// columnRef resolves a column reference to its sources.
func (l *lineager) columnRef(cr *pg_query.ColumnRef, sc *scope) []Source {
	var names []string
	star := false
	for _, f := range cr.GetFields() {
		if s := f.GetString_(); s != nil {
			names = append(names, s.GetSval())
		} else if f.GetAStar() != nil {
			star = true
		}
	}
	unknown := []Source{UnknownSource}
	switch {
	case star && len(names) == 0:
		var out []Source
		for _, r := range sc.items {
			out = addSources(out, r.all()...)
		}
		return out
	case star:
		if r := sc.lookupRel(names); r != nil {
			return r.all()
		}
		return unknown
	case len(names) == 1:
		return l.unqualified(names[0], sc)
	case len(names) > 1:
		r := sc.lookupRel(names[:len(names)-1])
		if r == nil {
			return unknown
		}
		if srcs, found, _ := r.column(names[len(names)-1]); found {
			return srcs
		}
	}
	return unknown
}

// unqualified resolves a bare name: a column of some relation in scope, or
// a whole-row reference to a relation of that name. Without the catalog,
// any base relation may have the column, so every candidate counts, and
// outer scopes are consulted until a derived relation certainly has it.
func (l *lineager) unqualified(name string, sc *scope) []Source {
	var out []Source
	found := false
	for level := sc; level != nil; level = level.parent {
		definite := false
		for _, r := range level.names {
			srcs, f, def := r.column(name)
			out = addSources(out, srcs...)
			found, definite = found || f, definite || def
			if r.alias == name {
				out = addSources(out, r.all()...)
				found = true
			}
		}
		if definite {
			break
		}
	}
	if !found {
		return []Source{UnknownSource}
	}
	return out
}

// rename applies an alias's column names to cols. Names land by position,
// so a star before the last renamed position makes every name uncertain:
// the result is then one star holding everything.
func rename(cols Lineage, alias *pg_query.Alias) Lineage {
	names := stringList(alias.GetColnames())
	if len(names) == 0 {
		return cols
	}
	for i := 0; i < len(cols) && i < len(names); i++ {
		if cols[i].Star {
			return Lineage{{Name: "*", Star: true, Sources: cols.Sources()}}
		}
	}
	out := make(Lineage, len(cols))
	copy(out, cols)
	for i := 0; i < len(out) && i < len(names); i++ {
		out[i].Name = names[i]
	}
	return out
}

func stringList(nodes []*pg_query.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.GetString_().GetSval())
	}
	return out
}

// union merges two results column by column (UNION, INTERSECT, EXCEPT,
// recursive CTEs). With a star on either side positions do not line up:
// the result is one star holding everything.
func union(a, b Lineage) Lineage {
	if hasStar(a) || hasStar(b) {
		return Lineage{{Name: "*", Star: true, Sources: addSources(a.Sources(), b.Sources()...)}}
	}
	out := make(Lineage, 0, max(len(a), len(b)))
	for i := 0; i < len(a) || i < len(b); i++ {
		var c Column
		if i < len(a) {
			c.Name = a[i].Name
			c.Sources = addSources(c.Sources, a[i].Sources...)
		}
		if i < len(b) {
			if c.Name == "" {
				c.Name = b[i].Name
			}
			c.Sources = addSources(c.Sources, b[i].Sources...)
		}
		out = append(out, c)
	}
	return out
}

func hasStar(l Lineage) bool {
	for _, c := range l {
		if c.Star {
			return true
		}
	}
	return false
}

func sourceCount(l Lineage) int {
	n := 0
	for _, c := range l {
		n += len(c.Sources)
	}
	return n
}
