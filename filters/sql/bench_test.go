package sql

import (
	"strconv"
	"strings"
	"testing"
)

var benchQueries = map[string]string{
	"select_by_id": "SELECT id, name, email FROM users WHERE id = $1",
	"join3": `SELECT u.name, o.total, p.title FROM users u JOIN orders o ON o.user_id = u.id
		JOIN products p ON p.id = o.product_id WHERE u.id = $1 AND o.created_at > now() - interval '7 days'
		ORDER BY o.created_at DESC LIMIT 20`,
	"insert": "INSERT INTO events (user_id, kind, payload, created_at) VALUES ($1, $2, $3, now())",
}

// BenchmarkAnalyze measures a cache miss: parse, walk, lineage, fingerprint.
func BenchmarkAnalyze(b *testing.B) {
	for _, name := range []string{"select_by_id", "join3", "insert"} {
		q := benchQueries[name]
		b.Run(name, func(b *testing.B) {
			a := New(WithCacheSize(0))
			b.ReportAllocs()
			for b.Loop() {
				a.Analyze(q)
			}
		})
	}
}

// BenchmarkAnalyzeFingerprint measures a cache miss that also computes the
// fingerprint of every statement, as audit will.
func BenchmarkAnalyzeFingerprint(b *testing.B) {
	for _, name := range []string{"select_by_id", "join3", "insert"} {
		q := benchQueries[name]
		b.Run(name, func(b *testing.B) {
			a := New(WithCacheSize(0))
			b.ReportAllocs()
			for b.Loop() {
				for _, st := range a.Analyze(q).Statements {
					st.Fingerprint()
				}
			}
		})
	}
}

// BenchmarkAnalyzeCached measures a cache hit.
func BenchmarkAnalyzeCached(b *testing.B) {
	for _, name := range []string{"select_by_id", "join3", "insert"} {
		q := benchQueries[name]
		b.Run(name, func(b *testing.B) {
			a := New()
			a.Analyze(q)
			b.ReportAllocs()
			for b.Loop() {
				a.Analyze(q)
			}
		})
	}
}

// BenchmarkAnalyzeShape measures a statement whose text is new but whose
// shape is cached: simple-protocol agents inlining a new value each time.
func BenchmarkAnalyzeShape(b *testing.B) {
	for _, name := range []string{"select_by_id", "join3", "insert"} {
		q := strings.Replace(benchQueries[name], "$1", "42", 1)
		b.Run(name, func(b *testing.B) {
			a := New()
			a.Analyze(q)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				a.Analyze(strings.Replace(benchQueries[name], "$1", strconv.Itoa(i), 1))
			}
		})
	}
}
