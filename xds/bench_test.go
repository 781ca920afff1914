package xds

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/policies"
)

// manyTargets is a config of n targets: half Postgres (every tenth on a
// host name), half HTTP (every other one https to a host name), under two
// policies, one of which waits for approvals.
func manyTargets(t testing.TB, n int) *policies.Config {
	t.Helper()
	var b strings.Builder
	b.WriteString(`
envoy: { node: edge }
identity:
  issuers: [{ issuer: https://idp.sluice.test, audiences: [sluice] }]
approvers: { groups: [dba-oncall] }
targets:
`)
	var pg, web []string
	for i := range n {
		name := fmt.Sprintf("t%04d", i)
		if i%2 == 0 {
			pg = append(pg, name)
			host := fmt.Sprintf("10.%d.%d.%d", i/65536%256, i/256%256, i%256)
			if i%10 == 0 {
				host = name + ".db.internal"
			}
			fmt.Fprintf(&b, "  - { name: %s, kind: postgres, port: %d, upstream: \"%s:5432\", database: app, credentials: { user: app, password_env: PW } }\n",
				name, 20000+i, host)
		} else {
			web = append(web, name)
			up := fmt.Sprintf("http://10.1.%d.%d:8080", i/256%256, i%256)
			if i%4 == 1 {
				up = "https://" + name + ".api.example.com"
			}
			fmt.Fprintf(&b, "  - { name: %s, kind: http, port: %d, upstream: \"%s\", credentials: { bearer_env: TOKEN } }\n",
				name, 20000+i, up)
		}
	}
	fmt.Fprintf(&b, `policies:
  - { name: dbs, targets: [%s], principals: { groups: [agents] }, allow: [read], require_grant: [write], wait: 2m }
  - { name: apis, targets: [%s], principals: { groups: [agents] }, allow: [read] }
`, strings.Join(pg, ", "), strings.Join(web, ", "))
	cfg, err := policies.Load("many.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestThousandTargets: 1,000 targets translate, validate and build a
// consistent snapshot (the benchmark below measures how fast).
func TestThousandTargets(t *testing.T) {
	cfg := manyTargets(t, 1000)
	res, _, err := Build(cfg, "v1")
	if err != nil {
		t.Fatal(err)
	}
	// 1,000 targets + sluice_authz + sluice_extproc; one route per HTTP target.
	if len(res.Listeners) != 1000 || len(res.Clusters) != 1002 || len(res.Routes) != 500 {
		t.Errorf("%d listeners, %d clusters, %d routes", len(res.Listeners), len(res.Clusters), len(res.Routes))
	}
}

// BenchmarkTranslate1000Targets measures design.md section 10's xDS budget
// (1,000 targets translated and validated in ≤ 1 s): translation, full
// validation (every Any unpacked), snapshot construction and Consistent.
func BenchmarkTranslate1000Targets(b *testing.B) {
	cfg := manyTargets(b, 1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Build(cfg, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdate1000Targets is Server.Update end to end (translate,
// validate, hash, snapshot, publish) with a change every time, so every
// iteration publishes a new version.
func BenchmarkUpdate1000Targets(b *testing.B) {
	cfg := manyTargets(b, 1000)
	s, err := NewServer(Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		cfg.Targets[0].Port = 60000 + i%5000
		if err := s.Update(cfg); err != nil {
			b.Fatal(err)
		}
	}
}
