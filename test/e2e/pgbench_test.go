package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/extproc"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// pgbenchPolicies lets the agent read and write, which is all pgbench's
// built-in -S and -N scripts need (BEGIN/END, SELECT, UPDATE, INSERT).
const pgbenchPolicies = `policies:
  - { name: agents-bench, targets: [orders-db], principals: { groups: [agents] }, allow: [read, write] }
`

// pgbenchPolicyGate is the gate serve uses, over the running config,
// grants and sink.
func pgbenchPolicyGate(cfg *policies.Config, g authz.GrantStore, sink audit.Sink) postgres.Gate {
	return &extproc.PolicyGate{Analyzer: sql.New(), Config: func() *policies.Config { return cfg },
		Grants: g, Audit: sink, Now: time.Now}
}

// TestPostgresPgbench runs the real pgbench through the whole path with
// the policy gate: the built-in select-only (-S) and simple-update (-N)
// scripts, each in the simple, extended and prepared query modes. Every
// run ends with exit status 0, transactions processed and none failed;
// every statement is decided, allowed and recorded; envoysim sees no
// contract violation.
func TestPostgresPgbench(t *testing.T) {
	p, _ := startPGPathWith(t, pgOptions{policies: pgbenchPolicies, gate: pgbenchPolicyGate})
	initPgbench(t, p.pg)
	tok := p.token("agent-1")
	const clients, seconds = 2, 2
	sessionsBefore := pgbenchCountKind(p.audit, audit.KindSessionStart)
	runs := 0
	for _, mode := range []string{"simple", "extended", "prepared"} {
		for _, s := range pgbenchScripts {
			t.Run(mode+"/"+s.name, func(t *testing.T) {
				before := pgbenchDecisions(p.audit)
				res, err := runPgbench(pgbenchTarget{port: p.port, user: "agent-1", db: "anything", password: tok},
					s.flag, "-M", mode, "-c", strconv.Itoa(clients), "-j", "1", "-T", strconv.Itoa(seconds))
				runs++
				if err != nil {
					t.Fatalf("pgbench %s -M %s through the gateway: %v\n%s", s.flag, mode, err, res.output)
				}
				if res.processed <= 0 || res.failed != 0 {
					t.Fatalf("pgbench %s -M %s: %d processed, %d failed\n%s", s.flag, mode, res.processed, res.failed, res.output)
				}
				after := pgbenchDecisions(p.audit)
				allowed := after["allow"] - before["allow"]
				for d, n := range after {
					if d != "allow" && n != before[d] {
						t.Errorf("%d statements decided %q during the run, want none", n-before[d], d)
					}
				}
				// The gate decides and records every statement run: each
				// Query, and each Execute of a prepared statement (a Parse
				// runs nothing and is not recorded when allowed). Prepared
				// mode parses each command once per client and then only
				// binds and executes: each run is recorded all the same.
				want := res.processed * int64(s.statements)
				if allowed < want {
					t.Errorf("%d allowed statements recorded, want at least %d (%d transactions of %d statements)",
						allowed, want, res.processed, s.statements)
				}
				t.Logf("%s -M %s: %d transactions, tps %.0f, latency avg %.3f ms, %d statements recorded",
					s.flag, mode, res.processed, res.tps, res.latencyMs, allowed)
			})
		}
	}
	p.quiesce()
	p.sim.RequireNoViolations(t)
	// Every connection pgbench opened (its clients, plus one to read the
	// scale) logged in with the token and was recorded start to end.
	if got, want := pgbenchCountKind(p.audit, audit.KindSessionStart)-sessionsBefore, runs*(clients+1); got < want {
		t.Errorf("%d sessions recorded, want at least %d", got, want)
	}
	p.audit.mu.Lock()
	defer p.audit.mu.Unlock()
	update := false
	for _, e := range p.audit.events {
		if e.Kind == audit.KindAuthn && e.Decision != "allow" {
			t.Errorf("authentication %s: %s", e.Decision, e.Reason)
		}
		// A statement's record names what it ran and what it touched.
		if e.Kind == audit.KindStatement && strings.HasPrefix(e.Request, "UPDATE pgbench_accounts") && slices.Contains(e.Tables, "pgbench_accounts:update") &&
			slices.Contains(e.Classes, policies.ClassWrite) && e.Principal.Subject != "" {
			update = true
		}
	}
	if !update {
		t.Error("no statement record of -N's UPDATE pgbench_accounts with its table, class and principal")
	}
}

// pgbenchScripts are pgbench's built-in scripts this file runs, with the
// statements one transaction sends.
var pgbenchScripts = []struct {
	name, flag string
	statements int
}{
	{"select-only", "-S", 1},   // SELECT
	{"simple-update", "-N", 5}, // BEGIN, UPDATE, SELECT, INSERT, END
}

func pgbenchCountKind(r *recordingSink, k audit.Kind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.Kind == k {
			n++
		}
	}
	return n
}

// pgbenchDecisions counts the statement events recorded so far by
// decision.
func pgbenchDecisions(r *recordingSink) map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int64{}
	for _, e := range r.events {
		if e.Kind == audit.KindStatement {
			out[e.Decision]++
		}
	}
	return out
}

// initPgbench creates pgbench's tables at scale 1 directly, as the
// superuser, and lets the target role (app) run the built-in scripts.
func initPgbench(t testing.TB, pg *testenv.Postgres) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", pg.User, "orders")
	cmd.Env = pgbenchEnv("")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	pg.AdminExec(t, "orders",
		"GRANT SELECT, INSERT, UPDATE ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO app",
		// -n skips pgbench's own VACUUM (the agent may not run it); do
		// it here so every path starts from the same state.
		"VACUUM ANALYZE")
}

// pgbenchTarget is where pgbench connects.
type pgbenchTarget struct {
	port, user, db, password string
}

type pgbenchResult struct {
	processed, failed int64
	tps, latencyMs    float64
	connectMs         float64 // initial connection time, when pgbench reports it
	// cpu is pgbench's own user+system time.
	cpu    time.Duration
	output string
}

var (
	pgbenchReProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	pgbenchReFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	pgbenchReLatency   = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	pgbenchReTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	pgbenchReConnect   = regexp.MustCompile(`(?m)^initial connection time = ([0-9.]+) ms`)
)

// runPgbench runs pgbench -n (no vacuum: the agent may not) against
// target with args, bounded by a deadline well past any -T it is given.
// A non-zero exit is an error; the output is returned either way.
func runPgbench(target pgbenchTarget, args ...string) (pgbenchResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := append([]string{"-n", "-h", "127.0.0.1", "-p", target.port, "-U", target.user}, args...)
	all = append(all, target.db)
	cmd := exec.CommandContext(ctx, "pgbench", all...)
	cmd.Env = pgbenchEnv(target.password)
	out, err := cmd.CombinedOutput()
	res := pgbenchResult{output: string(out)}
	if cmd.ProcessState != nil {
		res.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = errors.New("pgbench did not finish within 2 minutes")
		}
		return res, err
	}
	num := func(re *regexp.Regexp) (string, bool) {
		m := re.FindStringSubmatch(res.output)
		if m == nil {
			return "", false
		}
		return m[1], true
	}
	var missing []string
	if s, ok := num(pgbenchReProcessed); ok {
		res.processed, _ = strconv.ParseInt(s, 10, 64)
	} else {
		missing = append(missing, "transactions processed")
	}
	if s, ok := num(pgbenchReFailed); ok {
		res.failed, _ = strconv.ParseInt(s, 10, 64)
	} else {
		missing = append(missing, "failed transactions")
	}
	if s, ok := num(pgbenchReLatency); ok {
		res.latencyMs, _ = strconv.ParseFloat(s, 64)
	} else {
		missing = append(missing, "latency average")
	}
	if s, ok := num(pgbenchReTPS); ok {
		res.tps, _ = strconv.ParseFloat(s, 64)
	} else {
		missing = append(missing, "tps")
	}
	if s, ok := num(pgbenchReConnect); ok {
		res.connectMs, _ = strconv.ParseFloat(s, 64)
	}
	if len(missing) > 0 {
		return res, fmt.Errorf("pgbench output lacks %s", strings.Join(missing, ", "))
	}
	return res, nil
}

// pgbenchEnv is the environment for libpq: the password, and neither TLS
// nor GSS encryption, so that every byte is plain on loopback (sluice must
// read them; the direct path is measured the same way).
func pgbenchEnv(password string) []string {
	env := append(os.Environ(), "PGSSLMODE=disable", "PGGSSENCMODE=disable", "PGCONNECT_TIMEOUT=10", "PGAPPNAME=pgbench")
	if password != "" {
		env = append(env, "PGPASSWORD="+password)
	}
	return env
}
