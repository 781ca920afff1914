package sql

import (
	"fmt"
	"reflect"
	"testing"
)

// sameAnalysis reports how got differs from want in anything a decision,
// a mask or an audit record reads ("" when it does not).
func sameAnalysis(got, want *Analysis) string {
	if got.Query != want.Query || got.Classes != want.Classes || len(got.Statements) != len(want.Statements) {
		return fmt.Sprintf("query %q classes %s, %d statements; want %q %s, %d", got.Query, got.Classes, len(got.Statements),
			want.Query, want.Classes, len(want.Statements))
	}
	for i, g := range got.Statements {
		w := want.Statements[i]
		switch {
		case g.Text != w.Text || g.Location != w.Location || g.Length != w.Length || g.Kind != w.Kind:
			return fmt.Sprintf("statement %d: %q at %d+%d (%s); want %q at %d+%d (%s)", i, g.Text, g.Location, g.Length, g.Kind,
				w.Text, w.Location, w.Length, w.Kind)
		case g.Classes != w.Classes:
			return fmt.Sprintf("statement %d: classes %s, want %s", i, g.Classes, w.Classes)
		case !reflect.DeepEqual(g.Tables, w.Tables) || !reflect.DeepEqual(g.Functions, w.Functions):
			return fmt.Sprintf("statement %d: tables %v functions %v, want %v %v", i, g.Tables, g.Functions, w.Tables, w.Functions)
		case !reflect.DeepEqual(g.Columns, w.Columns):
			return fmt.Sprintf("statement %d: lineage %v, want %v", i, g.Columns, w.Columns)
		case (g.Err == nil) != (w.Err == nil):
			return fmt.Sprintf("statement %d: err %v, want %v", i, g.Err, w.Err)
		case g.Fingerprint() != w.Fingerprint():
			return fmt.Sprintf("statement %d: fingerprint %s, want %s", i, g.Fingerprint(), w.Fingerprint())
		}
	}
	return ""
}

// TestShapeCache: a statement that differs from a cached one only in its
// constants gets the same analysis as a fresh parse would give, placed in
// its own text; statements whose analysis reads a constant never share.
func TestShapeCache(t *testing.T) {
	for _, c := range []struct {
		first, second string
		shared        bool // second is answered from first's shape
	}{
		{"SELECT email FROM customers WHERE id = 1", "SELECT email FROM customers WHERE id = 20000", true},
		{"  /* agent */ SELECT c.email AS e FROM customers c WHERE c.name = 'Bob' ;  ",
			"  /* agent */ SELECT c.email AS e FROM customers c WHERE c.name = 'Alice O''Hara' ;  ", true},
		{"UPDATE orders SET status = 'paid' WHERE id = 7", "UPDATE orders SET status = 'void' WHERE id = 8", true},
		{"INSERT INTO t (a, b) VALUES (1, $$x$$)", "INSERT INTO t (a, b) VALUES (2, $$DROP TABLE t$$)", true},
		{"DELETE FROM t WHERE a > 1.5 RETURNING *", "DELETE FROM t WHERE a > 2e9 RETURNING *", true},
		{"WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d", "WITH d AS (DELETE FROM t WHERE id = 2 RETURNING *) SELECT * FROM d", true},
		// The class of set_config is its first argument's setting.
		{"SELECT set_config('search_path', 'a', false)", "SELECT set_config('role', 'a', false)", false},
		{"SELECT upper(set_config('application_name', 'a', false))", "SELECT upper(set_config('session_authorization', 'a', false))", false},
		// EXPLAIN's ANALYZE option, utility statements, several statements.
		{"EXPLAIN (ANALYZE false) DELETE FROM t WHERE id = 1", "EXPLAIN (ANALYZE false) DELETE FROM t WHERE id = 2", false},
		{"PREPARE p AS SELECT 1", "PREPARE p AS SELECT 2", false},
		{"DECLARE c CURSOR FOR SELECT 1", "DECLARE c CURSOR FOR SELECT 2", false},
		{"SELECT 1; SELECT 2", "SELECT 3; SELECT 4", false},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM t'", false},
		{"DO 'BEGIN END'", "DO 'BEGIN PERFORM 1; END'", false},
		{"COPY t TO '/tmp/a'", "COPY t TO '/tmp/b'", false},
		{"SELECT 1 FROM", "SELECT 2 FROM", false}, // unparseable
		// libpg_query stops at a NUL: what follows must not make two
		// queries one shape (found by FuzzShapeCache).
		{"SELECT 1;\x00aa", "SELECT 2;\x00aaaa", false},
	} {
		a := New()
		first := a.Analyze(c.first)
		if d := sameAnalysis(first, New(WithCacheSize(0)).Analyze(c.first)); d != "" {
			t.Fatalf("%q: cached analysis differs: %s", c.first, d)
		}
		second := a.Analyze(c.second)
		fresh := New(WithCacheSize(0)).Analyze(c.second)
		if d := sameAnalysis(second, fresh); d != "" {
			t.Errorf("%q after %q: %s", c.second, c.first, d)
		}
		shared := sharesParts(first, second)
		if shared != c.shared {
			t.Errorf("%q after %q: answered from the shape = %v, want %v", c.second, c.first, shared, c.shared)
		}
		if again := a.Analyze(c.second); again != second {
			t.Errorf("%q: the second analysis was not cached by its exact text", c.second)
		}
	}
}

// sharesParts reports whether second's statement is built from first's
// (the same lineage or tables in memory): answered from first's shape.
func sharesParts(first, second *Analysis) bool {
	if len(first.Statements) != 1 || len(second.Statements) != 1 || first == second {
		return false
	}
	f, s := first.Statements[0], second.Statements[0]
	same := func(a, b any) bool {
		va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
		return va.Len() > 0 && va.Pointer() == vb.Pointer()
	}
	return same(f.Columns, s.Columns) || same(f.Tables, s.Tables)
}

// FuzzShapeCache holds the shape cache to a fresh analysis: for any query
// and a variant with other constants, the cached analyzer answers the
// variant as an uncached one does.
func FuzzShapeCache(f *testing.F) {
	for _, tc := range classCases {
		f.Add(tc.sql)
	}
	for _, tc := range lineageCases {
		f.Add(tc.sql)
	}
	fresh := New(WithCacheSize(0))
	f.Fuzz(func(t *testing.T, q string) {
		if len(q) > 2000 {
			return
		}
		a := New()
		a.Analyze(q)
		v := otherConstants(q)
		if d := sameAnalysis(a.Analyze(v), fresh.Analyze(v)); d != "" {
			t.Fatalf("%q after %q: %s", v, q, d)
		}
	})
}

// otherConstants changes every digit and every letter inside single
// quotes, so numbers and strings become other constants of the same kind
// (and text outside constants is left alone).
func otherConstants(q string) string {
	b := []byte(q) // bytes, not runes: invalid UTF-8 stays as it was
	quoted := false
	for i, c := range b {
		switch {
		case c == '\'':
			quoted = !quoted
		case c >= '0' && c <= '9':
			b[i] = '0' + (c-'0'+3)%10
		case quoted && c >= 'a' && c <= 'z':
			b[i] = 'a' + (c-'a'+7)%26
		}
	}
	return string(b)
}
