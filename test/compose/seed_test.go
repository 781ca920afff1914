package compose

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgBin is where Debian's postgresql-15 package puts the server binaries.
const pgBin = "/usr/lib/postgresql/15/bin"

// pgServer is a throwaway Postgres 15 on loopback: trust on its Unix socket
// (for the superuser that seeds it) and SCRAM over TCP (for app_rw, as in
// the postgres image of docker-compose.yaml).
type pgServer struct {
	dir  string // data directory and socket directory
	port int
}

// startPostgres runs initdb and postgres as SLUICE_PG_USER when the test
// runs as root (Postgres refuses root), else as the current user.
func startPostgres(t *testing.T) *pgServer {
	t.Helper()
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Postgres 15 server binaries are missing (%v); .ci/run installs postgresql-15", err)
		}
		t.Skipf("Postgres 15 server binaries not installed: %v", err)
	}
	cred := pgCredential(t)
	dir, err := os.MkdirTemp("", "sluice-seed-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	pg := &pgServer{dir: dir, port: freePort(t)}

	initdb := exec.Command(filepath.Join(pgBin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}

	var log bytes.Buffer
	srv := exec.Command(filepath.Join(pgBin, "postgres"), "-D", filepath.Join(dir, "data"), "-k", dir,
		"-p", strconv.Itoa(pg.port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off")
	srv.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	srv.Stdout, srv.Stderr = &log, &log
	if err := srv.Start(); err != nil {
		t.Fatalf("postgres: %v", err)
	}
	t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGINT) // fast shutdown
		_ = srv.Wait()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := pg.psql(nil, "postgres", "-c", "SELECT 1"); err == nil {
			return pg
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres did not accept connections within 30s:\n%s", log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func pgCredential(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	name := os.Getenv("SLUICE_PG_USER")
	if name == "" {
		name = "postgres"
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("running as root, Postgres needs another OS user: %v (set SLUICE_PG_USER; .ci/run creates sluicetest)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// psql runs the real client as the superuser over the Unix socket, with a
// clean environment plus extra.
func (pg *pgServer) psql(extra []string, db string, args ...string) (string, error) {
	return pg.run(extra, append([]string{"-h", pg.dir, "-U", "postgres", "-d", db}, args...)...)
}

func (pg *pgServer) run(extra []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", append([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-p", strconv.Itoa(pg.port)}, args...)...)
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
	pg := startPostgres(t)
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
