package sql

import "strings"

// Source is one place a result column's value may come from: a column of a
// relation as the query names it, every column of a relation, or anywhere.
//
// The parser knows no catalog, so a Source is only as precise as the
// query's text: an unqualified relation has no Schema (search_path picks
// it), and any relation may be a view, a materialized view or a foreign
// table whose own columns come from elsewhere. A masker that cannot see
// through views must mask or deny a relation it does not know to be a
// table (design.md section 6: never pass).
type Source struct {
	Schema string // "" when the query did not qualify the relation
	Table  string
	// Column is the column's name, or "*" for any column of Table: a
	// whole-row reference (row_to_json(t), t.*), SELECT * over a relation
	// whose columns only the catalog knows, or a column the query renamed
	// through a table alias column list.
	Column string
	// Unknown means the value may come from anywhere: an opaque function
	// (user-defined, dblink, table_to_xml), a relation sluice cannot
	// resolve, an unparseable statement. Unknown matches every pattern.
	Unknown bool
}

// UnknownSource is a source that may be anything.
var UnknownSource = Source{Unknown: true}

// String returns "schema.table.column", "table.column" or "?".
func (s Source) String() string {
	switch {
	case s.Unknown:
		return "?"
	case s.Schema != "":
		return s.Schema + "." + s.Table + "." + s.Column
	default:
		return s.Table + "." + s.Column
	}
}

// Matches reports whether a value from s may be a column the masking
// pattern names. Patterns are "table.column", "schema.table.column" and
// "*.column" (policies.MaskingRule.Columns). Matching fails closed:
//
//   - an Unknown source matches every pattern;
//   - a "*" column matches every column of its table;
//   - a source without a schema matches a pattern in any schema, and a
//     pattern without a schema matches a source in any schema;
//   - names compare case-insensitively (over-matching a quoted mixed-case
//     name is safer than missing it).
//
// A malformed pattern matches nothing; configuration validation rejects it.
func (s Source) Matches(pattern string) bool {
	parts := strings.Split(pattern, ".")
	var schema, table, column string
	switch len(parts) {
	case 2:
		table, column = parts[0], parts[1]
	case 3:
		schema, table, column = parts[0], parts[1], parts[2]
	default:
		return false
	}
	if column == "" || table == "" {
		return false
	}
	if s.Unknown {
		return true
	}
	if column != "*" && s.Column != "*" && !strings.EqualFold(column, s.Column) {
		return false
	}
	if table != "*" && !strings.EqualFold(table, s.Table) {
		return false
	}
	return schema == "" || s.Schema == "" || strings.EqualFold(schema, s.Schema)
}

// Column is the lineage of one result column, or of a run of them.
type Column struct {
	// Name is the column's name as Postgres would report it, best effort
	// ("?column?" when Postgres would say so); positions, not names,
	// identify columns.
	Name string
	// Star means this entry stands for zero or more consecutive result
	// columns whose number only the catalog knows (SELECT * over a table).
	// Each of them may come from any of Sources.
	Star bool
	// Sources are where the value may come from. Empty means from no
	// column: a constant, a parameter, count(*), now().
	Sources []Source
}

// Matches reports whether any source of c matches pattern.
func (c Column) Matches(pattern string) bool {
	for _, s := range c.Sources {
		if s.Matches(pattern) {
			return true
		}
	}
	return false
}

// Unknown reports whether c may carry data from anywhere.
func (c Column) Unknown() bool {
	for _, s := range c.Sources {
		if s.Unknown {
			return true
		}
	}
	return false
}

// Lineage is the lineage of a result, column by column. Star entries
// make the number of columns catalog-dependent; Field maps a column of the
// actual result (its RowDescription) back to its sources.
type Lineage []Column

// Field returns the sources of result column i when the result has n
// columns. Columns before the first star and after the last map by
// position; a column between them may come from any entry from the first
// star to the last. When n cannot match the lineage (fewer columns than
// its fixed entries, or a different count without stars), the answer is
// UnknownSource: sluice misread the statement, so nothing may pass.
func (l Lineage) Field(i, n int) []Source {
	srcs, _ := l.FieldIn(i, n)
	return srcs
}

// FieldIn is Field, also reporting whether column i falls in the run of
// star entries (SELECT * over a relation): there, a "*" source stands for
// the one catalog column the result reports by name, since a star expands
// to a relation's columns under their own names.
func (l Lineage) FieldIn(i, n int) (srcs []Source, star bool) {
	first, last := -1, -1
	for k, c := range l {
		if c.Star {
			if first < 0 {
				first = k
			}
			last = k
		}
	}
	unknown := []Source{UnknownSource}
	if i < 0 || i >= n {
		return unknown, false
	}
	if first < 0 {
		if n != len(l) {
			return unknown, false
		}
		return l[i].Sources, false
	}
	fixed := len(l) - (last - first + 1) + countFixed(l[first:last+1])
	if n < fixed {
		return unknown, false
	}
	if i < first {
		return l[i].Sources, false
	}
	after := len(l) - 1 - last
	if i >= n-after {
		return l[len(l)-(n-i)].Sources, false
	}
	var out []Source
	only := true // every entry of the run is a star
	for _, c := range l[first : last+1] {
		out = addSources(out, c.Sources...)
		only = only && c.Star
	}
	return out, only
}

func countFixed(l Lineage) int {
	n := 0
	for _, c := range l {
		if !c.Star {
			n++
		}
	}
	return n
}

// Sources returns every source of every column.
func (l Lineage) Sources() []Source {
	var out []Source
	for _, c := range l {
		out = addSources(out, c.Sources...)
	}
	return out
}

// unknownLineage is the lineage of rows sluice cannot see into.
func unknownLineage() Lineage {
	return Lineage{{Name: "?", Star: true, Sources: []Source{UnknownSource}}}
}

// maxSources bounds the sources of one column. A longer list (a query
// written to make lineage expensive) collapses to whole-table wildcards,
// then to Unknown: coarser, never narrower.
const maxSources = 64

// addSources appends the sources of add not yet in to.
func addSources(to []Source, add ...Source) []Source {
outer:
	for _, s := range add {
		for _, have := range to {
			if have == s {
				continue outer
			}
		}
		to = append(to, s)
		if len(to) > maxSources {
			to = collapse(to)
		}
	}
	return to
}

// collapse replaces column sources by their tables' wildcards, and too
// many tables by Unknown.
func collapse(srcs []Source) []Source {
	var out []Source
	for _, s := range srcs {
		if !s.Unknown {
			s.Column = "*"
		}
		dup := false
		for _, have := range out {
			if have == s {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, s)
		}
		if len(out) > maxSources {
			return []Source{UnknownSource}
		}
	}
	return out
}
