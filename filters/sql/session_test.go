package sql

import (
	"testing"

	"github.com/sluicehq/sluice/policies"
)

func TestPrepareExecute(t *testing.T) {
	a := New(WithCacheSize(0))
	an := a.Analyze("PREPARE p (int) AS DELETE FROM t WHERE id = $1 RETURNING ssn; EXECUTE p(1)")
	prep, exec := an.Statements[0], an.Statements[1]
	if prep.Prepare == nil || prep.Prepare.Name != "p" {
		t.Fatalf("Prepare = %+v", prep.Prepare)
	}
	if got := prep.Prepare.Statement.Classes.String(); got != "{write}" {
		t.Errorf("prepared statement classes %s", got)
	}
	if exec.Execute != "p" || exec.Class() != policies.ClassUnknown {
		t.Fatalf("EXECUTE: name %q class %v", exec.Execute, exec.Class())
	}
	r := exec.WithPrepared(prep.Prepare.Statement)
	if r.Class() != policies.ClassWrite || r.Classes.Has(policies.ClassUnknown) {
		t.Errorf("resolved classes %s", r.Classes)
	}
	if got := render(r.Columns); got != "ssn[t.ssn]" {
		t.Errorf("resolved columns %s", got)
	}
	if exec.Class() != policies.ClassUnknown {
		t.Error("WithPrepared modified the shared statement")
	}
	if got := exec.WithPrepared(nil).Class(); got != policies.ClassUnknown {
		t.Errorf("unknown name resolved to %v", got)
	}

	// Arguments count, and EXECUTE inside another statement resolves too.
	st := a.Analyze("EXPLAIN ANALYZE EXECUTE p(pg_cancel_backend(1))").Statements[0]
	r = st.WithPrepared(prep.Prepare.Statement)
	if got := r.Classes.String(); got != "{read,write,admin}" {
		t.Errorf("EXPLAIN ANALYZE EXECUTE resolved to %s", got)
	}
	if got := render(r.Columns); got != "QUERY PLAN[]" {
		t.Errorf("EXPLAIN ANALYZE EXECUTE columns %s", got)
	}
}

func TestDeallocateAndCursors(t *testing.T) {
	a := New(WithCacheSize(0))
	cases := []struct {
		sql                          string
		deallocate, closeName, fetch string
	}{
		{"DEALLOCATE p", "p", "", ""},
		{"DEALLOCATE ALL", "*", "", ""},
		{"DISCARD ALL", "*", "*", ""},
		{"CLOSE c", "", "c", ""},
		{"CLOSE ALL", "", "*", ""},
		{"FETCH 10 FROM c", "", "", "c"},
		{"MOVE 10 IN c", "", "", ""},
	}
	for _, tc := range cases {
		st := a.Analyze(tc.sql).Statements[0]
		if st.Deallocate != tc.deallocate || st.Close != tc.closeName || st.Fetch != tc.fetch {
			t.Errorf("%q: deallocate %q close %q fetch %q", tc.sql, st.Deallocate, st.Close, st.Fetch)
		}
	}

	decl := a.Analyze("DECLARE c CURSOR WITH HOLD FOR SELECT ssn FROM users").Statements[0]
	if decl.Declare == nil || decl.Declare.Name != "c" || decl.Columns != nil {
		t.Fatalf("DECLARE: %+v columns %v", decl.Declare, decl.Columns)
	}
	fetch := a.Analyze("FETCH ALL FROM c").Statements[0]
	if got := render(fetch.WithCursor(decl.Declare.Statement).Columns); got != "ssn[users.ssn]" {
		t.Errorf("FETCH columns %s", got)
	}
	if got := render(fetch.WithCursor(nil).Columns); got != "*?[?]" {
		t.Errorf("FETCH of an unknown cursor: %s", got)
	}
}

func TestStatementText(t *testing.T) {
	q := "  SELECT 1 ;\n\t/* c */ DELETE FROM t;SELECT 'a;b'  "
	an := New(WithCacheSize(0)).Analyze(q)
	want := []string{"SELECT 1", "/* c */ DELETE FROM t", "SELECT 'a;b'"}
	if len(an.Statements) != len(want) {
		t.Fatalf("%d statements", len(an.Statements))
	}
	for i, st := range an.Statements {
		if st.Text != want[i] {
			t.Errorf("statement %d text %q, want %q", i, st.Text, want[i])
		}
		if got := q[st.Location : st.Location+st.Length]; !contains([]string{want[i]}, trimmed(got)) {
			t.Errorf("statement %d location %d+%d is %q", i, st.Location, st.Length, got)
		}
		if st.Fingerprint() == "" {
			t.Errorf("statement %d has no fingerprint", i)
		}
	}
	// Constants do not change the fingerprint; the statement shape does.
	fp := func(q string) string { return Analyze(q).Statements[0].Fingerprint() }
	if fp("SELECT * FROM t WHERE id = 1") != fp("select *  from t where id = 42") {
		t.Error("fingerprint depends on constants or spacing")
	}
	if fp("SELECT * FROM t WHERE id = 1") == fp("DELETE FROM t WHERE id = 1") {
		t.Error("fingerprint ignores the statement")
	}
}

func trimmed(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\n' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == ';') {
		s = s[:len(s)-1]
	}
	return s
}
