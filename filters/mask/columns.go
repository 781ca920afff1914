package mask

import (
	"strings"

	"github.com/sluicehq/sluice/policies"
)

// Column names a result column's source, as lineage reports it.
type Column struct {
	Schema, Table, Column string
}

// Rules are the masking rules a decision selected, compiled for matching.
type Rules struct {
	patterns []pattern
	// Columns are the rules' column patterns as written, for matching
	// against lineage (filters/sql Source.Matches, which also knows
	// unknown and whole-table sources).
	Columns   []string
	Detectors *Detectors
}

type pattern struct{ schema, table, column string } // "" table means any

// Compile selects the named rules from the config's masking rules.
func Compile(all []policies.MaskingRule, names []string) (*Rules, error) {
	r := &Rules{}
	var detectors []string
	for _, m := range all {
		if !contains(names, m.Name) {
			continue
		}
		for _, c := range m.Columns {
			r.patterns = append(r.patterns, parsePattern(c))
		}
		r.Columns = append(r.Columns, m.Columns...)
		detectors = append(detectors, m.Detectors...)
	}
	d, err := NewDetectors(detectors)
	if err != nil {
		return nil, err
	}
	r.Detectors = d
	return r, nil
}

// parsePattern reads "table.column", "schema.table.column" or "*.column"
// (validated at config load). Identifiers compare case-insensitively, as
// Postgres folds unquoted names.
func parsePattern(s string) pattern {
	parts := strings.Split(strings.ToLower(s), ".")
	switch len(parts) {
	case 3:
		return pattern{schema: parts[0], table: parts[1], column: parts[2]}
	case 2:
		if parts[0] == "*" {
			return pattern{column: parts[1]}
		}
		return pattern{table: parts[0], column: parts[1]}
	}
	return pattern{column: s}
}

// Matches reports whether a rule names the column.
func (r *Rules) Matches(c Column) bool {
	schema, table, col := strings.ToLower(c.Schema), strings.ToLower(c.Table), strings.ToLower(c.Column)
	for _, p := range r.patterns {
		if p.column != col && p.column != "*" {
			continue
		}
		if p.table != "" && p.table != table {
			continue
		}
		// An unqualified table may live in any schema on the search_path:
		// when lineage does not know the schema, a schema-qualified rule
		// still matches (mask rather than miss).
		if p.schema != "" && schema != "" && p.schema != schema {
			continue
		}
		return true
	}
	return false
}

// Empty reports whether the rules mask nothing.
func (r *Rules) Empty() bool { return r == nil || (len(r.patterns) == 0 && r.Detectors.Empty()) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
