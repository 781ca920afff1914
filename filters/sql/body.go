package sql

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/sluicehq/sluice/policies"
)

// bodyClass classifies the body of CREATE FUNCTION or CREATE PROCEDURE by
// what it could do when it runs later: creating a function is ddl, but an
// agent allowed ddl and write must not be able to wrap an admin action in a
// function and then call it as a mere write (unknown functions are write).
//
//   - A SQL-standard body (BEGIN ATOMIC ... END, RETURN expr) is part of the
//     parse tree and is walked with the rest of the statement.
//   - A LANGUAGE sql body given as a string is parsed and classified.
//   - Any other language (plpgsql, C, plpython...) cannot be analysed: its
//     body may run any SQL, dynamically: admin, as a DO block.
func (a *Analyzer) bodyClass(x *pg_query.CreateFunctionStmt, depth int) policies.OperationClass {
	if x.GetSqlBody() != nil {
		return policies.ClassRead
	}
	var lang string
	var bodies []string
	for _, o := range x.GetOptions() {
		d := o.GetDefElem()
		switch strings.ToLower(d.GetDefname()) {
		case "language":
			lang = strings.ToLower(defElemString(d.GetArg()))
		case "as":
			for _, item := range d.GetArg().GetList().GetItems() {
				bodies = append(bodies, item.GetString_().GetSval())
			}
		}
	}
	if lang != "sql" {
		return policies.ClassAdmin
	}
	if depth >= maxDepth {
		return policies.ClassUnknown
	}
	var cs Classes
	for _, b := range bodies {
		cs = cs.Union(a.analyze(b, depth+1).Classes)
	}
	return cs.Max()
}
