package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Postgres authentication methods as pg_hba.conf names them.
const (
	AuthTrust    = "trust"
	AuthPassword = "password"
	AuthMD5      = "md5"
	AuthSCRAM    = "scram-sha-256"
	// AuthCert is pg_hba.conf's cert method: TLS with a client certificate
	// whose CN is the role, no password (SetCertAuth).
	AuthCert      = "cert"
	authProbeWait = 30 * time.Second
)

// AdminExec runs statements as the superuser in database db.
func (p *Postgres) AdminExec(t testing.TB, db string, stmts ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	for _, s := range stmts {
		if _, err := c.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// SetAuth makes role log in over TCP from 127.0.0.1 with method (AuthTrust,
// AuthPassword, AuthMD5, AuthSCRAM) and password: the role is created if
// needed and its password stored the way the method needs it (an md5 hash
// for md5, a SCRAM verifier otherwise, since a SCRAM verifier cannot
// answer md5), pg_hba.conf is rewritten, the server reloaded, and SetAuth
// returns once the server asks a new connection for exactly that method.
// The superuser keeps trust on the socket and on 127.0.0.1.
func (p *Postgres) SetAuth(t testing.TB, role, password, method string) {
	t.Helper()
	enc := "scram-sha-256"
	if method == AuthMD5 {
		enc = "md5"
	}
	ident := pgx.Identifier{role}.Sanitize()
	ctx, c, exists := p.roleAdmin(t, role)
	defer c.Close(ctx)
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	// Quoting the literal by hand: DDL takes no parameters.
	lit := "'" + escapeLiteral(password) + "'"
	for _, s := range []string{
		"SET password_encryption = '" + enc + "'",
		fmt.Sprintf("%s ROLE %s LOGIN PASSWORD %s", verb, ident, lit),
	} {
		if _, err := c.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	p.WriteHBA(t, role, method)
}

// WriteHBA makes role log in over TCP from 127.0.0.1 with method, leaving
// its password as it is, reloads the server and returns once a new
// connection is asked for exactly that method. The superuser keeps trust
// on the socket and on 127.0.0.1.
func (p *Postgres) WriteHBA(t testing.TB, role, method string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	line := "host all " + strconv.Quote(role) + " 127.0.0.1/32 " + method
	if method == AuthCert {
		line = "hostssl all " + strconv.Quote(role) + " 127.0.0.1/32 cert"
	}
	hba := "local all all trust\n" +
		"host all " + p.User + " 127.0.0.1/32 trust\n" + line + "\n"
	if err := os.WriteFile(filepath.Join(p.data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	// The probe speaks clear text, which a hostssl line does not match:
	// the server refuses it with an ErrorResponse once the file is read.
	want := map[string]string{AuthTrust: "AuthenticationOk", AuthPassword: "AuthenticationCleartextPassword",
		AuthMD5: "AuthenticationMD5Password", AuthSCRAM: "AuthenticationSASL", AuthCert: "ErrorResponse"}[method]
	deadline := time.Now().Add(authProbeWait)
	for {
		got, err := p.firstAuthRequest(role)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pg_hba.conf reload: a connection as %s gets %s (%v), want %s", role, got, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SetCertAuth makes role log in over TLS from 127.0.0.1 with a client
// certificate and nothing else (pg_hba.conf "hostssl all role 127.0.0.1/32
// cert"): the role is created without a password if needed, and the
// server must have been started WithTLS. It returns the files of a
// certificate for role from the server's PKI.
func (p *Postgres) SetCertAuth(t testing.TB, role string) (certFile, keyFile string) {
	t.Helper()
	if p.PKI == nil {
		t.Fatal("SetCertAuth needs a server started WithTLS")
	}
	ctx, c, exists := p.roleAdmin(t, role)
	defer c.Close(ctx)
	if !exists {
		if _, err := c.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN"); err != nil {
			t.Fatal(err)
		}
	}
	p.WriteHBA(t, role, AuthCert)
	return p.PKI.ClientCert(role)
}

// roleAdmin connects as the superuser to database postgres, for up to 30
// seconds, and says whether role exists. The caller closes c.
func (p *Postgres) roleAdmin(t testing.TB, role string) (ctx context.Context, c *pgx.Conn, exists bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	c, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		c.Close(ctx)
		t.Fatal(err)
	}
	return ctx, c, exists
}

// firstAuthRequest opens a connection as role and names the server's first
// authentication request.
func (p *Postgres) firstAuthRequest(role string) (string, error) {
	nc, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port)), 5*time.Second)
	if err != nil {
		return "", err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": role, "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		return "", err
	}
	msg, err := fe.Receive()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%T", msg)[len("*pgproto3."):], nil
}

func escapeLiteral(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(out)
}
