package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/extproc"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
)

const maskPolicies = `masking:
  - name: pii
    columns: [customers.email, customers.ssn, customers.card, customers.profile]
    detectors: [credit_card, email, us_ssn]
policies:
  - name: agents-read-masked
    targets: [orders-db]
    principals: { groups: [agents] }
    allow: [read]
    mask: [pii]
    max_rows: 1000
`

// seeded are the personal values in the customers table: none of them may
// reach the client, whatever the query's shape.
var seeded = []string{
	"alice@example.com", "bob@example.org", "536-22-8726", "4111111111111111", "4111 1111 1111 1111",
	"carol@example.net", "alice.private", "bob.secret",
}

func policyGate(cfg *policies.Config, g authz.GrantStore, sink audit.Sink) postgres.Gate {
	config := func() *policies.Config { return cfg }
	return &extproc.PolicyGate{Analyzer: sql.New(), Config: config, Grants: g, Audit: sink, Now: time.Now,
		// A short MinReload: a test creating a view need not wait a second.
		Views: &extproc.ViewCatalog{Config: config, MinReload: 20 * time.Millisecond}}
}

func seedCustomers(t *testing.T, p *pgPath) {
	p.pg.AdminExec(t, "orders",
		`CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn varchar(11), card text,
			note text, profile jsonb, born date)`,
		`INSERT INTO customers VALUES
			(1, 'Alice', 'alice@example.com', '536-22-8726', '4111111111111111', 'vip', '{"login": "alice.private"}', '1980-01-02'),
			(2, 'Bob', 'bob@example.org', NULL, '4111 1111 1111 1111', 'write to carol@example.net', '{"login": "bob.secret"}', NULL)`,
		`CREATE VIEW v_customers AS SELECT id, name, email, ssn FROM customers`,
		// Views whose values no detector recognises: only lineage through
		// the view's definition masks them.
		`CREATE VIEW v_profiles AS SELECT id, profile AS p FROM customers`,
		`CREATE VIEW v_nested AS SELECT id, p AS q FROM v_profiles`,
		`CREATE MATERIALIZED VIEW mv_logins AS SELECT name, profile->>'login' AS login FROM customers`,
		`CREATE VIEW v_names AS SELECT id, name FROM customers`,
		"GRANT SELECT ON customers, v_customers, v_profiles, v_nested, mv_logins, v_names TO app",
	)
}

// TestPostgresMaskingEveryShape runs every query shape of issue 6 item 5
// through the whole path with psql (text results, simple protocol) and pgx
// (extended protocol, binary results where pgx asks for them): no seeded
// value reaches the client, the values no rule names pass untouched, and
// pgx decodes every masked value.
func TestPostgresMaskingEveryShape(t *testing.T) {
	p, _ := startPGPathWith(t, pgOptions{policies: maskPolicies, gate: policyGate})
	seedCustomers(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	conn, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	shapes := []struct {
		query string
		keep  string // a value no rule names, which must pass ("" for none)
	}{
		{"SELECT id, name, email, ssn, card FROM customers ORDER BY id", "Alice"},
		{"SELECT c.email AS contact, c.name FROM customers c ORDER BY 2", "Bob"},
		{"SELECT email::varchar(100), ssn::text, card::bytea FROM customers", ""},
		{"SELECT lower(email) || '!' AS e, upper(name) FROM customers", "ALICE"},
		{"SELECT concat(name, ':', ssn), format('%s <%s>', name, email) FROM customers", ""},
		{"SELECT row_to_json(c) FROM customers c", ""},
		{"SELECT json_agg(c) FROM customers c", ""},
		{"SELECT (SELECT email FROM customers WHERE id = 1) AS e, 'x' AS y", ""},
		{"SELECT * FROM (SELECT name, card FROM customers) s", "Alice"},
		{"WITH x AS (SELECT ssn, name FROM customers) SELECT * FROM x", "Alice"},
		{"SELECT name FROM customers UNION ALL SELECT email FROM customers", ""},
		{"SELECT * FROM customers ORDER BY id", "Alice"},
		{"SELECT c.* FROM customers c", "Alice"},
		{"SELECT * FROM customers c(a, b, c2)", "vip"},
		{"SELECT profile->>'login', profile FROM customers", ""},
		{"SELECT note FROM customers", "vip"}, // no rule: the detector redacts the e-mail inside
		// Views: column rules hold through their definitions (the view
		// catalog), views over views and materialized views included.
		{"SELECT * FROM v_customers", "Alice"},
		{"SELECT p FROM v_profiles", ""},
		{"SELECT v.* FROM v_nested v", ""},
		{"SELECT row_to_json(v) FROM v_nested v", ""},
		{"SELECT name, login FROM mv_logins ORDER BY name", "Alice"},
		{"SELECT * FROM public.v_names", "Alice"}, // a view of unmasked columns stays unmasked
	}
	for _, sh := range shapes {
		// psql: simple protocol, text format.
		out, stderr, err := p.psql(p.token("agent-1"), "", "-c", sh.query)
		if err != nil {
			t.Fatalf("psql %s: %v\n%s", sh.query, err, stderr)
		}
		leaks(t, "psql "+sh.query, out)
		if sh.keep != "" && !strings.Contains(out, sh.keep) {
			t.Errorf("psql %s: %q lost (over-masked): %s", sh.query, sh.keep, out)
		}
		// pgx: extended protocol; binary for the types pgx knows.
		rows, err := conn.Query(ctx, sh.query)
		if err != nil {
			t.Fatalf("pgx %s: %v", sh.query, err)
		}
		var all strings.Builder
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				t.Fatalf("pgx %s: decode: %v", sh.query, err)
			}
			fmt.Fprintln(&all, vals...)
			raw := rows.RawValues()
			for _, r := range raw {
				all.Write(r)
				all.WriteByte(' ')
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("pgx %s: %v", sh.query, err)
		}
		leaks(t, "pgx "+sh.query, all.String())
		if sh.keep != "" && !strings.Contains(all.String(), sh.keep) {
			t.Errorf("pgx %s: %q lost (over-masked): %s", sh.query, sh.keep, all.String())
		}
	}

	// Several statements in one Query: each result set by its own lineage.
	out, stderr, err := p.psql(p.token("agent-1"), "", "-c", "SELECT name FROM customers WHERE id = 1; SELECT email, name FROM customers WHERE id = 1")
	if err != nil {
		t.Fatalf("multi-statement: %v\n%s", err, stderr)
	}
	leaks(t, "multi-statement", out)
	if strings.Count(out, "Alice") != 2 {
		t.Errorf("multi-statement: want Alice twice (name passes in both sets): %q", out)
	}

	// A statement prepared in SQL and executed in the same Query.
	out, stderr, err = p.psql(p.token("agent-1"), "", "-c", "PREPARE p AS SELECT email, name FROM customers; EXECUTE p")
	if err != nil {
		t.Fatalf("EXECUTE: %v\n%s", err, stderr)
	}
	leaks(t, "EXECUTE", out)

	// COPY TO STDOUT: CopyData rows are masked too.
	out, stderr, err = p.psql(p.token("agent-1"), "", "-c", "COPY customers TO STDOUT", "-c", "COPY (SELECT name, email FROM customers) TO STDOUT")
	if err != nil {
		t.Fatalf("COPY: %v\n%s", err, stderr)
	}
	leaks(t, "COPY", out)
	if !strings.Contains(out, "Alice\t") {
		t.Errorf("COPY: name lost: %q", out)
	}
	// COPY FROM STDIN writes: a read-only agent is refused before any
	// data moves, and a COPY to a server file or program is admin.
	for q, class := range map[string]string{"COPY customers FROM STDIN": "write", "COPY customers TO '/tmp/x'": "admin",
		"COPY customers TO PROGRAM 'cat'": "admin"} {
		_, stderr, err = p.psql(p.token("agent-1"), "", "-c", q)
		if err == nil || !strings.Contains(stderr, "no policy allows "+class) {
			t.Errorf("%s: err %v, stderr %q: want it refused as %s", q, err, stderr, class)
		}
	}

	// A view created after the catalog was loaded: its name is unknown,
	// so the catalog reloads before the statement's rows are planned.
	p.pg.AdminExec(t, "orders", `CREATE VIEW v_late AS SELECT name AS n, profile AS blob FROM customers`, "GRANT SELECT ON v_late TO app")
	time.Sleep(50 * time.Millisecond) // past the catalog's MinReload
	for _, q := range []string{"SELECT * FROM v_late", "SELECT blob, n FROM v_late"} {
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		var all strings.Builder
		for rows.Next() {
			vals, _ := rows.Values()
			fmt.Fprintln(&all, vals...)
		}
		if rows.Err() != nil {
			t.Fatalf("%s: %v", q, rows.Err())
		}
		leaks(t, "new view "+q, all.String())
		if !strings.Contains(all.String(), "Alice") {
			t.Errorf("%s: the name column was masked too: %s", q, all.String())
		}
	}

	conn.Close(ctx)
	p.quiesce()
	// The result records are appended after the rows went: wait for them.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var results int
		p.audit.mu.Lock()
		statements := map[string]bool{}
		for _, e := range p.audit.events {
			if e.Kind == audit.KindStatement && e.RequestID != "" {
				statements[e.RequestID] = true
			}
		}
		for _, e := range p.audit.events {
			// Each run's result names its statement's record, its masked
			// columns, rows and fingerprint.
			if e.Kind == audit.KindStatementResult && len(e.MaskedColumns) > 0 && statements[e.RequestID] && e.Rows > 0 && e.Fingerprint != "" {
				results++
			}
		}
		p.audit.mu.Unlock()
		if results > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no statement.result event names a masked column")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.sim.RequireNoViolations(t)
}

func leaks(t *testing.T, what, out string) {
	t.Helper()
	for _, s := range seeded {
		if strings.Contains(out, s) {
			t.Errorf("%s: %q reached the client:\n%s", what, s, out)
		}
	}
}

// TestPostgresResultBudget: a result over max_rows ends with sluice's
// 54000 after the rows the budget allows; the session goes on.
func TestPostgresResultBudget(t *testing.T) {
	p, _ := startPGPathWith(t, pgOptions{policies: `policies:
  - { name: small-reads, targets: [orders-db], principals: { groups: [agents] }, allow: [read], max_rows: 5, max_bytes: 100000 }
`, gate: policyGate})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{"SELECT g FROM generate_series(1, 100) g", "SELECT repeat('x', 50000) FROM generate_series(1, 3)"} {
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		var pgErr *pgconn.PgError
		if !errors.As(rows.Err(), &pgErr) || pgErr.Code != "54000" || !strings.Contains(pgErr.Message, "small-reads") {
			t.Fatalf("%s: %d rows, err %v: want 54000 naming the policy", q, n, rows.Err())
		}
		if q[7] == 'g' && n != 5 {
			t.Errorf("%s: %d rows before the error, want 5", q, n)
		}
		if q[7] == 'r' && n != 1 {
			t.Errorf("%s: %d rows before the error, want 1 (the second would pass 100000 bytes)", q, n)
		}
	}
	// Within budget, and the session still works.
	var sum int
	if err := conn.QueryRow(ctx, "SELECT sum(g)::int FROM generate_series(1, 5) g").Scan(&sum); err != nil || sum != 15 {
		t.Fatalf("after the budget errors: %d %v", sum, err)
	}
	_, stderr, err := p.psql(p.token("agent-1"), "", "-c", "SELECT g FROM generate_series(1, 10) g")
	if err == nil || !strings.Contains(stderr, "exceeds max_rows 5") {
		t.Fatalf("psql over budget: err %v, stderr %q", err, stderr)
	}
	conn.Close(ctx)
	p.quiesce()
	p.sim.RequireNoViolations(t)
}

// TestPostgresMaskingCursorPortal: a cursor declared in SQL is a portal
// the protocol may Execute by name without any Bind; its rows are masked
// (as a FETCH from the cursor) and the run is recorded.
func TestPostgresMaskingCursorPortal(t *testing.T) {
	p, _ := startPGPathWith(t, pgOptions{policies: maskPolicies, gate: policyGate})
	seedCustomers(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pc := conn.PgConn()
	if _, err := pc.Exec(ctx, "BEGIN; DECLARE c CURSOR FOR SELECT email, name FROM customers").ReadAll(); err != nil {
		t.Fatal(err)
	}
	fe := pc.Frontend()
	fe.Send(&pgproto3.Execute{Portal: "c"})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var rows []string
	for {
		m, err := pc.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			rows = append(rows, fmt.Sprintf("%q", m.Values))
		case *pgproto3.ErrorResponse:
			t.Fatalf("Execute of the cursor: %s %s", m.Code, m.Message)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if len(rows) != 2 {
		t.Fatalf("rows %v, want 2", rows)
	}
	leaks(t, "cursor portal", strings.Join(rows, "\n"))
	if !strings.Contains(strings.Join(rows, ""), "Alice") {
		t.Errorf("name lost: %v", rows)
	}
	p.sim.RequireNoViolations(t)
}
