package compose

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/test/testenv"
)

// pgServer runs the real psql against a testenv Postgres: as its
// superuser over the Unix socket, or as any role over TCP.
type pgServer struct{ *testenv.Postgres }

// psql runs the real client as the superuser over the Unix socket, with a
// clean environment plus extra.
func (pg pgServer) psql(extra []string, db string, args ...string) (string, error) {
	return pg.run(extra, append([]string{"-h", pg.SocketDir, "-U", pg.User, "-d", db}, args...)...)
}

func (pg pgServer) run(extra []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", append([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-p", strconv.Itoa(pg.Port)}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "PGCONNECT_TIMEOUT=5"}, extra...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("psql %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// TestSeedSQL loads deploy/postgres/seed.sql as the postgres image's init
// step would, then logs in as app_rw over TCP with SCRAM, as sluice does.
func TestSeedSQL(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql not installed")
	}
	pg := pgServer{testenv.StartPostgres(t)}
	seed, err := filepath.Abs(filepath.Join("..", "..", "deploy", "postgres", "seed.sql"))
	if err != nil {
		t.Fatal(err)
	}
	for _, db := range []string{"orders", "unseeded"} {
		if _, err := pg.psql(nil, "postgres", "-c", "CREATE DATABASE "+db); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("refuses without ORDERS_DB_PASSWORD", func(t *testing.T) {
		out, err := pg.psql(nil, "unseeded", "-f", seed)
		if err == nil || !strings.Contains(out, "ORDERS_DB_PASSWORD is not set") {
			t.Fatalf("seed without the password: err=%v, output:\n%s", err, out)
		}
	})

	const password = "seed-test-only"
	if _, err := pg.psql([]string{"ORDERS_DB_PASSWORD=" + password}, "orders", "-f", seed); err != nil {
		t.Fatalf("seed.sql: %v", err)
	}

	verifier, err := pg.psql(nil, "orders", "-tAc", "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_rw'")
	if err != nil || !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
		t.Errorf("app_rw password verifier = %.20q (%v), want SCRAM-SHA-256", verifier, err)
	}

	// As in the postgres image: app_rw logs in over TCP with SCRAM.
	pg.WriteHBA(t, "app_rw", testenv.AuthSCRAM)
	appRW := func(sql string) (string, error) {
		return pg.run([]string{"PGPASSWORD=" + password}, "-h", "127.0.0.1", "-U", "app_rw", "-d", "orders", "-tAc", sql)
	}
	cols, err := appRW("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'customers'")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"name", "email", "card_number", "ssn"} {
		if !strings.Contains(","+cols+",", ","+c+",") {
			t.Errorf("customers columns = %s, want %s among them", cols, c)
		}
	}
	if n, err := appRW("SELECT count(*) FROM orders JOIN customers ON customers.id = orders.customer_id"); err != nil || n == "0" {
		t.Errorf("app_rw reads %q orders joined to customers (%v), want seeded rows", n, err)
	}
	if _, err := appRW("UPDATE orders SET status = 'shipped' WHERE id = 1"); err != nil {
		t.Errorf("app_rw cannot write: %v", err)
	}
	if _, err := appRW("CREATE TABLE x (i int)"); err == nil {
		t.Error("app_rw may create tables; the seed should leave DDL to the owner")
	}
	if _, err := pg.run([]string{"PGPASSWORD=wrong"}, "-h", "127.0.0.1", "-U", "app_rw", "-d", "orders", "-c", "SELECT 1"); err == nil {
		t.Error("app_rw logged in with a wrong password: TCP must use SCRAM, not trust")
	}
}
