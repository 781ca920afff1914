package extproc

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
)

// nopSink accepts every event at once: the benchmarks measure the gate's
// CPU, not the audit store's commit wait (audit's own benchmarks do).
type nopSink struct{}

func (nopSink) Append(context.Context, audit.Event) error { return nil }

// noGrants is a grant store with none, as the cache answers most checks.
type noGrants struct{}

func (noGrants) Active(context.Context, policies.Principal, string, time.Time) ([]policies.Grant, error) {
	return nil, nil
}
func (noGrants) RequestApproval(context.Context, authz.ApprovalRequest) (string, error) {
	return "", nil
}

func benchGate(b *testing.B, policy string) *PolicyGate {
	b.Helper()
	cfg, err := policies.Load("t.yaml", []byte(testConfig[:len(testConfig)-len("policies:\n  - { name: p, targets: [orders-db], principals: { groups: [agents] }, allow: [read] }\n")]+policy))
	if err != nil {
		b.Fatal(err)
	}
	return &PolicyGate{Analyzer: sql.New(), Config: func() *policies.Config { return cfg }, Grants: noGrants{}, Audit: nopSink{}, Now: time.Now}
}

const benchPolicy = "policies:\n  - { name: p, targets: [orders-db], principals: { groups: [agents] }, allow: [read] }\n"

const benchMaskPolicy = `policies:
  - { name: p, targets: [orders-db], principals: { groups: [agents] }, allow: [read], mask: [pii], max_rows: 1000 }
masking:
  - { name: pii, columns: [customers.email, customers.ssn], detectors: [email, credit_card] }
`

// BenchmarkPolicyGate is the decision's share of one simple Query
// (design.md section 10, ≤ 25 µs with the session's share): SQL analysis,
// the grant lookup, the decision, the audit event built and appended (to a
// sink that returns at once), and the result plan when masking applies.
// "hit" repeats one text (the analyser's cache answers); "miss" sends a
// new literal every time.
func BenchmarkPolicyGate(b *testing.B) {
	p := policies.Principal{Issuer: "https://idp.example.com", Subject: "agent-1", Groups: []string{"agents"}}
	// hit repeats one text; constants changes the constant each time (the
	// analysis comes from the shape cache); miss changes an alias, so every
	// statement is new to both caches and is parsed.
	for _, c := range []struct {
		name, policy string
		vary         string
	}{{"hit", benchPolicy, ""}, {"constants", benchPolicy, "constants"}, {"miss", benchPolicy, "miss"},
		{"hit-masked", benchMaskPolicy, ""}, {"constants-masked", benchMaskPolicy, "constants"}, {"miss-masked", benchMaskPolicy, "miss"}} {
		b.Run(c.name, func(b *testing.B) {
			g := benchGate(b, c.policy)
			ctx := context.Background()
			st := postgres.Statement{Protocol: postgres.ProtocolSimple, Principal: p, Target: "orders-db", Memory: &postgres.Memory{},
				SQL: "SELECT id, email, status FROM customers WHERE id = 42"}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				switch c.vary {
				case "constants":
					st.SQL = "SELECT id, email, status FROM customers WHERE id = " + strconv.Itoa(i)
				case "miss":
					st.SQL = "SELECT id, email, status AS s" + strconv.Itoa(i) + " FROM customers WHERE id = 42"
				}
				if v := g.Decide(ctx, st); !v.Allowed() {
					b.Fatalf("denied: %s", v.Reason)
				}
			}
		})
	}
}
