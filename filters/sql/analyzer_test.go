package sql

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/sluicehq/sluice/policies"
)

func TestWithFunctions(t *testing.T) {
	a := New(WithCacheSize(0), WithFunctions(map[string]FunctionInfo{
		"app.safe_fn": {Class: policies.ClassRead},
		"norm":        {Class: policies.ClassRead},
		"archive":     {Class: policies.ClassWrite},
	}))
	cases := []struct{ sql, classes, cols string }{
		{"SELECT app.safe_fn(ssn) FROM users", "{read}", "safe_fn[users.ssn]"},
		{"SELECT other.safe_fn(ssn) FROM users", "{read,write}", "safe_fn[? users.ssn]"},
		{"SELECT x.norm(ssn) FROM users", "{read}", "norm[users.ssn]"},
		{"CALL archive()", "{write}", "*?[?]"},
		{"CALL other()", "{admin}", "*?[?]"},
	}
	for _, tc := range cases {
		st := a.Analyze(tc.sql).Statements[0]
		if got := st.Classes.String(); got != tc.classes {
			t.Errorf("%q: classes %s, want %s", tc.sql, got, tc.classes)
		}
		if got := render(st.Columns); got != tc.cols {
			t.Errorf("%q: columns %s, want %s", tc.sql, got, tc.cols)
		}
	}
}

func TestCache(t *testing.T) {
	a := New(WithCacheSize(2), WithMaxCachedQuery(20))
	first := a.Analyze("SELECT 1")
	if a.Analyze("SELECT 1") != first {
		t.Error("repeated query was not served from the cache")
	}
	a.Analyze("SELECT 2")
	a.Analyze("SELECT 3") // evicts SELECT 1, the least recently used
	if a.cache.len() != 2 {
		t.Errorf("cache holds %d entries", a.cache.len())
	}
	if a.Analyze("SELECT 1") == first {
		t.Error("evicted entry still served")
	}
	long := "SELECT 1 + 1 + 1 + 1 + 1 + 1"
	if a.Analyze(long) == a.Analyze(long) {
		t.Error("query longer than the limit was cached")
	}

	// Concurrent use.
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				a.Analyze(fmt.Sprintf("SELECT %d", i%7))
			}
		}()
	}
	wg.Wait()
}

// computedStmts are the statements walk.go classifies from their contents.
var computedStmts = []string{
	"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt",
	"VariableSetStmt", "TransactionStmt", "DiscardStmt", "ExplainStmt", "PrepareStmt",
	"DeclareCursorStmt", "ExecuteStmt", "FetchStmt", "DeallocateStmt", "ClosePortalStmt",
	"CreateFunctionStmt", "CallStmt", "AlterTableStmt", "RenameStmt", "DropStmt",
	"GrantStmt", "TruncateStmt", "LockStmt", "VacuumStmt", "ClusterStmt", "ReindexStmt",
	"RefreshMatViewStmt", "CreateStmt", "ViewStmt", "CreateTableAsStmt", "IndexStmt",
	"CreateTrigStmt", "RuleStmt", "CreateSeqStmt", "AlterSeqStmt", "AlterObjectSchemaStmt",
	"CreatePolicyStmt", "AlterPolicyStmt", "RawStmt",
}

// TestEveryStatementClassified fails when pg_query gains a statement this
// package does not list (it would be admin until someone decides).
func TestEveryStatementClassified(t *testing.T) {
	fields := (&pg_query.Node{}).ProtoReflect().Descriptor().Oneofs().ByName("node").Fields()
	for i := 0; i < fields.Len(); i++ {
		md := fields.Get(i).Message()
		if md == nil || !strings.HasSuffix(string(md.Name()), "Stmt") {
			continue
		}
		if _, ok := stmtClasses[md.FullName()]; ok {
			continue
		}
		if !contains(computedStmts, string(md.Name())) {
			t.Errorf("statement %s has no class", md.Name())
		}
	}
}

func TestBuiltinTables(t *testing.T) {
	if len(pureBuiltins) < 2000 {
		t.Fatalf("only %d pure built-ins loaded", len(pureBuiltins))
	}
	for name, fi := range knownFunctions {
		if fi.Class < policies.ClassRead || fi.Class > policies.ClassAdmin {
			t.Errorf("%s: class %v", name, fi.Class)
		}
	}
	// A dangerous function must never be in the pure list without an entry
	// overriding it.
	for _, name := range []string{"pg_terminate_backend", "pg_read_file", "lo_import", "set_config", "nextval", "dblink"} {
		if fi := New().lookupFunction("", name); fi.Class == policies.ClassRead {
			t.Errorf("%s classified read", name)
		}
	}
}
