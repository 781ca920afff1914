package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresBin is where Debian's postgresql-15 package puts the server
// binaries (.ci/run installs it).
const PostgresBin = "/usr/lib/postgresql/15/bin"

// Postgres is a throwaway Postgres 15 cluster on loopback: a fresh initdb
// per test, trust authentication for the superuser "postgres" on its Unix
// socket and on 127.0.0.1, stopped and removed at cleanup.
type Postgres struct {
	// SocketDir holds the Unix socket (and the data directory).
	SocketDir string
	Port      int
	User      string
	// PKI issues the server's certificate and verifies client
	// certificates; set by WithTLS.
	PKI *PKI

	t     testing.TB
	data  string
	fsync bool
	tls   bool
	args  []string // server settings fixed at start (TLS)
	cred  *syscall.Credential
	srv   *exec.Cmd
	exit  chan struct{}
	log   *SyncBuffer
}

// PostgresOption configures StartPostgres.
type PostgresOption func(*Postgres)

// WithFsync keeps fsync on. Tests run with fsync=off, which loses nothing
// unless the machine itself crashes; a benchmark that measures the cost
// of a durable commit needs it on.
func WithFsync() PostgresOption { return func(p *Postgres) { p.fsync = true } }

// StartPostgres runs initdb and postgres, as SLUICE_PG_USER when the test
// runs as root (Postgres refuses root; .ci/run creates sluicetest), else
// as the current user. Without the server binaries the test fails, unless
// SLUICE_ALLOW_SKIP=1 makes it skip.
func StartPostgres(t testing.TB, opts ...PostgresOption) *Postgres {
	t.Helper()
	if _, err := os.Stat(filepath.Join(PostgresBin, "postgres")); err != nil {
		if os.Getenv("SLUICE_ALLOW_SKIP") == "1" {
			t.Skipf("Postgres 15 server binaries not installed (SLUICE_ALLOW_SKIP=1): %v", err)
		}
		t.Fatalf("Postgres 15 server binaries are missing (%v): apt-get install -y postgresql-15, or set SLUICE_ALLOW_SKIP=1 to skip", err)
	}
	p := &Postgres{t: t, User: "postgres", cred: pgCredential(t)}
	for _, o := range opts {
		o(p)
	}
	// Not t.TempDir: its parent is 0700 root, which the postgres user
	// could not enter.
	dir, err := os.MkdirTemp("", "sluice-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if p.cred != nil {
		if err := os.Chown(dir, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	p.SocketDir, p.data = dir, filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(PostgresBin, "initdb"), "-D", p.data, "-U", p.User,
		"--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	if p.tls {
		p.args = p.startTLS()
	}
	var lastErr error
	for range 5 { // another process may take the free port first
		if p.Port, err = FreePort(); err != nil {
			t.Fatal(err)
		}
		if lastErr = p.start(); lastErr == nil {
			t.Cleanup(p.stop)
			return p
		}
	}
	t.Fatalf("postgres: %v", lastErr)
	return nil
}

func pgCredential(t testing.TB) *syscall.Credential {
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

func (p *Postgres) start() error {
	fsync := "off"
	if p.fsync {
		fsync = "on"
	}
	p.log = &SyncBuffer{}
	p.srv = exec.Command(filepath.Join(PostgresBin, "postgres"), "-D", p.data, "-k", p.SocketDir,
		"-p", strconv.Itoa(p.Port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync="+fsync,
		"-c", "max_connections=100")
	p.srv.Args = append(p.srv.Args, p.args...)
	// Pdeathsig: a test binary that dies does not leave its cluster behind.
	p.srv.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Pdeathsig: syscall.SIGQUIT}
	p.srv.Stdout, p.srv.Stderr = p.log, p.log
	if err := p.srv.Start(); err != nil {
		return err
	}
	p.exit = make(chan struct{})
	go func(cmd *exec.Cmd, exit chan struct{}) { cmd.Wait(); close(exit) }(p.srv, p.exit)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.exit:
			return fmt.Errorf("exited on port %d: %s", p.Port, strings.TrimSpace(p.log.String()))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pgx.Connect(ctx, p.DSN("postgres"))
		cancel()
		if err == nil {
			c.Close(context.Background())
			return nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return fmt.Errorf("did not accept connections within 30s: %v\n%s", err, p.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the server down (fast shutdown: sessions are ended).
func (p *Postgres) stop() {
	if p.srv == nil {
		return
	}
	_ = p.srv.Process.Signal(syscall.SIGINT)
	select {
	case <-p.exit:
	case <-time.After(30 * time.Second):
		_ = p.srv.Process.Kill()
		<-p.exit
	}
	p.srv = nil
}

// Stop shuts the server down, to test what a client does when its
// database goes away. Start brings it back with the same data and port.
func (p *Postgres) Stop() { p.stop() }

// Start restarts a stopped server.
func (p *Postgres) Start() {
	p.t.Helper()
	if err := p.start(); err != nil {
		p.t.Fatalf("postgres restart: %v", err)
	}
}

// DSN is a postgres:// URL for database db over TCP.
func (p *Postgres) DSN(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", p.User, p.Port, db)
}

// ConnString is a keyword/value connection string for db over the Unix
// socket.
func (p *Postgres) ConnString(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", p.SocketDir, p.Port, p.User, db)
}

// CreateDatabase creates a database and returns its DSN.
func (p *Postgres) CreateDatabase(name string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		p.t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		p.t.Fatalf("create database %s: %v", name, err)
	}
	return p.DSN(name)
}
