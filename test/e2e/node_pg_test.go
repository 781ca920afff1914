package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/test/testenv"
)

// node-postgres (the npm package pg) against the whole Postgres path:
// design.md section 6 asks that drivers other than libpq and pgx be
// checked, node-postgres first, since sluice asks a SCRAM client for its
// password twice. The driver is installed from npm at test time into a
// temporary directory; without node, npm or the registry the test skips.

// nodePolicies: agents read, DDL and admin statements are denied, and the
// customers table's personal columns are masked.
const nodePolicies = `masking:
  - name: pii
    columns: [customers.email, customers.ssn, customers.card, customers.profile]
    detectors: [credit_card, email, us_ssn]
policies:
  - name: node-agents
    targets: [orders-db]
    principals: { groups: [agents] }
    allow: [read]
    deny: [ddl, admin, unknown]
    mask: [pii]
`

// nodeQuery is one query run.js runs; Values, PreparedName and QueryMode
// select node-postgres' extended protocol.
type nodeQuery struct {
	Name         string `json:"name"`
	Text         string `json:"text"`
	Values       []any  `json:"values,omitempty"`
	PreparedName string `json:"preparedName,omitempty"`
	QueryMode    string `json:"queryMode,omitempty"`
}

type nodeSpec struct {
	Connection   nodeConnection   `json:"connection"`
	PasswordFrom *nodeTokenSource `json:"passwordFrom,omitempty"`
	Queries      []nodeQuery      `json:"queries"`
}

type nodeConnection struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	User     string `json:"user"`
	Database string `json:"database"`
	Password string `json:"password,omitempty"`
}

// nodeTokenSource makes run.js pass an async password function that
// fetches a fresh token from the provider, as an agent refreshing its
// token would.
type nodeTokenSource struct {
	TokenURL string `json:"tokenURL"`
	ClientID string `json:"clientID"`
	Secret   string `json:"secret"`
}

type nodeError struct {
	Name, Message, Severity, Code, Detail, Hint string
}

type nodeResult struct {
	Name     string
	Command  string
	RowCount *int
	Fields   []string
	Rows     json.RawMessage
	Error    *nodeError
}

type nodeReport struct {
	Node    string
	PG      string
	Connect struct {
		OK    bool
		Error *nodeError
	}
	PasswordCalls int
	AuthRequests  []string
	Results       []nodeResult
	AsyncErrors   []*nodeError
	Notices       []string
	raw           string
}

func (r *nodeReport) result(t *testing.T, name string) nodeResult {
	t.Helper()
	for _, res := range r.Results {
		if res.Name == name {
			return res
		}
	}
	t.Fatalf("node-postgres ran no query %q:\n%s", name, r.raw)
	return nodeResult{}
}

// nodePG copies testdata/node into a temporary directory and installs
// node-postgres there from npm. It skips the test when node or npm is
// missing or the install fails (no network on the machine).
func nodePG(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("node-postgres check skipped: %s is not installed (%v)", tool, err)
		}
	}
	dir := t.TempDir()
	for _, f := range []string{"package.json", "run.js"} {
		b, err := os.ReadFile(filepath.Join("testdata", "node", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--no-package-lock",
		"--no-progress", "--loglevel=error", "--fetch-retries=1", "pg@8")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "npm_config_update_notifier=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("node-postgres check skipped: npm install pg@8 failed (no registry access?): %v\n%s", err, nodeTail(string(out), 2000))
	}
	return dir
}

func nodeTail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// runNode runs run.js with spec and decodes what node-postgres saw.
func runNode(t *testing.T, dir string, spec nodeSpec) *nodeReport {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(t.TempDir(), "spec.json")
	if err := os.WriteFile(specPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "run.js", specPath)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("node run.js: %v\nstdout: %s\nstderr: %s", err, out.String(), errb.String())
	}
	rep := &nodeReport{raw: out.String()}
	if err := json.Unmarshal(out.Bytes(), rep); err != nil {
		t.Fatalf("node run.js printed %q: %v (stderr %s)", out.String(), err, errb.String())
	}
	if os.Getenv("SLUICE_NODE_REPORT") != "" {
		t.Logf("node-postgres report: %s", out.String())
	}
	return rep
}

// nodeCompact re-encodes JSON without spaces for comparison.
func nodeCompact(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

// nodeQueries are the statements every auth mode runs, in order, on one
// connection.
var nodeQueries = []nodeQuery{
	// Simple protocol: no values.
	{Name: "simple", Text: "SELECT name FROM items ORDER BY id"},
	{Name: "who", Text: "SELECT current_user, current_database()"},
	// Extended protocol: an unnamed statement with a parameter.
	{Name: "extended", Text: "SELECT count(*)::int AS n, current_user AS u, current_database() AS d FROM items WHERE id > $1", Values: []any{0}},
	// A named statement: Parse once, then Bind/Execute only.
	{Name: "named-1", Text: "SELECT name FROM items WHERE id = $1", Values: []any{2}, PreparedName: "item_by_id"},
	{Name: "named-2", Text: "SELECT name FROM items WHERE id = $1", Values: []any{3}, PreparedName: "item_by_id"},
	// Denied in each protocol; the session goes on and nothing ran.
	{Name: "denied-simple", Text: "DROP TABLE items"},
	{Name: "denied-extended", Text: "SELECT pg_terminate_backend($1::int)", Values: []any{12345}},
	{Name: "denied-extended-noparams", Text: "DROP TABLE items", QueryMode: "extended"},
	{Name: "after-denials", Text: "SELECT count(*)::int FROM items"},
	// A denial inside a transaction fails it, as a server error would.
	{Name: "begin", Text: "BEGIN"},
	{Name: "denied-in-tx", Text: "DROP TABLE items"},
	{Name: "in-failed-tx", Text: "SELECT 1"},
	{Name: "rollback", Text: "ROLLBACK"},
	// Masked columns, in text format (node-postgres' only result format),
	// decoded by node-postgres' type parsers (jsonb is JSON.parse'd).
	{Name: "masked-simple", Text: "SELECT id, name, email, ssn, card FROM customers ORDER BY id"},
	{Name: "masked-extended", Text: "SELECT id, name, email, ssn, card, profile FROM customers WHERE id >= $1 ORDER BY id", Values: []any{1}},
	{Name: "masked-lineage", Text: "SELECT lower(c.email) AS contact, row_to_json(c) AS j FROM customers c WHERE c.id = $1", Values: []any{1}},
}

// TestNodePostgres: node-postgres logs in with the token as the password
// in every upstream auth mode, runs simple and extended queries, sees
// sluice's denials with SQLSTATE 42501 and its message, and never sees a
// masked value.
func TestNodePostgres(t *testing.T) {
	dir := nodePG(t)
	p, _ := startPGPathWith(t, pgOptions{policies: nodePolicies, gate: policyGate})
	seedCustomers(t, p)
	port, err := strconv.Atoi(p.port)
	if err != nil {
		t.Fatal(err)
	}
	conn := nodeConnection{Host: "127.0.0.1", Port: port, User: "agent-1", Database: "anything"}
	const ddlDenied = "sluice: ddl is denied on orders-db by policy node-agents"
	const adminDenied = "sluice: admin is denied on orders-db by policy node-agents"

	for _, method := range []string{testenv.AuthSCRAM, testenv.AuthPassword, testenv.AuthMD5, testenv.AuthTrust} {
		t.Run(method, func(t *testing.T) {
			p.pg.SetAuth(t, "app", p.upPass, method)
			c := conn
			c.Password = p.token("agent-1")
			rep := runNode(t, dir, nodeSpec{Connection: c, Queries: nodeQueries})
			t.Logf("node %s, pg %s", rep.Node, rep.PG)
			if !rep.Connect.OK {
				t.Fatalf("node-postgres login with upstream %s failed: %+v", method, rep.Connect.Error)
			}
			if len(rep.AsyncErrors) > 0 {
				t.Errorf("node-postgres client errors: %+v", rep.AsyncErrors)
			}
			// Whatever the target uses, the client is asked for its
			// password in clear: twice for SCRAM (design.md section 6).
			wantAsks := []string{"authenticationCleartextPassword"}
			if method == testenv.AuthSCRAM {
				wantAsks = append(wantAsks, "authenticationCleartextPassword")
			}
			if !slices.Equal(rep.AuthRequests, wantAsks) {
				t.Errorf("node-postgres answered %v, want %v", rep.AuthRequests, wantAsks)
			}

			wantRows := map[string]string{
				"simple":          `[["anvil"],["rocket skates"],["bird seed"]]`,
				"who":             `[["app","orders"]]`,
				"extended":        `[[3,"app","orders"]]`,
				"named-1":         `[["rocket skates"]]`,
				"named-2":         `[["bird seed"]]`,
				"after-denials":   `[[3]]`,
				"begin":           `[]`,
				"rollback":        `[]`,
				"masked-simple":   "",
				"masked-extended": "",
				"masked-lineage":  "",
			}
			for name, want := range wantRows {
				res := rep.result(t, name)
				if res.Error != nil {
					t.Errorf("%s: node-postgres got error %+v", name, *res.Error)
					continue
				}
				if want != "" && nodeCompact(res.Rows) != want {
					t.Errorf("%s: rows %s, want %s", name, nodeCompact(res.Rows), want)
				}
			}

			denials := map[string][2]string{
				"denied-simple":            {"42501", ddlDenied},
				"denied-extended":          {"42501", adminDenied},
				"denied-extended-noparams": {"42501", ddlDenied},
				"denied-in-tx":             {"42501", ddlDenied},
				"in-failed-tx":             {"25P02", "current transaction is aborted, commands ignored until end of transaction block"},
			}
			for name, want := range denials {
				res := rep.result(t, name)
				if res.Error == nil {
					t.Errorf("%s: ran (rows %s), want %s %q", name, nodeCompact(res.Rows), want[0], want[1])
					continue
				}
				if res.Error.Code != want[0] || res.Error.Message != want[1] || res.Error.Severity != "ERROR" {
					t.Errorf("%s: got %s %s %q, want ERROR %s %q", name, res.Error.Severity, res.Error.Code, res.Error.Message, want[0], want[1])
				}
			}

			for _, name := range []string{"masked-simple", "masked-extended", "masked-lineage"} {
				res := rep.result(t, name)
				leaks(t, "node-postgres "+name, string(res.Rows))
				if res.RowCount == nil {
					t.Errorf("%s: no row count", name)
				}
			}
			for _, name := range []string{"masked-simple", "masked-extended"} {
				res := rep.result(t, name)
				if !strings.Contains(string(res.Rows), `"Alice"`) || !strings.Contains(string(res.Rows), `"Bob"`) {
					t.Errorf("%s: the unmasked name column was lost: %s", name, res.Rows)
				}
				if want := []string{"id", "name", "email", "ssn", "card"}; !slices.Equal(res.Fields[:5], want) {
					t.Errorf("%s: fields %v, want %v first", name, res.Fields, want)
				}
			}

			// A refused token: node-postgres shows the agent sluice's reason.
			c.Password = "not-a-token"
			bad := runNode(t, dir, nodeSpec{Connection: c})
			if bad.Connect.OK {
				t.Fatalf("login with a bad token succeeded")
			}
			if e := bad.Connect.Error; e == nil || e.Severity != "FATAL" || e.Code != "28P01" || !strings.HasPrefix(e.Message, "sluice: ") || !strings.Contains(e.Message, "not a JWT") {
				t.Errorf("bad token: node-postgres saw %+v, want FATAL 28P01 sluice: ... not a JWT", e)
			}

			p.quiesce()
			var seqs []string
			for _, seq := range sessions(p.audit.take()) {
				seqs = append(seqs, seq)
			}
			slices.Sort(seqs)
			if want := []string{"session.start authn:allow session.end", "session.start authn:deny session.end"}; !slices.Equal(seqs, want) {
				t.Errorf("audit sessions %q, want %q", seqs, want)
			}
			p.sim.RequireNoViolations(t)
		})
	}

	// The password as an async function that fetches a fresh token, as an
	// agent refreshing its token would write it. node-postgres calls it
	// once per connection and keeps the string, so SCRAM's second request
	// gets the same token and the login works.
	t.Run("scram-sha-256-password-function", func(t *testing.T) {
		p.pg.SetAuth(t, "app", p.upPass, testenv.AuthSCRAM)
		rep := runNode(t, dir, nodeSpec{Connection: conn,
			PasswordFrom: &nodeTokenSource{TokenURL: p.idp.Issuer + "/oauth/token", ClientID: "agent-1", Secret: "s1"},
			Queries:      []nodeQuery{{Name: "extended", Text: "SELECT name FROM items WHERE id = $1", Values: []any{1}}}})
		if !rep.Connect.OK {
			t.Fatalf("login with a password function failed: %+v", rep.Connect.Error)
		}
		if rep.PasswordCalls != 1 || len(rep.AuthRequests) != 2 {
			t.Errorf("node-postgres called the password function %d times for %v, want once for two requests", rep.PasswordCalls, rep.AuthRequests)
		}
		if res := rep.result(t, "extended"); res.Error != nil || nodeCompact(res.Rows) != `[["anvil"]]` {
			t.Errorf("query: rows %s, error %+v", res.Rows, res.Error)
		}
		p.quiesce()
		p.audit.take()
		p.sim.RequireNoViolations(t)
	})
}
