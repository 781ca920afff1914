package sql

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// fromItem resolves one FROM item in scope sc, makes the relations it
// defines nameable there, and returns it for SELECT * expansion.
func (l *lineager) fromItem(n *pg_query.Node, sc *scope) *relation {
	var r *relation
	switch x := n.GetNode().(type) {
	case *pg_query.Node_RangeVar:
		r = l.rangeVar(x.RangeVar, sc)
	case *pg_query.Node_RangeSubselect:
		// Only a LATERAL subquery sees the FROM items before it; functions
		// and table functions always do.
		s, inner := x.RangeSubselect, sc.parent
		if s.GetLateral() {
			inner = sc
		}
		r = &relation{alias: s.GetAlias().GetAliasname(), cols: rename(l.stmt(s.GetSubquery(), inner), s.GetAlias())}
	case *pg_query.Node_RangeFunction:
		r = l.rangeFunction(x.RangeFunction, sc)
	case *pg_query.Node_RangeTableFunc:
		f := x.RangeTableFunc
		srcs := l.expr(f, sc)
		r = &relation{alias: f.GetAlias().GetAliasname()}
		for _, c := range f.GetColumns() {
			r.cols = append(r.cols, Column{Name: c.GetRangeTableFuncCol().GetColname(), Sources: srcs})
		}
	case *pg_query.Node_JsonTable:
		// Nested paths make the column list irregular: one star.
		f := x.JsonTable
		r = &relation{alias: f.GetAlias().GetAliasname(), cols: Lineage{{Name: "*", Star: true, Sources: l.expr(f, sc)}}}
	case *pg_query.Node_RangeTableSample:
		return l.fromItem(x.RangeTableSample.GetRelation(), sc)
	case *pg_query.Node_JoinExpr:
		return l.join(x.JoinExpr, sc)
	default:
		r = &relation{cols: unknownLineage()}
	}
	sc.names = append(sc.names, r)
	return r
}

func (l *lineager) rangeVar(rv *pg_query.RangeVar, sc *scope) *relation {
	alias := rv.GetAlias()
	if rv.GetSchemaname() == "" {
		if cte := sc.cte(rv.GetRelname()); cte != nil {
			r := &relation{alias: rv.GetRelname(), cols: rename(cte.cols, alias)}
			if alias != nil {
				r.alias = alias.GetAliasname()
			}
			return r
		}
	}
	r := &relation{alias: rv.GetRelname(), schema: rv.GetSchemaname(), table: rv.GetRelname()}
	if alias != nil {
		r.alias = alias.GetAliasname()
		r.aliasCols = stringList(alias.GetColnames())
	}
	return r
}

// rangeFunction is a function in FROM (also ROWS FROM, WITH ORDINALITY).
// Every column it returns may come from any of its arguments, or from
// anywhere if a function is opaque.
func (l *lineager) rangeFunction(f *pg_query.RangeFunction, sc *scope) *relation {
	var srcs []Source
	var names []string
	alias := ""
	for _, item := range f.GetFunctions() {
		parts := item.GetList().GetItems()
		if len(parts) == 0 {
			continue
		}
		srcs = addSources(srcs, l.expr(parts[0], sc)...)
		if alias == "" {
			_, alias = funcName(parts[0].GetFuncCall().GetFuncname())
		}
		if len(parts) > 1 {
			for _, cd := range parts[1].GetList().GetItems() {
				names = append(names, cd.GetColumnDef().GetColname())
			}
		}
	}
	for _, cd := range f.GetColdeflist() {
		names = append(names, cd.GetColumnDef().GetColname())
	}
	if a := f.GetAlias(); a != nil {
		alias = a.GetAliasname()
		if cn := stringList(a.GetColnames()); len(cn) > 0 {
			names = cn
		}
	}
	r := &relation{alias: alias}
	if len(names) == 0 {
		// A scalar function's one column is named after the alias; a
		// record-returning one's columns need the catalog.
		r.cols = Lineage{{Name: "*", Star: true, Sources: srcs}}
		return r
	}
	for _, n := range names {
		r.cols = append(r.cols, Column{Name: n, Sources: srcs})
	}
	if f.GetOrdinality() && len(f.GetAlias().GetColnames()) == 0 {
		r.cols = append(r.cols, Column{Name: "ordinality"})
	}
	return r
}

// join resolves a JOIN. Without an alias its two sides stay nameable; with
// one, only the join is. USING and NATURAL merge the shared columns first,
// which moves columns: exact only when both sides' columns are known.
func (l *lineager) join(j *pg_query.JoinExpr, sc *scope) *relation {
	mark := len(sc.names)
	left := l.fromItem(j.GetLarg(), sc)
	right := l.fromItem(j.GetRarg(), sc)
	lc, rc := left.expand(), right.expand()
	r := &relation{alias: j.GetAlias().GetAliasname()}
	using := stringList(j.GetUsingClause())
	switch {
	case len(using) == 0 && !j.GetIsNatural():
		r.cols = append(append(Lineage(nil), lc...), rc...)
	case hasStar(lc) || hasStar(rc):
		r.cols = Lineage{{Name: "*", Star: true, Sources: addSources(lc.Sources(), rc.Sources()...)}}
	default:
		if j.GetIsNatural() {
			using = nil
			for _, c := range lc {
				if _, ok := rc.named(c.Name); ok {
					using = append(using, c.Name)
				}
			}
		}
		for _, u := range using {
			a, _ := lc.named(u)
			b, _ := rc.named(u)
			r.cols = append(r.cols, Column{Name: u, Sources: addSources(append([]Source(nil), a.Sources...), b.Sources...)})
		}
		for _, c := range append(append(Lineage(nil), lc...), rc...) {
			if !contains(using, c.Name) {
				r.cols = append(r.cols, c)
			}
		}
	}
	if j.GetAlias() != nil {
		r.cols = rename(r.cols, j.GetAlias())
		sc.names = append(sc.names[:mark], r)
	}
	return r
}

// named returns the column called name.
func (l Lineage) named(name string) (Column, bool) {
	for _, c := range l {
		if !c.Star && c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

// figureName names a result column as PostgreSQL's FigureColname would,
// for the common cases.
func figureName(n *pg_query.Node) string {
	switch x := n.GetNode().(type) {
	case *pg_query.Node_ColumnRef:
		f := x.ColumnRef.GetFields()
		if s := f[len(f)-1].GetString_(); s != nil {
			return s.GetSval()
		}
	case *pg_query.Node_FuncCall:
		_, name := funcName(x.FuncCall.GetFuncname())
		return name
	case *pg_query.Node_TypeCast:
		if name := figureName(x.TypeCast.GetArg()); name != "?column?" {
			return name
		}
		_, name := funcName(x.TypeCast.GetTypeName().GetNames())
		return name
	case *pg_query.Node_AIndirection:
		ind := x.AIndirection.GetIndirection()
		if s := ind[len(ind)-1].GetString_(); s != nil {
			return s.GetSval()
		}
		return figureName(x.AIndirection.GetArg())
	case *pg_query.Node_CaseExpr:
		return "case"
	case *pg_query.Node_CoalesceExpr:
		return "coalesce"
	case *pg_query.Node_AArrayExpr:
		return "array"
	case *pg_query.Node_RowExpr:
		return "row"
	case *pg_query.Node_SubLink:
		switch x.SubLink.GetSubLinkType() {
		case pg_query.SubLinkType_EXISTS_SUBLINK:
			return "exists"
		case pg_query.SubLinkType_ARRAY_SUBLINK:
			return "array"
		}
	}
	return "?column?"
}
