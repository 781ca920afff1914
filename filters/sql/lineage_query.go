package sql

import (
	"fmt"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
)

// lineager computes result lineage (lineage.go) from a parse tree.
type lineager struct {
	a *Analyzer
	// budget is how many more SELECTs may be evaluated. Nested recursive
	// CTEs re-evaluate their bodies; past the budget everything is
	// unknown, so a query written to be expensive costs bounded time.
	budget int
}

// maxRecursion bounds the fixpoint of a recursive CTE's lineage; sources
// only grow and are finite, so it is reached within a few rounds.
const maxRecursion = 8

// selectBudget bounds SELECT evaluations per statement.
const selectBudget = 10000

// lineageOf returns the lineage of the rows statement n returns, nil when
// it returns none.
func (a *Analyzer) lineageOf(n *pg_query.Node) Lineage {
	l := &lineager{a: a, budget: selectBudget}
	switch x := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		if x.SelectStmt.GetIntoClause() != nil {
			return nil
		}
		return l.stmt(n, nil)
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt,
		*pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		return l.stmt(n, nil)
	case *pg_query.Node_ExplainStmt:
		return Lineage{{Name: "QUERY PLAN"}}
	case *pg_query.Node_VariableShowStmt:
		if x.VariableShowStmt.GetName() == "all" {
			return Lineage{{Name: "*", Star: true}}
		}
		return Lineage{{Name: x.VariableShowStmt.GetName()}}
	case *pg_query.Node_CopyStmt:
		return l.copyTo(x.CopyStmt)
	case *pg_query.Node_FetchStmt:
		if x.FetchStmt.GetIsmove() {
			return nil
		}
		return unknownLineage() // until WithCursor
	case *pg_query.Node_ExecuteStmt, *pg_query.Node_CallStmt:
		return unknownLineage() // until WithPrepared; a procedure's OUT arguments
	}
	return nil
}

// copyTo is the lineage of the CopyData rows COPY ... TO STDOUT sends.
func (l *lineager) copyTo(c *pg_query.CopyStmt) Lineage {
	if c.GetIsFrom() || c.GetIsProgram() || c.GetFilename() != "" {
		return nil
	}
	if q := c.GetQuery(); q != nil {
		return l.stmt(q, nil)
	}
	rv := c.GetRelation()
	r := &relation{alias: rv.GetRelname(), schema: rv.GetSchemaname(), table: rv.GetRelname()}
	cols := stringList(c.GetAttlist())
	if len(cols) == 0 {
		return r.expand()
	}
	out := make(Lineage, 0, len(cols))
	for _, name := range cols {
		srcs, _, _ := r.column(name)
		out = append(out, Column{Name: name, Sources: srcs})
	}
	return out
}

// stmt is the lineage of a query in scope sc.
func (l *lineager) stmt(n *pg_query.Node, sc *scope) Lineage {
	switch x := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		return l.selectStmt(x.SelectStmt, sc)
	case *pg_query.Node_InsertStmt:
		s := x.InsertStmt
		sc = l.with(s.GetWithClause(), sc)
		var written []Source
		if s.GetSelectStmt() != nil {
			written = l.stmt(s.GetSelectStmt(), sc).Sources()
		}
		excluded := &relation{alias: "excluded", schema: s.GetRelation().GetSchemaname(), table: s.GetRelation().GetRelname()}
		return l.returning(s.GetRelation(), nil, []*relation{excluded}, s.GetReturningList(), written, s.GetOnConflictClause(), sc)
	case *pg_query.Node_UpdateStmt:
		s := x.UpdateStmt
		sc = l.with(s.GetWithClause(), sc)
		return l.returning(s.GetRelation(), s.GetFromClause(), nil, s.GetReturningList(), nil, targetValues(s.GetTargetList()), sc)
	case *pg_query.Node_DeleteStmt:
		s := x.DeleteStmt
		sc = l.with(s.GetWithClause(), sc)
		return l.returning(s.GetRelation(), s.GetUsingClause(), nil, s.GetReturningList(), nil, nil, sc)
	case *pg_query.Node_MergeStmt:
		s := x.MergeStmt
		sc = l.with(s.GetWithClause(), sc)
		return l.returning(s.GetRelation(), []*pg_query.Node{s.GetSourceRelation()}, nil, s.GetReturningList(), nil, mergeValues(s), sc)
	}
	return unknownLineage()
}

// returning is the lineage of a DML statement's RETURNING list. Values the
// statement writes flow into what it returns, so their sources are added to
// every returned column: INSERT INTO t SELECT ssn FROM users RETURNING *
// returns users.ssn.
func (l *lineager) returning(target *pg_query.RangeVar, from []*pg_query.Node, extra []*relation,
	list []*pg_query.Node, written []Source, values proto.Message, sc *scope) Lineage {
	if len(list) == 0 {
		return nil
	}
	fsc := &scope{parent: sc}
	t := &relation{alias: target.GetRelname(), schema: target.GetSchemaname(), table: target.GetRelname()}
	if a := target.GetAlias(); a != nil {
		t.alias = a.GetAliasname()
	}
	fsc.items, fsc.names = []*relation{t}, append([]*relation{t}, extra...)
	for _, f := range from {
		if f != nil {
			l.fromItem(f, fsc)
		}
	}
	if values != nil {
		written = addSources(written, l.expr(values, fsc)...)
	}
	cols := l.targets(list, fsc)
	if len(written) == 0 {
		return cols
	}
	out := make(Lineage, len(cols))
	for i, c := range cols {
		c.Sources = addSources(append([]Source(nil), c.Sources...), written...)
		out[i] = c
	}
	return out
}

// targetValues collects UPDATE's assigned values into one message to walk.
func targetValues(list []*pg_query.Node) proto.Message {
	return &pg_query.List{Items: list}
}

func mergeValues(s *pg_query.MergeStmt) proto.Message {
	var items []*pg_query.Node
	for _, w := range s.GetMergeWhenClauses() {
		mw := w.GetMergeWhenClause()
		items = append(items, mw.GetTargetList()...)
		items = append(items, mw.GetValues()...)
	}
	return &pg_query.List{Items: items}
}

func (l *lineager) selectStmt(s *pg_query.SelectStmt, outer *scope) Lineage {
	if l.budget--; s == nil || l.budget < 0 {
		return unknownLineage()
	}
	sc := l.with(s.GetWithClause(), outer)
	switch s.GetOp() {
	case pg_query.SetOperation_SETOP_UNION, pg_query.SetOperation_SETOP_INTERSECT, pg_query.SetOperation_SETOP_EXCEPT:
		return union(l.selectStmt(s.GetLarg(), sc), l.selectStmt(s.GetRarg(), sc))
	}
	if rows := s.GetValuesLists(); len(rows) > 0 {
		return l.values(rows, sc)
	}
	fsc := &scope{parent: sc}
	for _, f := range s.GetFromClause() {
		fsc.items = append(fsc.items, l.fromItem(f, fsc))
	}
	return l.targets(s.GetTargetList(), fsc)
}

// with returns the scope in which a WITH clause's CTEs are visible.
func (l *lineager) with(w *pg_query.WithClause, outer *scope) *scope {
	if w == nil {
		return outer
	}
	sc := &scope{parent: outer}
	for _, n := range w.GetCtes() {
		cte := n.GetCommonTableExpr()
		alias := &pg_query.Alias{Colnames: cte.GetAliascolnames()}
		r := &relation{alias: cte.GetCtename()}
		if !w.GetRecursive() {
			r.cols = rename(l.stmt(cte.GetCtequery(), sc), alias)
			sc.ctes = append(sc.ctes, r)
			continue
		}
		// Recursive: start from the non-recursive term, then grow to a
		// fixpoint with the CTE bound to what is known so far.
		sc.ctes = append(sc.ctes, r)
		q := cte.GetCtequery().GetSelectStmt()
		if q != nil && q.GetOp() != pg_query.SetOperation_SETOP_NONE {
			r.cols = rename(l.selectStmt(q.GetLarg(), sc), alias)
		} else {
			r.cols = unknownLineage()
		}
		converged := false
		for i := 0; i < maxRecursion && !converged; i++ {
			next := union(r.cols, rename(l.stmt(cte.GetCtequery(), sc), alias))
			converged = len(next) == len(r.cols) && sourceCount(next) == sourceCount(r.cols)
			r.cols = next
		}
		if !converged {
			r.cols = unknownLineage()
		}
	}
	return sc
}

func (l *lineager) values(rows []*pg_query.Node, sc *scope) Lineage {
	var out Lineage
	for _, row := range rows {
		for i, v := range row.GetList().GetItems() {
			if i >= len(out) {
				out = append(out, Column{Name: fmt.Sprintf("column%d", i+1)})
			}
			out[i].Sources = addSources(out[i].Sources, l.expr(v, sc)...)
		}
	}
	return out
}

// targets is the lineage of a target list (SELECT list, RETURNING).
func (l *lineager) targets(list []*pg_query.Node, sc *scope) Lineage {
	var out Lineage
	for _, n := range list {
		rt := n.GetResTarget()
		val := rt.GetVal()
		if cr := val.GetColumnRef(); cr != nil && isStarRef(cr) {
			out = append(out, l.expandStar(cr, sc)...)
			continue
		}
		name := rt.GetName()
		if name == "" {
			name = figureName(val)
		}
		out = append(out, Column{Name: name, Sources: l.expr(val, sc)})
	}
	return out
}

func isStarRef(cr *pg_query.ColumnRef) bool {
	f := cr.GetFields()
	return len(f) > 0 && f[len(f)-1].GetAStar() != nil
}

// expandStar is what * or t.* in a target list stands for.
func (l *lineager) expandStar(cr *pg_query.ColumnRef, sc *scope) Lineage {
	fields := cr.GetFields()
	if len(fields) == 1 {
		var out Lineage
		for _, r := range sc.items {
			out = append(out, r.expand()...)
		}
		return out
	}
	if r := sc.lookupRel(stringList(fields[:len(fields)-1])); r != nil {
		return r.expand()
	}
	return unknownLineage()
}

// expr returns where an expression's value may come from: every column it
// reads, whatever it computes from them (casts, operators, CASE including
// its conditions, COALESCE, concatenation, aggregates, window functions),
// the results of its subqueries, and Unknown for opaque functions.
func (l *lineager) expr(n proto.Message, sc *scope) []Source {
	var out []Source
	walkTree(n, func(m proto.Message) bool {
		switch x := m.(type) {
		case *pg_query.ColumnRef:
			out = addSources(out, l.columnRef(x, sc)...)
			return false
		case *pg_query.SubLink:
			if t := x.GetTestexpr(); t != nil {
				out = addSources(out, l.expr(t, sc)...)
			}
			out = addSources(out, l.stmt(x.GetSubselect(), sc).Sources()...)
			return false
		case *pg_query.SelectStmt:
			out = addSources(out, l.selectStmt(x, sc).Sources()...)
			return false
		case *pg_query.FuncCall:
			schema, name := funcName(x.GetFuncname())
			if l.a.lookupFunction(schema, name).Opaque {
				out = addSources(out, UnknownSource)
			}
		}
		return true
	})
	return out
}
