package sql

import (
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
)

// BenchmarkParts splits a cache miss into its costs: pg_query's C parser
// and protobuf serialisation, Go protobuf decoding, the fingerprint (a
// second parse), and this package's own walk and lineage.
func BenchmarkParts(b *testing.B) {
	q := benchQueries["select_by_id"]
	b.Run("ParseToProtobuf", func(b *testing.B) {
		for b.Loop() {
			parser.ParseToProtobuf(q)
		}
	})
	b.Run("Parse", func(b *testing.B) {
		for b.Loop() {
			pg_query.Parse(q)
		}
	})
	b.Run("Fingerprint", func(b *testing.B) {
		for b.Loop() {
			pg_query.Fingerprint(q)
		}
	})
	b.Run("RawParseOnly", func(b *testing.B) {
		// IsUtilityStmt parses and returns almost nothing: the parser alone.
		for b.Loop() {
			pg_query.IsUtilityStmt(q)
		}
	})
	tree, _ := pg_query.Parse(q)
	a := New(WithCacheSize(0))
	b.Run("walk+lineage", func(b *testing.B) {
		for b.Loop() {
			a.statement(tree.Stmts[0].Stmt, 0)
		}
	})
}
