// Package sql analyses the SQL an agent sends to Postgres before it may run
// (design.md sections 5 and 6): which operation classes it holds, which
// relations and functions it touches, its fingerprint, and where each
// result column's values come from, for masking. It is pure: text in,
// analysis out, with no knowledge of the wire, gRPC or Envoy.
//
// The parser is pg_query (PostgreSQL 17's own grammar). A query string is
// parsed once; every statement in it is analysed; a string the parser
// rejects is one statement of class unknown carrying the parse error.
// Literals, comments and dollar-quoted bodies are tokens to the parser, so
// "SELECT 'DROP TABLE x'" is a read and "SELECT 1 /* ; DROP TABLE t */" is
// one statement.
//
//	sluice session                     Analyzer
//	   │ Analyze(query) ───────────────▶ │ cache hit? ── yes ─▶ shared *Analysis
//	   │                                  │ same statement, other constants?
//	   │                                  │   (Normalize; shape.go) ── yes ─▶ the
//	   │                                  │   shape's analysis in this text
//	   │                                  │ parse: libpg_query's JSON (cgo) decoded
//	   │                                  │   into pg_query's tree (internal/pgjson)
//	   │                                  │ per statement: walk (classes, tables,
//	   │                                  │   functions), lineage, lazy fingerprint
//	   │ ◀─────────────────────── *Analysis (treat as read-only)
//	   │ EXECUTE p  → st.WithPrepared(prepared[p])
//	   │ FETCH c    → st.WithCursor(cursors[c])
//	   │ decide on Class(), mask with Columns.Field(i, n)
//
// # Classes
//
// A statement's class is the most dangerous class found anywhere in its
// parse tree (policies.OperationClass: read < write < ddl < admin <
// unknown); Statement.Classes keeps them all. The walk reaches every node
// (walk_gen.go is generated from pg_query's schema), so a data-modifying
// CTE, a subquery in WHERE, a DEFAULT expression or a function in ORDER BY
// counts like a top-level statement.
//
//	read     SELECT, TABLE, VALUES; COPY ... TO STDOUT; SHOW; EXPLAIN without
//	         ANALYZE (whatever it explains: it is planned, not run); LISTEN;
//	         FETCH, MOVE, CLOSE, DEALLOCATE; SET CONSTRAINTS; DISCARD PLANS.
//	         Transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT...): an
//	         agent must be able to run its reads in a transaction, and what
//	         runs inside it is gated statement by statement.
//	         SET/RESET of harmless settings (settings.go: timeouts,
//	         application_name, formatting, transaction characteristics).
//	write    INSERT, UPDATE, DELETE, MERGE, anywhere in the tree;
//	         SELECT ... FOR UPDATE/SHARE (row locks); LOCK TABLE; NOTIFY;
//	         COPY ... FROM STDIN; nextval, setval, advisory locks, pg_notify;
//	         any function sluice does not know (below).
//	ddl      CREATE, ALTER, DROP, COMMENT, RENAME of schema objects;
//	         CREATE TABLE AS, SELECT INTO; TRUNCATE (it empties a whole table
//	         at once, bypassing row-level security and ON DELETE triggers,
//	         under its own privilege, like DROP); DISCARD TEMP.
//	admin    GRANT, REVOKE, roles, ownership, row-level security policies,
//	         default privileges; databases, tablespaces, extensions,
//	         languages, foreign servers and user mappings, publications,
//	         subscriptions, event triggers; ALTER SYSTEM, LOAD, CHECKPOINT;
//	         VACUUM, ANALYZE, CLUSTER, REINDEX, REFRESH MATERIALIZED VIEW
//	         (the operator's maintenance, under PostgreSQL 17's MAINTAIN
//	         privilege); COPY to or from a server file or PROGRAM; SET/RESET
//	         of any other setting (role, session_authorization,
//	         search_path, standard_conforming_strings, client_encoding,
//	         custom settings), RESET ALL, DISCARD ALL; PREPARE TRANSACTION,
//	         COMMIT/ROLLBACK PREPARED (they outlive the session and hold
//	         locks); DO; CALL; functions that act on the server, other
//	         sessions, files, large objects, replication or another server
//	         (functions.go); any statement type this package does not list.
//	unknown  what the parser rejects; EXECUTE of a prepared statement until
//	         the session resolves it with WithPrepared.
//
// PREPARE name AS stmt has the class of stmt (preparing a DELETE needs the
// right to delete) and reports it in Statement.Prepare for the session to
// keep; EXECUTE name is unknown until WithPrepared. DECLARE ... CURSOR FOR
// stmt likewise reports Statement.Declare; FETCH takes the cursor's lineage
// through WithCursor.
//
// Code sluice cannot see takes the most dangerous class it could hold. A DO
// block runs agent-written PL/pgSQL, which can EXECUTE any string: admin.
// CALL runs a procedure, which exists for its side effects and may COMMIT
// inside: admin, unless the operator classifies it (WithFunctions). CREATE
// FUNCTION or PROCEDURE is ddl, raised to what the body could do when it
// runs: a LANGUAGE sql body is parsed and classified, a BEGIN ATOMIC body is
// walked, any other language is admin. Otherwise an agent allowed ddl and
// write could wrap an admin action in a function and call it as a write.
// Views, rules, defaults and other stored expressions count the same way.
//
// # Functions
//
// Functions are classified as data (functions.go, builtin_functions.txt):
//
//   - every volatile pg_catalog function, one by one, with a reason:
//     pg_terminate_backend, pg_reload_conf, pg_read_file, lo_*, replication
//     slots... are admin; nextval, setval, advisory locks, pg_notify are
//     write; random, clock_timestamp, pg_sleep, txid_current... are read;
//   - extension functions known to be dangerous (dblink*, adminpack's
//     pg_file_*), which match in any schema;
//   - set_config is the class of its setting when the name is a constant,
//     admin otherwise;
//   - every other pg_catalog function whose overloads are all immutable or
//     stable (about 2,400 names, generated from PostgreSQL 15's pg_proc):
//     read. Postgres guarantees those do not modify the database.
//
// A function in none of these lists, in practice a user-defined function,
// is write and its result's lineage unknown. It may do anything its body
// does; write keeps it from read-only agents, the common policy, without
// making every custom function an admin operation. The residual risk is an
// agent allowed write calling an existing function that does ddl or admin
// work; operators who rely on such functions declare them with
// WithFunctions (which can also declare a pure function read). Read-class
// table entries apply only to unqualified or pg_catalog-qualified calls, so
// myschema.lower(x) is a user function. An unqualified name could still
// resolve to a same-named user overload with other argument types; only an
// owner can create one.
//
// Under plain EXPLAIN, statement kinds count as read but function calls
// keep their class: the planner evaluates immutable functions on constant
// arguments, and a user function may be declared immutable whatever it does.
//
// # Lineage
//
// Statement.Columns describes the rows a statement returns (SELECT and
// friends, RETURNING, COPY ... TO STDOUT, EXPLAIN, SHOW; nil when none):
// one Column per result column, each with the Sources its values may come
// from. Sources are (schema, table, column) as the query names them; see
// Source.Matches for how masking patterns apply ("table.column",
// "schema.table.column", "*.column"; unqualified matches any schema; names
// fold case).
//
//   - Aliases, casts, operators, CASE (its conditions too), COALESCE,
//     concatenation, aggregates and window functions derive from every
//     column they read. A constant, a parameter, count(*) or now() derive
//     from none.
//   - Subqueries, CTEs (recursive ones to a fixpoint), LATERAL, VALUES,
//     set operations (column by column) and joins (USING and NATURAL
//     merge columns) are followed through.
//   - Column.Star stands for a run of columns only the catalog can count:
//     SELECT * or t.* over a relation; its source is the wildcard
//     (table, "*"), which matches any pattern on that table. Whole-row
//     references (row_to_json(t), json_agg(t), to_jsonb(t.*)) derive from
//     that wildcard. Lineage.Field maps a column of the actual result back
//     through stars by position from both ends.
//   - An unqualified column may come from any relation in scope (the
//     parser cannot tell which has it), and possibly from outer queries:
//     every candidate is a source. Over-masking is the price of never
//     under-masking.
//   - Unknown: opaque functions (user-defined, dblink, table_to_xml,
//     query_to_xml...), references sluice cannot resolve, EXECUTE and FETCH
//     until resolved, procedure results, unparseable statements. Unknown
//     matches every pattern: the masker must mask or deny.
//   - Values a DML statement writes flow into its RETURNING columns.
//
// Limits the masker must know. The parser does not know which relations
// are views (or materialized views or foreign tables): a view's column is
// reported as the view's, so a masker that cannot expand view definitions
// must treat relations it does not know to be tables as unknown. Lineage
// covers values returned, not predicates: WHERE ssn = '...' still tells the
// agent something. An agent allowed to write can copy a masked column into
// another table and read it back; that is policy's to prevent.
//
// # Cost
//
// A cache miss is dominated by pg_query (see BenchmarkParts): its C parser
// is fast, but serialising the tree to protobuf in C and decoding it in Go
// cost several times the parse. The analysis cache (WithCacheSize) serves
// repeated query texts in tens of nanoseconds; extended-protocol clients
// repeat the same text with parameters, so they hit it.
package sql
