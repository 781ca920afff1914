package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/extproc"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
)

const gatedPolicies = `approvers: { groups: [dba] }
policies:
  - name: agents-on-orders
    targets: [orders-db]
    principals: { groups: [agents] }
    allow: [read]
    require_grant: [write]
    deny: [ddl, admin, unknown]
`

// TestPostgresPolicyGate drives the gate serve uses (SQL analysis, the
// decision, grants, audit before forward) through the whole path with pgx:
// reads run, DDL and smuggled DDL are refused with sluice's reason, a write
// opens an approval request and runs once it is approved.
func TestPostgresPolicyGate(t *testing.T) {
	p, store := startPGPathWith(t, pgOptions{policies: gatedPolicies,
		gate: func(cfg *policies.Config, g authz.GrantStore, sink audit.Sink) postgres.Gate {
			return &extproc.PolicyGate{Analyzer: sql.New(), Config: func() *policies.Config { return cfg },
				Grants: g, Audit: sink, Now: time.Now}
		}})
	p.pg.AdminExec(t, "orders", "GRANT UPDATE ON items TO app")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	var name string
	if err := conn.QueryRow(ctx, "SELECT name FROM items WHERE id = $1", 2).Scan(&name); err != nil || name != "rocket skates" {
		t.Fatalf("read: %q %v", name, err)
	}

	refused := func(query, wantReason string) *pgconn.PgError {
		t.Helper()
		_, err := conn.Exec(ctx, query)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Message, wantReason) {
			t.Fatalf("%s: err = %v, want 42501 containing %q", query, err, wantReason)
		}
		return pgErr
	}
	refused("DROP TABLE items", "ddl is denied on orders-db")
	refused("SELECT 1; DROP TABLE items", "ddl is denied on orders-db")
	refused("SELECT pg_terminate_backend(pg_backend_pid())", "admin is denied on orders-db")

	pgErr := refused("UPDATE items SET name = 'anvil (used)' WHERE id = 1", "needs an approved grant")
	id := strings.TrimSuffix(strings.TrimPrefix(pgErr.Detail, "Approval request "), " is open.")
	if !strings.HasPrefix(id, "gr_") || !strings.Contains(pgErr.Hint, "sluice grants approve "+id) {
		t.Fatalf("refusal detail %q hint %q", pgErr.Detail, pgErr.Hint)
	}
	g, err := store.Get(ctx, id)
	if err != nil || g.Statement == "" || g.Fingerprint == "" {
		t.Fatalf("approval request %+v %v: want a one-statement request", g, err)
	}
	dba := policies.Principal{Issuer: p.idp.Issuer, Subject: "dba-alice", Groups: []string{"dba"}}
	if _, err := store.Approve(ctx, id, dba, "ok", time.Now()); err != nil {
		t.Fatal(err)
	}
	// The same statement now runs; the items table still exists.
	if _, err := conn.Exec(ctx, "UPDATE items SET name = 'anvil (used)' WHERE id = 1"); err != nil {
		t.Fatalf("approved write: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT name FROM items WHERE id = 1").Scan(&name); err != nil || name != "anvil (used)" {
		t.Fatalf("after the write: %q %v", name, err)
	}
	// A statement grant covers its fingerprint (the statement's shape,
	// literals aside: design.md section 5), not another statement.
	if _, err := conn.Exec(ctx, "UPDATE items SET name = 'x' WHERE id = 2"); err != nil {
		t.Fatalf("same shape, other literals: %v", err)
	}
	refused("UPDATE items SET id = 7 WHERE id = 3", "needs an approved grant")

	conn.Close(ctx)
	p.quiesce()
	var decisions []string
	p.audit.mu.Lock()
	events := append([]audit.Event(nil), p.audit.events...)
	p.audit.mu.Unlock()
	for _, e := range events {
		if e.Kind == audit.KindStatement {
			d := e.Decision
			if strings.Contains(e.Reason, "parse: prepared") {
				d += "(parse)" // recorded before its text reached the server
			}
			decisions = append(decisions, d)
		}
	}
	want := "allow(parse) allow deny deny deny approval_required allow allow(parse) allow allow approval_required"
	if got := strings.Join(decisions, " "); got != want {
		t.Errorf("statement audit decisions %q, want %q", got, want)
	}
	p.sim.RequireNoViolations(t)
}
