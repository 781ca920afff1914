package extproc

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

func catalogConfig(t *testing.T, upstream, user string, database ...string) func() *policies.Config {
	db := "cat"
	if len(database) > 0 {
		db = database[0]
	}
	t.Helper()
	cfg, err := policies.Load("t.yaml", []byte(fmt.Sprintf(`
server: { xds: 127.0.0.1:18000, authz: 127.0.0.1:9001, extproc: 127.0.0.1:9002, api: 127.0.0.1:8080 }
envoy: { node: t }
identity:
  issuers: [{ issuer: https://idp.example.com, audiences: [sluice] }]
targets:
  - { name: orders-db, kind: postgres, port: 15432, upstream: %q, database: %s, credentials: { user: %s } }
policies:
  - { name: p, targets: [orders-db], principals: { groups: [agents] }, allow: [read] }
`, upstream, db, user)))
	if err != nil {
		t.Fatal(err)
	}
	return func() *policies.Config { return cfg }
}

// expanded lists what a source stands for, as "table.column" strings.
func expanded(r *Relations, src sql.Source) []string {
	var out []string
	for _, s := range r.Expand(src) {
		out = append(out, s.String())
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// TestViewCatalog reads views from a real Postgres and expands sources
// through them: renamed columns, views over views, materialized views,
// schemas, and names the catalog does not hold.
func TestViewCatalog(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase("cat")
	pg.AdminExec(t, "cat",
		"CREATE TABLE customers (id int, name text, email text, profile jsonb)",
		"CREATE VIEW v1 AS SELECT id, email AS contact, upper(name) AS shout FROM customers",
		"CREATE VIEW v2 AS SELECT contact AS c2, id FROM v1",
		"CREATE MATERIALIZED VIEW mv AS SELECT name, profile->>'login' AS login FROM customers",
		"CREATE SCHEMA crm",
		"CREATE VIEW crm.customers AS SELECT profile AS email FROM public.customers",
	)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	vc := &ViewCatalog{Config: catalogConfig(t, fmt.Sprintf("127.0.0.1:%d", pg.Port), pg.User), Now: func() time.Time { return now }}
	ctx := context.Background()
	r := vc.Relations(ctx, "orders-db", []string{"v1", "v2"})
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
	for _, c := range []struct {
		src  sql.Source
		want string
	}{
		{sql.Source{Table: "v1", Column: "contact"}, "public.customers.email v1.contact"},
		{sql.Source{Table: "v1", Column: "shout"}, "public.customers.name v1.shout"},
		{sql.Source{Table: "v2", Column: "c2"}, "public.customers.email public.v1.contact v2.c2"},
		{sql.Source{Table: "V2", Column: "*"}, "V2.* public.customers.email public.customers.id public.v1.contact public.v1.id"},
		{sql.Source{Table: "mv", Column: "login"}, "mv.login public.customers.profile"},
		// A table is itself; a system view is a table.
		{sql.Source{Table: "customers", Column: "email"}, "customers.email public.customers.profile"},
		{sql.Source{Schema: "public", Table: "customers", Column: "email"}, "public.customers.email"},
		{sql.Source{Schema: "crm", Table: "customers", Column: "email"}, "crm.customers.email public.customers.profile"},
		{sql.Source{Table: "pg_stat_activity", Column: "query"}, "pg_stat_activity.query"},
		// A relation the target does not have may be anything.
		{sql.Source{Table: "tmp_copy", Column: "x"}, "? tmp_copy.x"},
		{sql.Source{Schema: "nope", Table: "v1", Column: "contact"}, "? nope.v1.contact"},
		{sql.UnknownSource, "?"},
	} {
		if got := strings.Join(expanded(r, c.src), " "); got != c.want {
			t.Errorf("%s stands for %q, want %q", c.src, got, c.want)
		}
	}

	// A view created after the load: its name reloads the catalog, but
	// not more than once per MinReload.
	pg.AdminExec(t, "cat", "CREATE VIEW v_new AS SELECT email AS e FROM customers")
	if r2 := vc.Relations(ctx, "orders-db", []string{"v_new"}); r2 != r {
		t.Error("an unknown name reloaded within MinReload")
	}
	now = now.Add(2 * time.Second)
	r3 := vc.Relations(ctx, "orders-db", []string{"v_new"})
	if got := strings.Join(expanded(r3, sql.Source{Table: "v_new", Column: "e"}), " "); got != "public.customers.email v_new.e" {
		t.Errorf("new view stands for %q", got)
	}
	if vc.Relations(ctx, "orders-db", []string{"v1"}) != r3 {
		t.Error("a known name reloaded within TTL")
	}
	// Redefined: a DDL through the gateway invalidates what was loaded.
	pg.AdminExec(t, "cat", "CREATE OR REPLACE VIEW v_new AS SELECT name AS e FROM customers")
	vc.Invalidate("orders-db")
	r4 := vc.Relations(ctx, "orders-db", nil)
	if got := strings.Join(expanded(r4, sql.Source{Table: "v_new", Column: "e"}), " "); got != "public.customers.name v_new.e" {
		t.Errorf("redefined view stands for %q", got)
	}
	now = now.Add(31 * time.Second)
	r5 := vc.Relations(ctx, "orders-db", nil)
	if r5 == r4 {
		t.Error("not reloaded after TTL")
	}
	// A reload that points the target at another database reads that one.
	pg.CreateDatabase("cat2")
	vc.Config = catalogConfig(t, fmt.Sprintf("127.0.0.1:%d", pg.Port), pg.User, "cat2")
	r6 := vc.Relations(ctx, "orders-db", nil)
	if r6 == r5 || r6.Err() != nil {
		t.Fatalf("not reloaded after the target changed: %v", r6.Err())
	}
	if got := strings.Join(expanded(r6, sql.Source{Table: "v1", Column: "contact"}), " "); got != "? v1.contact" {
		t.Errorf("v1 of the old database still known: %q", got)
	}
}

// TestViewCatalogUnavailable: a target whose catalog cannot be read makes
// every named source possibly anything (masked), and is retried.
func TestViewCatalogUnavailable(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.CreateDatabase("cat")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	vc := &ViewCatalog{Config: catalogConfig(t, fmt.Sprintf("127.0.0.1:%d", pg.Port), pg.User), Now: func() time.Time { return now },
		Timeout: 2 * time.Second}
	ctx := context.Background()
	pg.Stop()
	r := vc.Relations(ctx, "orders-db", []string{"customers"})
	if r.Err() == nil {
		t.Fatal("loaded from a stopped server")
	}
	if got := strings.Join(expanded(r, sql.Source{Table: "customers", Column: "name"}), " "); got != "? customers.name" {
		t.Errorf("with no catalog, customers.name stands for %q, want it unknown too", got)
	}
	if !maskColumns(sql.New().Analyze("SELECT name FROM customers"), []string{"customers.email"}, r)(0, 0, 1, "name") {
		t.Error("with no catalog, a column a rule could name was not masked")
	}
	if vc.Relations(ctx, "orders-db", nil) != r {
		t.Error("a failed load retried within MinReload")
	}
	// Failures back off: 1 s, then 2 s.
	now = now.Add(1500 * time.Millisecond)
	rFail2 := vc.Relations(ctx, "orders-db", nil)
	if rFail2 == r || rFail2.Err() == nil {
		t.Fatal("not retried after MinReload, or loaded from a stopped server")
	}
	now = now.Add(1500 * time.Millisecond)
	if vc.Relations(ctx, "orders-db", nil) != rFail2 {
		t.Error("the second failure did not back off to 2 s")
	}
	pg.Start()
	pg.AdminExec(t, "cat", "CREATE TABLE customers (name text, email text)")
	now = now.Add(time.Second)
	r2 := vc.Relations(ctx, "orders-db", nil)
	if r2.Err() != nil {
		t.Fatalf("not retried: %v", r2.Err())
	}
	if maskColumns(sql.New().Analyze("SELECT name FROM customers"), []string{"customers.email"}, r2)(0, 0, 1, "name") {
		t.Error("customers.name masked once the catalog loaded")
	}
	if r := vc.Relations(ctx, "no-such-target", nil); r.Err() == nil {
		t.Error("a target not in the config loaded")
	}
}
