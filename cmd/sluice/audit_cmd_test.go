package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

const auditTestConfig = `
audit:
  store: sqlite://audit.db
  signing_key_file: audit.key
  checkpoint_every: 5
auditors:
  groups: [security]
identity:
  issuers: [{ issuer: https://idp.example.com, audiences: [sluice] }]
targets:
  - name: orders-db
    kind: postgres
    port: 15432
    upstream: 127.0.0.1:5432
    database: orders
    credentials: { user: app, password_env: APP_PW }
policies:
  - { name: p, targets: [orders-db], principals: { groups: [agents] }, allow: [read] }
`

// auditFixture writes a config, a key made by "sluice audit keygen" and a
// trail of events at 02:00–02:12 UTC, and returns the config's path.
func auditFixture(t *testing.T) (cfgPath string, cfg *policies.Config) {
	dir := t.TempDir()
	cfgPath = filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(cfgPath, []byte(auditTestConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := auditCmd(context.Background(), []string{"keygen", "--out", filepath.Join(dir, "audit.key")}, &out, os.Stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "BEGIN PUBLIC KEY") {
		t.Errorf("keygen printed %q", out.String())
	}
	if err := auditCmd(context.Background(), []string{"keygen", "--out", filepath.Join(dir, "audit.key")}, &out, os.Stderr); err == nil {
		t.Error("keygen overwrote an existing key")
	}
	cfg, err := policies.LoadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := audit.OpenConfig(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2025, 3, 1, 1, 58, 0, 0, time.UTC)
	for i, e := range []struct{ who, target, sql string }{
		{"agent-a", "orders-db", "SELECT 1"},                    // 01:58 — before the window
		{"agent-a", "orders-db", "SELECT email FROM customers"}, // 02:01
		{"agent-b", "billing-db", "SELECT 2"},                   // 02:04
		{"agent-c", "orders-db", "SELECT * FROM orders"},        // 02:07
		{"agent-a", "orders-db", "SELECT 3"},                    // 02:10 — until is exclusive
	} {
		ev := audit.Event{Time: t0.Add(time.Duration(i)*3*time.Minute + 0), Kind: audit.KindStatement,
			Principal: policies.Principal{Subject: e.who}, Target: e.target, Request: e.sql, Decision: "allow",
			Classes: []policies.OperationClass{policies.ClassRead}, Tables: []string{"orders"}, Rows: int64(i)}
		if err := s.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return cfgPath, cfg
}

func TestAuditQueryAndVerify(t *testing.T) {
	cfgPath, _ := auditFixture(t)
	ctx := context.Background()
	var out, errOut bytes.Buffer

	// "Which agent touched orders-db between 02:00 and 02:10 UTC, and what
	// did it read?" is one command.
	window := []string{"query", "--config", cfgPath, "--target", "orders-db", "--since", "2025-03-01T02:00:00Z", "--until", "2025-03-01 02:10"}
	if err := auditCmd(ctx, window, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	table := out.String()
	if !strings.Contains(table, "agent-c") || !strings.Contains(table, "SELECT * FROM orders") || !strings.Contains(table, "SELECT email FROM customers") ||
		strings.Contains(table, "SELECT 1") || strings.Contains(table, "SELECT 3") || strings.Contains(table, "billing-db") {
		t.Errorf("table:\n%s", table)
	}
	if strings.Index(table, "agent-c") > strings.Index(table, "agent-a") {
		t.Errorf("not newest first:\n%s", table)
	}

	out.Reset()
	if err := auditCmd(ctx, append(window, "-o", "json"), &out, &errOut); err != nil {
		t.Fatal(err)
	}
	var recs []audit.Record
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("json line %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	if len(recs) != 2 || recs[0].Principal.Subject != "agent-c" || recs[1].Request != "SELECT email FROM customers" {
		t.Errorf("json records: %+v", recs)
	}

	out.Reset()
	if err := auditCmd(ctx, []string{"verify", "--config", cfgPath}, &out, &errOut); err != nil {
		t.Fatalf("verify: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "verified: 1 chains") {
		t.Errorf("verify printed:\n%s", out.String())
	}

	// An edited row is named precisely.
	db, err := sql.Open("sqlite", filepath.Join(filepath.Dir(cfgPath), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("UPDATE audit_events SET body = replace(body, 'SELECT 2', 'SELECT 9') WHERE seq = 3"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	out.Reset()
	err = auditCmd(ctx, []string{"verify", "--config", cfgPath}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "event seq 3 altered (hash mismatch)") || !strings.Contains(out.String(), "PROBLEM") {
		t.Errorf("verify after an edit: %v\n%s", err, out.String())
	}
}

func TestAuditQueryThroughAPI(t *testing.T) {
	cfgPath, cfg := auditFixture(t)
	ctx := context.Background()
	s, err := audit.OpenConfig(ctx, cfg, nil, audit.ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv := httptest.NewServer(audit.NewQueryAPI(audit.QueryAPIOptions{Store: s,
		Authenticate: func(r *http.Request) (policies.Principal, error) {
			if r.Header.Get("Authorization") != "Bearer auditor-token" {
				return policies.Principal{}, errors.New("bad token")
			}
			return policies.Principal{Subject: "alice", Groups: []string{"security"}}, nil
		},
		AuditorGroups: func() []string { return cfg.Auditors.Groups },
	}))
	defer srv.Close()
	_ = cfgPath

	t.Setenv("SLUICE_TOKEN", "auditor-token")
	var out, errOut bytes.Buffer
	args := []string{"query", "--api", srv.URL, "--principal", "agent-a", "--limit", "1", "--all", "-o", "json"}
	if err := auditCmd(ctx, args, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	if n := strings.Count(out.String(), "\n"); n != 3 {
		t.Errorf("agent-a through the API, every page: %d lines, want 3:\n%s", n, out.String())
	}
	t.Setenv("SLUICE_TOKEN", "wrong")
	if err := auditCmd(ctx, args, &out, &errOut); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("bad token: %v", err)
	}
}

// TestAuditQueryBadInput: a bad flag is a usage error naming the flag,
// before any store or API is asked.
func TestAuditQueryBadInput(t *testing.T) {
	cfgPath, _ := auditFixture(t)
	ctx := context.Background()
	t.Setenv("SLUICE_API", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--since", "yesterday"}, "audit query: --since: expected an RFC 3339 time"},
		{[]string{"--until", "3000-01-01T00:00:00Z"}, "audit query: --until: 3000-01-01T00:00:00Z is outside the times the store can represent"},
		{[]string{"--since", "2025-03-01T02:10Z", "--until", "2025-03-01T02:00Z"}, "audit query: --until: 2025-03-01T02:00:00Z is not after since"},
		{[]string{"--output", "yaml"}, "audit query: --output: expected table or json"},
		{[]string{"--limit", "0"}, "audit query: --limit: expected 1 to 1000, got 0"},
		{[]string{"--limit", "5000"}, "audit query: --limit: expected 1 to 1000, got 5000"},
		{[]string{"--limit", "many"}, `invalid value "many" for flag -limit`},
		{[]string{"--kind", "statment"}, `audit query: --kind: unknown kind "statment"`},
		{[]string{"--class", "reads"}, "audit query: --class: unknown operation class"},
		{[]string{"--decision", "allowed"}, `audit query: --decision: unknown decision "allowed"`},
		{[]string{"--cursor", "!!"}, "audit query: --cursor: invalid cursor"},
		{[]string{"--api", "http://127.0.0.1:1"}, "give --config or --api, not both"},
	} {
		var out, errOut bytes.Buffer
		err := auditCmd(ctx, append([]string{"query", "--config", cfgPath}, c.args...), &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
		if out.Len() != 0 {
			t.Errorf("%v printed %q", c.args, out.String())
		}
	}
	// SLUICE_API in the environment does not conflict with --config.
	t.Setenv("SLUICE_API", "http://127.0.0.1:1")
	var out, errOut bytes.Buffer
	if err := auditCmd(ctx, []string{"query", "--config", cfgPath, "--since", "2025-03-01T02:00Z"}, &out, &errOut); err != nil {
		t.Errorf("--config with SLUICE_API set: %v", err)
	}
	if !strings.Contains(out.String(), "SELECT 3") || strings.Contains(out.String(), "SELECT 1\n") {
		t.Errorf("--since 2025-03-01T02:00Z:\n%s", out.String())
	}
	// Through the API, a bad flag fails before the request (no token needed).
	t.Setenv("SLUICE_TOKEN", "")
	err := auditCmd(ctx, []string{"query", "--api", "http://127.0.0.1:1", "--limit", "0"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "--limit") {
		t.Errorf("--api with --limit 0: %v", err)
	}
}

// TestAuditQueryShowsSkipped: an event the store cannot decode is named
// on stderr; the others are listed.
func TestAuditQueryShowsSkipped(t *testing.T) {
	cfgPath, _ := auditFixture(t)
	db, err := sql.Open("sqlite", filepath.Join(filepath.Dir(cfgPath), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE audit_events SET body = replace(body, '{"v":1,', '{"v":2,') WHERE seq = 3`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	var out, errOut bytes.Buffer
	if err := auditCmd(context.Background(), []string{"query", "--config", cfgPath}, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	if !strings.Contains(errOut.String(), "skipped: chain") || !strings.Contains(errOut.String(), "event seq 3: cannot decode") ||
		strings.Count(out.String(), "\n") != 5 {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	}
}
