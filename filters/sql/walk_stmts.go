package sql

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/sluicehq/sluice/policies"
)

// Classification of the nodes whose class depends on their contents.

func (w *walker) funcCall(fc *pg_query.FuncCall) {
	schema, name := funcName(fc.GetFuncname())
	var c policies.OperationClass
	switch {
	case fc == w.procCall:
		// A procedure exists to have side effects and may COMMIT inside;
		// its body cannot be seen: admin unless the operator says otherwise.
		c = policies.ClassAdmin
		if fi, ok := w.a.override(schema, name); ok {
			c = fi.Class
		}
		w.stmt(c)
	case name == "set_config" && (schema == "" || schema == "pg_catalog"):
		c = setConfigClass(fc)
		w.classes = w.classes.With(c)
	default:
		c = w.a.lookupFunction(schema, name).Class
		w.classes = w.classes.With(c)
	}
	w.addFunc(Function{Schema: schema, Name: name, Class: c})
}

func (w *walker) addFunc(f Function) {
	if w.seenFuncs == nil {
		w.seenFuncs = map[Function]bool{}
	}
	if !w.seenFuncs[f] {
		w.seenFuncs[f] = true
		w.funcs = append(w.funcs, f)
	}
}

// funcName splits a function's qualified name; a catalog name, if any, is
// dropped.
func funcName(parts []*pg_query.Node) (schema, name string) {
	switch n := len(parts); {
	case n == 0:
		return "", ""
	case n == 1:
		return "", parts[0].GetString_().GetSval()
	default:
		return parts[n-2].GetString_().GetSval(), parts[n-1].GetString_().GetSval()
	}
}

func (w *walker) copyStmt(x *pg_query.CopyStmt) {
	switch {
	case x.GetIsProgram() || x.GetFilename() != "":
		w.stmt(policies.ClassAdmin) // runs a program or touches a server file
	case x.GetIsFrom():
		w.stmt(policies.ClassWrite) // FROM STDIN
	default:
		w.stmt(policies.ClassRead) // TO STDOUT
	}
	if x.GetIsFrom() {
		w.rel(x.GetRelation(), OpInsert)
	}
}

func (w *walker) dropStmt(x *pg_query.DropStmt) {
	c := policies.ClassDDL
	if adminObjects[x.GetRemoveType()] {
		c = policies.ClassAdmin
	}
	w.stmt(c)
	if !relationObjects[x.GetRemoveType()] {
		return
	}
	for _, o := range x.GetObjects() {
		var schema, name string
		items := o.GetList().GetItems()
		switch len(items) {
		case 0:
			continue
		case 1:
			name = items[0].GetString_().GetSval()
		default:
			schema = items[len(items)-2].GetString_().GetSval()
			name = items[len(items)-1].GetString_().GetSval()
		}
		w.addTable(schema, name, OpDDL)
	}
}

func (w *walker) discardStmt(x *pg_query.DiscardStmt) {
	switch x.GetTarget() {
	case pg_query.DiscardMode_DISCARD_PLANS, pg_query.DiscardMode_DISCARD_SEQUENCES:
		w.stmt(policies.ClassRead) // this session's caches
	case pg_query.DiscardMode_DISCARD_TEMP:
		w.stmt(policies.ClassDDL) // drops this session's temporary tables
	default:
		// DISCARD ALL includes RESET ALL, which resets the role.
		w.stmt(policies.ClassAdmin)
		w.st.Deallocate, w.st.Close = "*", "*"
	}
}

// transactionClass lets every agent control its own transactions: BEGIN,
// COMMIT, ROLLBACK and savepoints change no data by themselves (what runs
// inside the transaction is gated statement by statement). Two-phase
// commit is admin: a prepared transaction outlives the session, holds its
// locks until someone resolves it, and COMMIT/ROLLBACK PREPARED act on
// transactions other sessions prepared.
func transactionClass(x *pg_query.TransactionStmt) policies.OperationClass {
	switch x.GetKind() {
	case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE,
		pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED,
		pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		return policies.ClassAdmin
	}
	return policies.ClassRead
}

// explainAnalyze reports whether EXPLAIN runs its statement. Only an
// ANALYZE option whose value is recognisably false counts as not running.
func explainAnalyze(x *pg_query.ExplainStmt) bool {
	for _, o := range x.GetOptions() {
		d := o.GetDefElem()
		if !strings.EqualFold(d.GetDefname(), "analyze") {
			continue
		}
		if d.GetArg() == nil {
			return true
		}
		switch strings.ToLower(defElemString(d.GetArg())) {
		case "false", "off", "0", "no":
		default:
			return true
		}
	}
	return false
}

// defElemString returns an option value as text.
func defElemString(n *pg_query.Node) string {
	if s := n.GetString_(); s != nil {
		return s.GetSval()
	}
	if c := n.GetAConst(); c != nil {
		switch v := c.GetVal().(type) {
		case *pg_query.A_Const_Sval:
			return v.Sval.GetSval()
		case *pg_query.A_Const_Boolval:
			if v.Boolval.GetBoolval() {
				return "true"
			}
			return "false"
		case *pg_query.A_Const_Ival:
			if v.Ival.GetIval() == 0 {
				return "0"
			}
			return "1"
		}
	}
	if b := n.GetBoolean(); b != nil {
		if b.GetBoolval() {
			return "true"
		}
		return "false"
	}
	if i := n.GetInteger(); i != nil {
		if i.GetIval() == 0 {
			return "0"
		}
		return "1"
	}
	return ""
}
