package sql

import (
	"sort"
	"strings"
	"testing"
)

// render prints a lineage as "name[src src]; *name[src]" (stars prefixed
// with "*", sources sorted), or "none" when the statement returns no rows.
func render(l Lineage) string {
	if l == nil {
		return "none"
	}
	var cols []string
	for _, c := range l {
		var srcs []string
		for _, s := range c.Sources {
			srcs = append(srcs, s.String())
		}
		sort.Strings(srcs)
		name := c.Name
		if c.Star {
			name = "*" + name
		}
		cols = append(cols, name+"["+strings.Join(srcs, " ")+"]")
	}
	return strings.Join(cols, "; ")
}

var lineageCases = []struct{ sql, want string }{
	// Columns, aliases, schemas.
	{"SELECT id, ssn FROM users", "id[users.id]; ssn[users.ssn]"},
	{"SELECT u.ssn AS x FROM users AS u", "x[users.ssn]"},
	{"SELECT ssn FROM public.users", "ssn[public.users.ssn]"},
	{"SELECT public.users.ssn FROM public.users", "ssn[public.users.ssn]"},
	{"SELECT u.ssn FROM users u, users v", "ssn[users.ssn]"},
	{"SELECT x.ssn FROM users u", "ssn[?]"}, // no such relation: unknown
	// Table alias column lists rename by position: which column needs the catalog.
	{"SELECT a, email FROM users AS u(a, b)", "a[users.*]; email[users.email]"},
	// Unqualified names may come from any relation in scope.
	{"SELECT ssn FROM users JOIN orders USING (id)", "ssn[orders.ssn users.ssn]"},
	// Stars.
	{"SELECT * FROM users", "**[users.*]"},
	{"TABLE users", "**[users.*]"},
	// An alias column list renames the first columns: they are not in
	// the star, whose columns keep their catalog names.
	{"SELECT * FROM users u(a, b)", "a[users.*]; b[users.*]; **[users.*]"},
	{"SELECT u.*, o.id FROM users u, orders o", "**[users.*]; id[orders.id]"},
	{"SELECT * FROM users u JOIN orders o ON o.uid = u.id", "**[users.*]; **[orders.*]"},
	// Expressions derive from every column they read.
	{"SELECT ssn || 'x', upper(name), CAST(ssn AS text), ssn::int, -ssn FROM users",
		"?column?[users.ssn]; upper[users.name]; ssn[users.ssn]; ssn[users.ssn]; ?column?[users.ssn]"},
	{"SELECT CASE WHEN ssn IS NULL THEN 'none' ELSE name END FROM users", "case[users.name users.ssn]"},
	{"SELECT COALESCE(ssn, email), GREATEST(a, b), ssn = '1' FROM users",
		"coalesce[users.email users.ssn]; ?column?[users.a users.b]; ?column?[users.ssn]"},
	{"SELECT (addr).city, tags[1], doc->>'k' FROM users", "city[users.addr]; tags[users.tags]; ?column?[users.doc]"},
	{"SELECT count(*), max(ssn), string_agg(name, ',' ORDER BY id) FROM users",
		"count[]; max[users.ssn]; string_agg[users.id users.name]"},
	{"SELECT rank() OVER (ORDER BY ssn) FROM users", "rank[users.ssn]"},
	{"SELECT 1, 'a', $1, now(), current_user", "?column?[]; ?column?[]; ?column?[]; now[]; ?column?[]"},
	{"SELECT JSON_OBJECT('k': ssn) FROM users", "?column?[users.ssn]"},
	// Whole-row references: every column of the relation.
	{"SELECT row_to_json(u) FROM users u", "row_to_json[users.* users.u]"},
	{"SELECT json_agg(users) FROM users", "json_agg[users.* users.users]"},
	{"SELECT to_jsonb(u.*) FROM users u", "to_jsonb[users.*]"},
	{"SELECT row_to_json(s) FROM (SELECT ssn FROM users) s", "row_to_json[users.ssn]"},
	// Opaque functions: unknown.
	{"SELECT my_func(id) FROM users", "my_func[? users.id]"},
	{"SELECT table_to_xml('users', true, false, '')", "table_to_xml[?]"},
	{"SELECT * FROM dblink('x', 'SELECT ssn FROM users') AS t(a text)", "a[?]"},
	{"SELECT * FROM my_srf()", "**[?]"},
	// Subqueries.
	{"SELECT x FROM (SELECT ssn AS x FROM users) s", "x[users.ssn]"},
	{"SELECT * FROM (SELECT id, ssn FROM users) s", "id[users.id]; ssn[users.ssn]"},
	{"SELECT s.* FROM (SELECT ssn FROM users) AS s(renamed)", "renamed[users.ssn]"},
	{"SELECT renamed FROM (SELECT * FROM users) AS s(renamed)", "renamed[users.*]"},
	{"SELECT (SELECT ssn FROM users WHERE users.id = o.uid) FROM orders o", "?column?[orders.ssn users.ssn]"},
	{"SELECT ARRAY(SELECT ssn FROM users)", "array[users.ssn]"},
	{"SELECT EXISTS (SELECT 1 FROM users WHERE ssn = 'x')", "exists[]"},
	{"SELECT id IN (SELECT uid FROM orders) FROM users", "?column?[orders.uid users.id users.uid]"}, // uid may be a column of users too
	// CTEs.
	{"WITH c AS (SELECT ssn FROM users) SELECT * FROM c", "ssn[users.ssn]"},
	{"WITH c(a) AS (SELECT ssn FROM users) SELECT a FROM c", "a[users.ssn]"},
	{"WITH c AS (SELECT ssn FROM users), d AS (SELECT ssn AS x FROM c) SELECT x FROM d", "x[users.ssn]"},
	{"WITH users AS (SELECT 1 AS ssn) SELECT ssn FROM users", "ssn[]"},
	{"WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d", "**[users.*]"},
	{"WITH RECURSIVE r(n, s) AS (SELECT 1, ssn FROM users UNION ALL SELECT n + 1, s FROM r WHERE n < 3) SELECT s FROM r",
		"s[users.ssn]"},
	{"WITH RECURSIVE r AS (SELECT id, parent FROM t UNION SELECT t.id, r.parent FROM t JOIN r ON t.parent = r.id) SELECT * FROM r",
		"id[t.id]; parent[t.parent]"},
	// Set operations: per position.
	{"SELECT ssn, id FROM users UNION SELECT email, 1 FROM people", "ssn[people.email users.ssn]; id[users.id]"},
	{"SELECT ssn FROM users INTERSECT SELECT ssn FROM old EXCEPT SELECT x FROM y", "ssn[old.ssn users.ssn y.x]"},
	{"SELECT * FROM a UNION SELECT id FROM b", "**[a.* b.id]"},
	// VALUES.
	{"VALUES (1, 'a'), (2, 'b')", "column1[]; column2[]"},
	{"SELECT * FROM (VALUES (1, 'x')) v(a, b)", "a[]; b[]"},
	{"SELECT v.a FROM users u, (VALUES (u.ssn)) v(a)", "a[?]"}, // not LATERAL: u is not visible
	// LATERAL and functions in FROM.
	{"SELECT x.s FROM users u, LATERAL (SELECT u.ssn AS s) x", "s[users.ssn]"},
	{"SELECT t.v FROM users u, unnest(u.tags) AS t(v)", "v[users.tags]"},
	{"SELECT * FROM generate_series(1, 3) g", "**[]"},
	{"SELECT g FROM generate_series(1, 3) g", "g[]"},
	{"SELECT * FROM unnest(ARRAY[1]) WITH ORDINALITY AS t(x, n)", "x[]; n[]"},
	{"SELECT * FROM ROWS FROM (generate_series(1, 2), unnest(ARRAY['a'])) AS t(a, b)", "a[]; b[]"},
	{"SELECT jt.* FROM users u, JSON_TABLE(u.doc, '$' COLUMNS (a int PATH '$.a')) jt", "**[users.doc]"},
	{"SELECT x.* FROM users u, XMLTABLE('/r' PASSING u.doc COLUMNS a int PATH 'a') x", "a[users.doc]"},
	// Joins.
	{"SELECT j.ssn FROM (users JOIN orders USING (id)) AS j", "ssn[orders.* users.*]"},
	{"SELECT * FROM (SELECT id, ssn FROM users) a NATURAL JOIN (SELECT id, total FROM orders) b",
		"id[orders.id users.id]; ssn[users.ssn]; total[orders.total]"},
	{"SELECT * FROM (SELECT id, ssn FROM users) a JOIN (SELECT ssn, id FROM people) b USING (ssn)",
		"ssn[people.ssn users.ssn]; id[users.id]; id[people.id]"},
	{"SELECT * FROM users u JOIN (SELECT 1 AS id) b USING (id)", "**[users.*]"},
	// Views are relations like any other: the masker must know them.
	{"SELECT ssn FROM v_users", "ssn[v_users.ssn]"},
	// DML: RETURNING, with what the statement wrote.
	{"DELETE FROM users WHERE id = 1 RETURNING ssn", "ssn[users.ssn]"},
	{"INSERT INTO t SELECT ssn FROM users RETURNING *", "**[t.* users.ssn]"},
	{"INSERT INTO t (a) VALUES ('x') RETURNING a", "a[t.a]"},
	{"INSERT INTO t (a) VALUES ('x') ON CONFLICT (id) DO UPDATE SET a = excluded.a RETURNING a", "a[t.a]"},
	{"UPDATE t SET a = u.ssn FROM users u WHERE t.id = u.id RETURNING t.a", "a[t.a users.ssn]"},
	{"MERGE INTO t USING users u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = u.ssn RETURNING t.a",
		"a[t.a users.ssn]"},
	{"INSERT INTO t VALUES (1)", "none"},
	{"UPDATE t SET a = 1", "none"},
	// COPY TO STDOUT rows.
	{"COPY users (id, ssn) TO STDOUT", "id[users.id]; ssn[users.ssn]"},
	{"COPY users TO STDOUT WITH (FORMAT csv)", "**[users.*]"},
	{"COPY (SELECT ssn FROM users) TO STDOUT", "ssn[users.ssn]"},
	{"COPY users FROM STDIN", "none"},
	{"COPY users TO '/tmp/x'", "none"},
	// Other statements.
	{"EXPLAIN ANALYZE SELECT ssn FROM users", "QUERY PLAN[]"},
	{"SHOW search_path", "search_path[]"},
	{"SELECT * INTO x FROM users", "none"},
	{"SET statement_timeout = 1", "none"},
	{"EXECUTE p", "*?[?]"},
	{"FETCH ALL FROM c", "*?[?]"},
	{"MOVE ALL IN c", "none"},
	{"CALL proc()", "*?[?]"},
	{"SELEC ssn FROM users", "*?[?]"},
}

func TestLineage(t *testing.T) {
	a := New(WithCacheSize(0))
	for _, tc := range lineageCases {
		an := a.Analyze(tc.sql)
		if len(an.Statements) != 1 {
			t.Errorf("%q: %d statements", tc.sql, len(an.Statements))
			continue
		}
		if got := render(an.Statements[0].Columns); got != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.sql, got, tc.want)
		}
	}
}

func TestSourceMatches(t *testing.T) {
	cases := []struct {
		src     Source
		pattern string
		want    bool
	}{
		{Source{Table: "users", Column: "ssn"}, "users.ssn", true},
		{Source{Table: "users", Column: "ssn"}, "USERS.SSN", true},
		{Source{Table: "users", Column: "ssn"}, "users.email", false},
		{Source{Table: "users", Column: "ssn"}, "orders.ssn", false},
		{Source{Table: "users", Column: "ssn"}, "*.ssn", true},
		{Source{Table: "users", Column: "ssn"}, "public.users.ssn", true}, // unqualified: any schema
		{Source{Schema: "public", Table: "users", Column: "ssn"}, "public.users.ssn", true},
		{Source{Schema: "public", Table: "users", Column: "ssn"}, "users.ssn", true},
		{Source{Schema: "hr", Table: "users", Column: "ssn"}, "public.users.ssn", false},
		{Source{Table: "users", Column: "*"}, "users.ssn", true},
		{Source{Table: "users", Column: "*"}, "*.ssn", true},
		{Source{Table: "users", Column: "*"}, "orders.ssn", false},
		{Source{Table: "users", Column: "ssn"}, "users.*", true},
		{UnknownSource, "users.ssn", true},
		{UnknownSource, "*.ssn", true},
		{Source{Table: "users", Column: "ssn"}, "ssn", false},
		{Source{Table: "users", Column: "ssn"}, "a.b.c.d", false},
		{Source{Table: "users", Column: "ssn"}, "users.", false},
	}
	for _, tc := range cases {
		if got := tc.src.Matches(tc.pattern); got != tc.want {
			t.Errorf("%v.Matches(%q) = %v, want %v", tc.src, tc.pattern, got, tc.want)
		}
	}
}

func TestLineageField(t *testing.T) {
	a := Source{Table: "t", Column: "a"}
	b := Source{Table: "t", Column: "b"}
	star := Source{Table: "u", Column: "*"}
	fixed := Lineage{{Name: "a", Sources: []Source{a}}, {Name: "b", Sources: []Source{b}}}
	starred := Lineage{{Name: "a", Sources: []Source{a}}, {Star: true, Sources: []Source{star}}, {Name: "b", Sources: []Source{b}}}
	cases := []struct {
		l    Lineage
		i, n int
		want string
	}{
		{fixed, 0, 2, "t.a"},
		{fixed, 1, 2, "t.b"},
		{fixed, 1, 3, "?"}, // the server disagrees: unknown
		{fixed, 2, 2, "?"},
		{starred, 0, 5, "t.a"},
		{starred, 1, 5, "u.*"},
		{starred, 3, 5, "u.*"},
		{starred, 4, 5, "t.b"},
		{starred, 1, 2, "t.b"}, // the star stood for no column
		{starred, 0, 1, "?"},   // fewer columns than the fixed ones
		{Lineage{{Star: true, Sources: []Source{star}}, {Name: "b", Sources: []Source{b}}, {Star: true, Sources: []Source{a}}}, 2, 6, "t.a t.b u.*"},
	}
	for _, tc := range cases {
		var got []string
		for _, s := range tc.l.Field(tc.i, tc.n) {
			got = append(got, s.String())
		}
		sort.Strings(got)
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s.Field(%d, %d) = %v, want %s", render(tc.l), tc.i, tc.n, got, tc.want)
		}
	}
}

// TestFieldIn: only the columns a star expands to are reported as such
// (their result names are catalog names); fixed columns, renamed ones and
// a mismatched count are not.
func TestFieldIn(t *testing.T) {
	star := func(q string, i, n int) (string, bool) {
		a := Analyze(q)
		srcs, in := a.Statements[0].Columns.FieldIn(i, n)
		var out []string
		for _, s := range srcs {
			out = append(out, s.String())
		}
		return strings.Join(out, " "), in
	}
	cases := []struct {
		q      string
		i, n   int
		want   string
		inStar bool
	}{
		{"SELECT * FROM users", 2, 5, "users.*", true},
		{"SELECT id, * FROM users", 0, 5, "users.id", false},
		{"SELECT id, * FROM users", 3, 5, "users.*", true},
		{"SELECT * FROM users u(a, b)", 1, 5, "users.*", false},
		{"SELECT * FROM users u(a, b)", 2, 5, "users.*", true},
		{"SELECT *, ssn, * FROM users", 2, 7, "users.* users.ssn", false},
		{"SELECT id FROM users", 0, 2, "?", false},
	}
	for _, c := range cases {
		got, in := star(c.q, c.i, c.n)
		if got != c.want || in != c.inStar {
			t.Errorf("%s column %d of %d: %s star=%v, want %s star=%v", c.q, c.i, c.n, got, in, c.want, c.inStar)
		}
	}
}
