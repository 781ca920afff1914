package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
)

const holdPolicies = `approvers: { groups: [dba] }
policies:
  - name: agents-on-orders
    targets: [orders-db]
    principals: { groups: [agents] }
    allow: [read]
    require_grant: [write]
    wait: 20s
`

// TestPostgresHoldForApproval: with a policy wait, a write that needs a
// grant is held while its request is open: approved, it runs (and the
// client sees only a slow statement); denied, it is refused at once with
// the approver's verdict; a revoked grant stops the next statement of the
// same live session.
func TestPostgresHoldForApproval(t *testing.T) {
	p, store := startPGPathWith(t, pgOptions{policies: holdPolicies, gate: policyGate})
	p.pg.AdminExec(t, "orders", "GRANT UPDATE ON items TO app")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	conn, err := p.pgx(ctx, p.token("agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	dba := policies.Principal{Issuer: p.idp.Issuer, Subject: "dba-alice", Groups: []string{"dba"}}

	// decideWhenOpen waits for the open request and decides it.
	decideWhenOpen := func(decide func(id string) error) chan error {
		done := make(chan error, 1)
		go func() {
			for ctx.Err() == nil {
				open, err := store.List(ctx, grants.Filter{Target: "orders-db", State: grants.StatePending, Limit: 10})
				if err == nil && len(open) == 1 {
					time.Sleep(200 * time.Millisecond) // the statement is held meanwhile
					done <- decide(open[0].ID)
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			done <- ctx.Err()
		}()
		return done
	}

	approved := decideWhenOpen(func(id string) error {
		_, err := store.Approve(ctx, id, dba, "ok", time.Now())
		return err
	})
	// A parameter makes pgx prepare the statement once and later run it
	// by Bind and Execute alone.
	const update = "UPDATE items SET name = $1 WHERE id = 3"
	start := time.Now()
	if _, err := conn.Exec(ctx, update, "held"); err != nil {
		t.Fatalf("held write, approved meanwhile: %v", err)
	}
	if err := <-approved; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("the write ran after %s, before it was approved", d)
	}
	var name string
	if err := conn.QueryRow(ctx, "SELECT name FROM items WHERE id = 3").Scan(&name); err != nil || name != "held" {
		t.Fatalf("after the held write: %q %v", name, err)
	}

	// The grant covers this statement's shape; revoke it, and the next
	// run of the same prepared statement in this same session (Bind and
	// Execute only) is held again, then denied.
	g, err := store.List(ctx, grants.Filter{Target: "orders-db", State: grants.StateApproved, Limit: 10})
	if err != nil || len(g) != 1 {
		t.Fatalf("approved grants: %v %v", g, err)
	}
	if _, err := store.Revoke(ctx, g[0].ID, dba, "enough", time.Now()); err != nil {
		t.Fatal(err)
	}
	denied := decideWhenOpen(func(id string) error {
		_, err := store.Deny(ctx, id, dba, "no", time.Now())
		return err
	})
	_, err = conn.Exec(ctx, update, "again")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Message, "was denied") {
		t.Fatalf("write after revocation, request denied: %v", err)
	}
	if err := <-denied; err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT name FROM items WHERE id = 3").Scan(&name); err != nil || name != "held" {
		t.Fatalf("after the refused run: %q %v", name, err)
	}
	conn.Close(ctx)
	p.quiesce()
	p.sim.RequireNoViolations(t)
}
