package sql

import "fmt"

// TableOp is what a statement does to a relation it names.
type TableOp int

// Table operations.
const (
	OpRead     TableOp = iota + 1 // FROM, JOIN, subqueries, COPY TO
	OpInsert                      // INSERT, COPY FROM
	OpUpdate                      // UPDATE, INSERT ... ON CONFLICT DO UPDATE
	OpDelete                      // DELETE
	OpMerge                       // MERGE
	OpTruncate                    // TRUNCATE
	OpLock                        // LOCK TABLE
	OpDDL                         // CREATE, ALTER, DROP and the like, SELECT INTO
	OpMaintain                    // VACUUM, ANALYZE, CLUSTER, REINDEX, REFRESH
)

var tableOpNames = map[TableOp]string{
	OpRead:     "read",
	OpInsert:   "insert",
	OpUpdate:   "update",
	OpDelete:   "delete",
	OpMerge:    "merge",
	OpTruncate: "truncate",
	OpLock:     "lock",
	OpDDL:      "ddl",
	OpMaintain: "maintain",
}

// String returns the operation's name.
func (o TableOp) String() string {
	if n, ok := tableOpNames[o]; ok {
		return n
	}
	return fmt.Sprintf("TableOp(%d)", int(o))
}
