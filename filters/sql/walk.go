package sql

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/policies"
)

// walker collects a statement's classes, relations and functions from its
// whole parse tree.
type walker struct {
	a     *Analyzer
	depth int
	// planOnly > 0 inside EXPLAIN without ANALYZE: the statement is planned,
	// not run, so its statement kinds count as read. Function calls still
	// count: the planner runs immutable functions on constant arguments, and
	// a user-defined function may be declared immutable whatever it does.
	planOnly   int
	classes    Classes
	tables     []Table
	seenTables map[Table]bool
	claimed    map[*pg_query.RangeVar]bool // relations recorded with an operation
	ctes       map[string]bool
	funcs      []Function
	seenFuncs  map[Function]bool
	procCall   *pg_query.FuncCall // the procedure a CALL names
	st         Statement          // session fields: Prepare, Execute, ...
}

func newWalker(a *Analyzer, depth int) *walker { return &walker{a: a, depth: depth} }

func (w *walker) walk(n proto.Message) { walkTree(n, w.visit) }

// stmt adds the class a statement kind contributes.
func (w *walker) stmt(c policies.OperationClass) {
	if w.planOnly > 0 {
		c = policies.ClassRead
	}
	w.classes = w.classes.With(c)
}

// rel records rv with op and keeps it from being recorded again as read.
func (w *walker) rel(rv *pg_query.RangeVar, op TableOp) {
	if rv == nil {
		return
	}
	if w.claimed == nil {
		w.claimed = map[*pg_query.RangeVar]bool{}
	}
	w.claimed[rv] = true
	w.addTable(rv.GetSchemaname(), rv.GetRelname(), op)
}

func (w *walker) addTable(schema, name string, op TableOp) {
	t := Table{Schema: schema, Name: name, Op: op}
	if w.seenTables == nil {
		w.seenTables = map[Table]bool{}
	}
	if !w.seenTables[t] {
		w.seenTables[t] = true
		w.tables = append(w.tables, t)
	}
}

// visit handles one node; it returns whether to walk the node's children.
func (w *walker) visit(m proto.Message) bool {
	switch x := m.(type) {
	case *pg_query.ResTarget, *pg_query.ColumnRef, *pg_query.A_Const,
		*pg_query.String, *pg_query.A_Expr, *pg_query.TypeCast, *pg_query.Alias,
		*pg_query.BoolExpr, *pg_query.ParamRef, *pg_query.A_Star, *pg_query.JoinExpr,
		*pg_query.TypeName, *pg_query.SortBy, *pg_query.List, *pg_query.Integer,
		*pg_query.RangeSubselect, *pg_query.SubLink, *pg_query.WithClause:
		return true
	case *pg_query.RangeVar:
		if !w.claimed[x] {
			w.addTable(x.GetSchemaname(), x.GetRelname(), OpRead)
		}
	case *pg_query.CommonTableExpr:
		if w.ctes == nil {
			w.ctes = map[string]bool{}
		}
		w.ctes[x.GetCtename()] = true
	case *pg_query.FuncCall:
		w.funcCall(x)
	case *pg_query.SelectStmt:
		if len(x.GetValuesLists()) == 0 {
			w.stmt(policies.ClassRead) // a VALUES list reads nothing
		}
		if len(x.GetLockingClause()) > 0 {
			w.stmt(policies.ClassWrite) // FOR UPDATE/SHARE locks rows
		}
		if x.GetIntoClause() != nil {
			w.stmt(policies.ClassDDL) // SELECT INTO creates a table
			w.rel(x.GetIntoClause().GetRel(), OpDDL)
		}
	case *pg_query.InsertStmt:
		w.stmt(policies.ClassWrite)
		w.rel(x.GetRelation(), OpInsert)
		if x.GetOnConflictClause().GetAction() == pg_query.OnConflictAction_ONCONFLICT_UPDATE {
			w.addTable(x.GetRelation().GetSchemaname(), x.GetRelation().GetRelname(), OpUpdate)
		}
	case *pg_query.UpdateStmt:
		w.stmt(policies.ClassWrite)
		w.rel(x.GetRelation(), OpUpdate)
	case *pg_query.DeleteStmt:
		w.stmt(policies.ClassWrite)
		w.rel(x.GetRelation(), OpDelete)
	case *pg_query.MergeStmt:
		w.stmt(policies.ClassWrite)
		w.rel(x.GetRelation(), OpMerge)
	case *pg_query.TruncateStmt:
		w.stmt(policies.ClassDDL)
		w.rels(x.GetRelations(), OpTruncate)
	case *pg_query.LockStmt:
		w.stmt(policies.ClassWrite)
		w.rels(x.GetRelations(), OpLock)
	case *pg_query.CopyStmt:
		w.copyStmt(x)
	case *pg_query.VacuumStmt:
		w.stmt(policies.ClassAdmin)
		for _, r := range x.GetRels() {
			w.rel(r.GetVacuumRelation().GetRelation(), OpMaintain)
		}
	case *pg_query.ClusterStmt:
		w.stmt(policies.ClassAdmin)
		w.rel(x.GetRelation(), OpMaintain)
	case *pg_query.ReindexStmt:
		w.stmt(policies.ClassAdmin)
		w.rel(x.GetRelation(), OpMaintain)
	case *pg_query.RefreshMatViewStmt:
		w.stmt(policies.ClassAdmin)
		w.rel(x.GetRelation(), OpMaintain)
	case *pg_query.CreateStmt:
		w.ddl(x.GetRelation(), policies.ClassDDL)
	case *pg_query.ViewStmt:
		w.ddl(x.GetView(), policies.ClassDDL)
	case *pg_query.CreateTableAsStmt:
		w.ddl(x.GetInto().GetRel(), policies.ClassDDL)
	case *pg_query.IndexStmt:
		w.ddl(x.GetRelation(), policies.ClassDDL)
	case *pg_query.CreateTrigStmt:
		w.ddl(x.GetRelation(), policies.ClassDDL)
	case *pg_query.RuleStmt:
		w.ddl(x.GetRelation(), policies.ClassDDL)
	case *pg_query.CreateSeqStmt:
		w.ddl(x.GetSequence(), policies.ClassDDL)
	case *pg_query.AlterSeqStmt:
		w.ddl(x.GetSequence(), policies.ClassDDL)
	case *pg_query.AlterObjectSchemaStmt:
		w.ddl(x.GetRelation(), policies.ClassDDL)
	case *pg_query.CreatePolicyStmt:
		w.ddl(x.GetTable(), policies.ClassAdmin)
	case *pg_query.AlterPolicyStmt:
		w.ddl(x.GetTable(), policies.ClassAdmin)
	case *pg_query.AlterTableStmt:
		w.ddl(x.GetRelation(), policies.ClassDDL)
		for _, c := range x.GetCmds() {
			if adminAlterTable[c.GetAlterTableCmd().GetSubtype()] {
				w.stmt(policies.ClassAdmin)
			}
		}
	case *pg_query.RenameStmt:
		c := policies.ClassDDL
		if adminObjects[x.GetRenameType()] {
			c = policies.ClassAdmin
		}
		w.ddl(x.GetRelation(), c)
	case *pg_query.DropStmt:
		w.dropStmt(x)
	case *pg_query.GrantStmt:
		w.stmt(policies.ClassAdmin)
		w.rels(x.GetObjects(), OpDDL)
	case *pg_query.VariableSetStmt:
		w.stmt(setClass(x))
	case *pg_query.TransactionStmt:
		w.stmt(transactionClass(x))
	case *pg_query.DiscardStmt:
		w.discardStmt(x)
	case *pg_query.ExplainStmt:
		w.stmt(policies.ClassRead)
		if !explainAnalyze(x) {
			w.planOnly++
			defer func() { w.planOnly-- }()
		}
		w.walk(x.GetQuery())
		return false
	case *pg_query.PrepareStmt:
		w.stmt(policies.ClassRead)
		w.st.Prepare = &Named{Name: x.GetName(), Statement: w.inner(x.GetQuery())}
		return false
	case *pg_query.DeclareCursorStmt:
		w.stmt(policies.ClassRead)
		w.st.Declare = &Named{Name: x.GetPortalname(), Statement: w.inner(x.GetQuery())}
		return false
	case *pg_query.ExecuteStmt:
		w.st.Execute = x.GetName()
	case *pg_query.FetchStmt:
		w.stmt(policies.ClassRead)
		if !x.GetIsmove() {
			w.st.Fetch = x.GetPortalname()
		}
	case *pg_query.DeallocateStmt:
		w.stmt(policies.ClassRead)
		w.st.Deallocate = x.GetName()
		if x.GetIsall() || x.GetName() == "" {
			w.st.Deallocate = "*"
		}
	case *pg_query.ClosePortalStmt:
		w.stmt(policies.ClassRead)
		w.st.Close = x.GetPortalname()
		if w.st.Close == "" {
			w.st.Close = "*"
		}
	case *pg_query.CreateFunctionStmt:
		w.stmt(policies.ClassDDL)
		w.stmt(w.a.bodyClass(x, w.depth))
	case *pg_query.CallStmt:
		w.procCall = x.GetFunccall()
		if w.procCall == nil {
			w.stmt(policies.ClassAdmin)
		}
	default:
		d := m.ProtoReflect().Descriptor()
		if c, ok := stmtClasses[d.FullName()]; ok {
			w.stmt(c)
		} else if strings.HasSuffix(string(d.Name()), "Stmt") {
			w.stmt(policies.ClassAdmin) // a statement this package does not know
		}
	}
	return true
}

func (w *walker) rels(nodes []*pg_query.Node, op TableOp) {
	for _, n := range nodes {
		w.rel(n.GetRangeVar(), op)
	}
}

func (w *walker) ddl(rv *pg_query.RangeVar, c policies.OperationClass) {
	w.stmt(c)
	w.rel(rv, OpDDL)
}

// inner analyses the statement a PREPARE or DECLARE names and merges what
// it does into the outer statement, whose class is that of the inner one:
// preparing a DELETE needs the right to delete.
func (w *walker) inner(n *pg_query.Node) *Statement {
	st := w.a.statement(n, w.depth)
	w.classes = w.classes.Union(st.Classes)
	for _, t := range st.Tables {
		w.addTable(t.Schema, t.Name, t.Op)
	}
	for _, f := range st.Functions {
		w.addFunc(f)
	}
	return st
}

// result builds the statement the walk found.
func (w *walker) result() *Statement {
	st := w.st
	for _, t := range w.tables {
		if t.Op == OpRead && t.Schema == "" && w.ctes[t.Name] {
			continue // a CTE, not a relation
		}
		st.Tables = append(st.Tables, t)
	}
	st.Functions = w.funcs
	if w.classes == 0 && st.Execute == "" {
		w.classes = ClassesOf(policies.ClassRead)
	}
	st.base = w.classes
	st.Classes = w.classes
	if st.Execute != "" {
		st.Classes = st.Classes.With(policies.ClassUnknown)
	}
	return &st
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
