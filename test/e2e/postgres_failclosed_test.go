package e2e

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/policies"
)

const writePolicies = `policies:
  - { name: agents-write, targets: [orders-db], principals: { groups: [agents] }, allow: [read, write] }
`

// itemIDs reads, as the server's owner and past sluice, which items exist
// from id 10 up: what the agent's refused statements would have inserted.
func itemIDs(t *testing.T, p *pgPath, ctx context.Context) []int32 {
	t.Helper()
	c, err := pgx.Connect(ctx, p.pg.DSN("orders"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var ids []int32
	if err := c.QueryRow(ctx, "SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM items WHERE id >= 10").Scan(&ids); err != nil {
		t.Fatal(err)
	}
	return ids
}

// wantAuditRefusal checks a statement's error is sluice's audit refusal:
// 57P03, a statement-level ERROR (the session goes on), saying the audit
// store is unavailable and nothing was forwarded.
func wantAuditRefusal(t *testing.T, what string, err error) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != postgres.SQLStateAuditUnavailable || pe.Severity != "ERROR" ||
		!strings.Contains(pe.Message, "audit store is unavailable") || !strings.Contains(pe.Message, "not forwarded") {
		t.Errorf("%s: %v, want ERROR 57P03 saying the audit store is unavailable and nothing was forwarded", what, err)
	}
}

// TestPostgresStatementAuditFailsClosed: while statements cannot be
// recorded, every one is refused with 57P03 in sluice's words and never
// reaches the server (the rows it would insert do not exist): a simple
// Query, an Execute of a statement prepared while recording worked, a new
// Parse, and a statement inside a transaction, which ends up failed, as
// after any server-side error. The session stays usable: once the store
// is back, statements run again on the same connection.
func TestPostgresStatementAuditFailsClosed(t *testing.T) {
	p, _ := startPGPathWith(t, pgOptions{policies: writePolicies, gate: policyGate})
	p.pg.AdminExec(t, "orders", "GRANT INSERT ON items TO app")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)

	// pgx prepares a statement with parameters once, then runs it by Bind
	// and Execute alone.
	const insert = "INSERT INTO items VALUES ($1, $2)"
	if _, err := c.Exec(ctx, insert, 10, "ten"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}

	p.audit.failKind(audit.KindStatement, true)
	_, err = c.Exec(ctx, "INSERT INTO items VALUES (11, 'eleven')", pgx.QueryExecModeSimpleProtocol)
	wantAuditRefusal(t, "simple Query", err)
	if tx := c.PgConn().TxStatus(); tx != 'E' {
		t.Errorf("transaction status %c after the refusal, want E (failed, as the server says)", tx)
	}
	p.audit.failKind(audit.KindStatement, false)
	if _, err := c.Exec(ctx, "ROLLBACK"); err != nil || c.PgConn().TxStatus() != 'I' {
		t.Fatalf("ROLLBACK: %v, status %c", err, c.PgConn().TxStatus())
	}

	p.audit.failKind(audit.KindStatement, true)
	_, err = c.Exec(ctx, insert, 12, "twelve")
	wantAuditRefusal(t, "Execute of a prepared statement", err)
	_, err = c.Exec(ctx, "INSERT INTO items (name, id) VALUES ($1, $2)", "thirteen", 13)
	wantAuditRefusal(t, "Parse", err)
	// A Parse alone (Parse, Describe, Sync; no Execute): its text would
	// reach the server, which parses it and plans it at a Bind.
	_, err = c.PgConn().Prepare(ctx, "probe", "INSERT INTO items VALUES (17, 'seventeen')", nil)
	wantAuditRefusal(t, "Parse alone", err)
	_, err = c.Exec(ctx, "INSERT INTO items VALUES (14, 'fourteen')", pgx.QueryExecModeSimpleProtocol)
	wantAuditRefusal(t, "simple Query outside a transaction", err)
	// libpq shows the agent the same words.
	_, stderr, err := p.psql(p.token("agent-1"), "", "-c", "INSERT INTO items VALUES (15, 'fifteen')")
	if err == nil || !strings.Contains(stderr, "ERROR:  sluice: the audit store is unavailable; the statement was not forwarded") {
		t.Errorf("psql: %v\n%s", err, stderr)
	}
	p.audit.failKind(audit.KindStatement, false)

	// The refused Parse's text never reached the server: it prepared
	// nothing (pg_prepared_statements lists protocol-level statements too).
	var prepared int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%(name, id)%' OR name = 'probe'",
		pgx.QueryExecModeSimpleProtocol).Scan(&prepared); err != nil || prepared != 0 {
		t.Errorf("statements prepared from the refused Parse: %d, %v; want none", prepared, err)
	}
	if ids := itemIDs(t, p, ctx); !slices.Equal(ids, []int32{10}) {
		t.Errorf("items from 10 up: %v, want only 10: a statement that could not be recorded reached the server", ids)
	}
	// The same connection goes on: the prepared statement runs again.
	if _, err := c.Exec(ctx, insert, 16, "sixteen"); err != nil {
		t.Fatalf("after the store came back: %v", err)
	}
	if ids := itemIDs(t, p, ctx); !slices.Equal(ids, []int32{10, 16}) {
		t.Errorf("items from 10 up: %v, want 10 and 16", ids)
	}
	c.Close(ctx)
	p.quiesce()
	p.sim.RequireNoViolations(t)
}

// TestPostgresAuditStoreLostMidSession: the gate records in a real store
// (SQLite). Statements run while it is open; once it is gone, the next
// statement, prepared or not, is refused with 57P03 and does not run.
func TestPostgresAuditStoreLostMidSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	signer, err := audit.EphemeralSigner()
	if err != nil {
		t.Fatal(err)
	}
	store, err := audit.OpenSQLite(ctx, filepath.Join(t.TempDir(), "audit.db"), audit.WithSigner(signer))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	p, _ := startPGPathWith(t, pgOptions{policies: writePolicies,
		gate: func(cfg *policies.Config, g authz.GrantStore, _ audit.Sink) postgres.Gate {
			return policyGate(cfg, g, store)
		}})
	p.pg.AdminExec(t, "orders", "GRANT INSERT ON items TO app")
	c, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)

	const insert = "INSERT INTO items VALUES ($1, $2)"
	if _, err := c.Exec(ctx, insert, 20, "twenty"); err != nil {
		t.Fatal(err)
	}
	page, err := store.Query(ctx, audit.Filter{Kind: audit.KindStatement, Text: "INSERT INTO items"})
	if err != nil || len(page.Records) == 0 {
		t.Fatalf("the insert's record: %v, %v", page.Records, err)
	}

	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = c.Exec(ctx, insert, 21, "twenty-one")
	wantAuditRefusal(t, "Execute with the store closed", err)
	_, err = c.Exec(ctx, "INSERT INTO items VALUES (22, 'twenty-two')", pgx.QueryExecModeSimpleProtocol)
	wantAuditRefusal(t, "Query with the store closed", err)
	_, err = c.Exec(ctx, "INSERT INTO items (name, id) VALUES ($1, $2)", "twenty-three", 23)
	wantAuditRefusal(t, "Parse with the store closed", err)

	if ids := itemIDs(t, p, ctx); !slices.Equal(ids, []int32{20}) {
		t.Errorf("items from 10 up: %v, want only 20", ids)
	}
	c.Close(ctx)
	p.quiesce()
	p.sim.RequireNoViolations(t)
}

// TestPostgresUnfinishedResultRecorded: a client that goes away while its
// rows stream still gets its statement's result recorded, as incomplete,
// with the rows and bytes that reached it, before the session's end.
func TestPostgresUnfinishedResultRecorded(t *testing.T) {
	p, _ := startPGPathWith(t, pgOptions{policies: writePolicies, gate: policyGate})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := c.Query(ctx, "SELECT g, repeat('x', 200) FROM generate_series(1, 20000000) g", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	read := 0
	for read < 500 && rows.Next() {
		read++
	}
	if read != 500 {
		t.Fatalf("read %d rows: %v", read, rows.Err())
	}
	c.PgConn().Conn().Close() // gone, mid-result

	p.quiesce()
	p.audit.mu.Lock()
	events := slices.Clone(p.audit.events)
	p.audit.mu.Unlock()
	result, end := -1, -1
	for i, e := range events {
		switch {
		case e.Kind == audit.KindStatementResult && strings.Contains(e.Request, "generate_series"):
			result = i
		case e.Kind == audit.KindSessionEnd && result >= 0 && e.SessionID == events[result].SessionID:
			end = i
		}
	}
	if result < 0 {
		t.Fatal("no statement.result for the statement whose rows were streaming")
	}
	r := events[result]
	if !strings.Contains(r.Error, "incomplete") || r.Rows < int64(read) || r.Bytes < int64(read)*200 || r.RequestID == "" {
		t.Errorf("result %+v, want incomplete with at least %d rows and their bytes", r, read)
	}
	if end < 0 {
		t.Errorf("no session.end after the result (result at %d)", result)
	}
}
