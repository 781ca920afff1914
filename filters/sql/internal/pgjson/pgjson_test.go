package pgjson

import (
	"bufio"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	pgparser "github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// seeds returns the statements the differential test and the fuzzer start
// from: testdata/seeds.sql, every string literal in filters/sql's tests
// (classCases, lineageCases and the rest: what is not SQL exercises the
// error path) and filters/sql's FuzzAnalyze corpus.
func seeds(t testing.TB) []string {
	t.Helper()
	var out []string
	b, err := os.ReadFile("testdata/seeds.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(string(b), "\n\n") {
		var lines []string
		for _, l := range strings.Split(block, "\n") {
			if len(lines) == 0 && strings.HasPrefix(l, "-- ") {
				continue
			}
			lines = append(lines, l)
		}
		if q := strings.Join(lines, "\n"); q != "" {
			out = append(out, q)
			// Each statement of a script alone, too.
			if parts, err := pg_query.SplitWithParser(q, true); err == nil && len(parts) > 1 {
				out = append(out, parts...)
			}
		}
	}

	files, err := filepath.Glob("../../*_test.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no filters/sql tests: %v", err)
	}
	fset := token.NewFileSet()
	for _, fn := range files {
		f, err := parser.ParseFile(fset, fn, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil {
					out = append(out, s)
				}
			}
			return true
		})
	}

	corpus, _ := filepath.Glob("../../testdata/fuzz/*/*")
	for _, fn := range corpus {
		f, err := os.Open(fn)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "string("); ok {
				if s, err := strconv.Unquote(strings.TrimSuffix(v, ")")); err == nil {
					out = append(out, s)
				}
			}
		}
		f.Close()
	}
	return out
}

// check compares Parse with pg_query.Parse on q.
func check(t *testing.T, q string) {
	t.Helper()
	want, werr := pg_query.Parse(q)
	got, gerr := Parse(q)
	if werr != nil {
		if gerr == nil {
			t.Fatalf("%q: pg_query.Parse fails (%v), Parse does not", q, werr)
		}
		var wp *pgparser.Error
		if errors.As(werr, &wp) {
			var gp *pgparser.Error
			if !errors.As(gerr, &gp) || !reflect.DeepEqual(wp, gp) {
				t.Fatalf("%q: error %#v, want %#v", q, gerr, werr)
			}
		} else if gerr != ErrInvalidUTF8 {
			t.Fatalf("%q: error %v, want invalid UTF-8 like pg_query.Parse's %v", q, gerr, werr)
		}
		return
	}
	if gerr != nil {
		js, _ := pgparser.ParseToJSON(q)
		t.Fatalf("%q: %v\nJSON: %s", q, gerr, js)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("%q: trees differ\ngot:  %s\nwant: %s", q, protojson.Format(got), protojson.Format(want))
	}
}

func TestDifferential(t *testing.T) {
	qs := seeds(t)
	parsed := 0
	for _, q := range qs {
		check(t, q)
		if _, err := pg_query.Parse(q); err == nil {
			parsed++
		}
	}
	t.Logf("%d inputs, %d parse", len(qs), parsed)
	if parsed < 300 {
		t.Errorf("only %d seeds parse", parsed)
	}
}

func TestErrors(t *testing.T) {
	for _, q := range []string{"SELEC 1", "SELECT '", "SELECT (", "SELECT 1 +"} {
		check(t, q)
	}
	// Invalid UTF-8 in a string: pg_query.Parse's proto.Unmarshal rejects it.
	for _, q := range []string{"SELECT '\xff'", "SELECT \"\xc3\x28\""} {
		if _, err := pg_query.Parse(q); err == nil {
			t.Errorf("pg_query.Parse(%q) succeeds", q)
		}
		check(t, q)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := `{"version":170004,"stmts":[{"stmt":{"SelectStmt":{"targetList":[{"ResTarget":{"val":{"A_Const":{"ival":{"ival":1},"location":7}},"location":7}}],"limitOption":"LIMIT_OPTION_DEFAULT","op":"SETOP_NONE"}}}]}`
	if _, err := Decode(good); err != nil {
		t.Fatalf("good JSON: %v", err)
	}
	for _, js := range []string{
		``,
		`{}x`,
		strings.Replace(good, `"location":7}}`, `"location":7,"extra":1}}`, 1),
		strings.Replace(good, `"SelectStmt"`, `"SelectStatement"`, 1),
		strings.Replace(good, `SETOP_NONE`, `SETOP_NOPE`, 1),
		strings.Replace(good, `"ival":1`, `"ival":2147483648`, 1),
		strings.Replace(good, `"ival":1`, `"ival":"1"`, 1),
		strings.Replace(good, `"ival":{"ival":1}`, `"ival":{"ival":1},"sval":{}`, 1),
		strings.Replace(good, `:7}`, `: 7}`, 1),
		good[:len(good)-1],
		`{"version":170004,"stmts":[{"stmt":{"String":{"sval":"a\q"}}}]}`,
		`{"version":170004,"stmts":[{"stmt":{"String":{"sval":"a` + "\xff" + `"}}}]}`,
		`{"version":170004,"stmts":[{"stmt":{"IntList":{"items":[1]}}}]}`,
	} {
		if js == good {
			t.Fatal("test case does not change the good JSON")
		}
		if res, err := Decode(js); err == nil {
			t.Errorf("Decode(%q) = %v, want an error", js, res)
		}
	}
	res, err := Decode(`{"version":1,"stmts":[{"stmt":{"String":{"sval":"a\"\\\/\b\f\n\r\t\u003c\u00e9\ud834\udd1e"}}}]}`)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res.Stmts[0].Stmt.GetString_().Sval, "a\"\\/\b\f\n\r\t<é\U0001D11E"; got != want {
		t.Errorf("sval %q, want %q", got, want)
	}
}

func FuzzParse(f *testing.F) {
	for _, q := range seeds(f) {
		f.Add(q)
	}
	f.Fuzz(check)
}

// benchQueries are filters/sql's (bench_test.go).
var benchQueries = []struct{ name, sql string }{
	{"select_by_id", "SELECT id, name, email FROM users WHERE id = $1"},
	{"join3", `SELECT u.name, o.total, p.title FROM users u JOIN orders o ON o.user_id = u.id
		JOIN products p ON p.id = o.product_id WHERE u.id = $1 AND o.created_at > now() - interval '7 days'
		ORDER BY o.created_at DESC LIMIT 20`},
	{"insert", "INSERT INTO events (user_id, kind, payload, created_at) VALUES ($1, $2, $3, now())"},
}

func BenchmarkParse(b *testing.B) {
	for _, bq := range benchQueries {
		q := bq.sql
		b.Run(bq.name+"/pg_query", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := pg_query.Parse(q); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bq.name+"/pgjson", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(q); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bq.name+"/ParseToJSON", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := pgparser.ParseToJSON(q); err != nil {
					b.Fatal(err)
				}
			}
		})
		js, err := pgparser.ParseToJSON(q)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bq.name+"/Decode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Decode(js); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
