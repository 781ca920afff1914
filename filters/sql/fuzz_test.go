package sql

import (
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/sluicehq/sluice/policies"
)

// FuzzAnalyze checks that any input yields statements that all have a
// class, that what the parser rejects is unknown, and that locations and
// lineage stay in range. The seed corpus is in testdata/fuzz/FuzzAnalyze.
func FuzzAnalyze(f *testing.F) {
	for _, tc := range classCases {
		f.Add(tc.sql)
	}
	for _, tc := range lineageCases {
		f.Add(tc.sql)
	}
	a := New(WithCacheSize(0))
	f.Fuzz(func(t *testing.T, q string) {
		an := a.Analyze(q)
		_, perr := pg_query.Parse(q)
		if perr != nil {
			if len(an.Statements) != 1 || an.Statements[0].Err == nil || an.Class() != policies.ClassUnknown {
				t.Fatalf("parser rejects %q (%v) but analysis is %s", q, perr, an.Classes)
			}
		}
		var union Classes
		for _, st := range an.Statements {
			if st.Classes == 0 {
				t.Fatalf("%q: statement %q has no class", q, st.Text)
			}
			if st.Err != nil && !st.Classes.Has(policies.ClassUnknown) {
				t.Fatalf("%q: unparseable statement is %s", q, st.Classes)
			}
			if st.Location < 0 || st.Length < 0 || st.Location+st.Length > len(q) {
				t.Fatalf("%q: statement at %d+%d", q, st.Location, st.Length)
			}
			for n := 0; n < 4; n++ {
				for i := 0; i < n; i++ {
					if len(st.Columns.Field(i, n)) == 0 && !hasEmptyColumn(st.Columns) {
						t.Fatalf("%q: field %d of %d has no sources and no column is constant", q, i, n)
					}
				}
			}
			union = union.Union(st.Classes)
		}
		if union != an.Classes {
			t.Fatalf("%q: analysis classes %s, statements %s", q, an.Classes, union)
		}
	})
}

func hasEmptyColumn(l Lineage) bool {
	for _, c := range l {
		if len(c.Sources) == 0 {
			return true
		}
	}
	return false
}
