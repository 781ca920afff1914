package compose

import (
	"context"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/sluicehq/sluice/policies"
)

// load reads docker-compose.yaml the way `docker compose` does, with an
// empty environment so that only the file's own defaults apply, and the
// sluice config it runs.
func load(t *testing.T) *env {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yaml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnv(nil),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := cli.ProjectFromOptions(context.Background(), opts)
	if err != nil {
		t.Fatalf("docker-compose.yaml does not load: %v", err)
	}
	cfgPath := filepath.Join(root, "policies", "examples", "compose.yaml")
	cfg, err := policies.LoadFile(cfgPath)
	if err != nil {
		t.Fatalf("the compose config does not load: %v", err)
	}
	return &env{root: root, cfgPath: cfgPath, cfg: cfg, p: p}
}

func TestComposeAgreesWithConfig(t *testing.T) {
	e := load(t)
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if err := c.fn(e); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestComposeServices(t *testing.T) {
	e := load(t)
	want := []string{"envoy", "httpbin", "idp", "postgres", "redis", "sluice"}
	if got := e.p.ServiceNames(); !slices.Equal(got, want) {
		t.Errorf("services = %v, want %v", got, want)
	}
	if img := e.p.Services["envoy"].Image; !strings.HasPrefix(img, "envoyproxy/envoy-contrib:") {
		t.Errorf("envoy image = %q: postgres_proxy is a contrib filter, so it must be envoyproxy/envoy-contrib", img)
	}
	if b := e.p.Services["sluice"].Build; b == nil || b.Context != e.root {
		t.Errorf("sluice build = %+v, want the repository's Dockerfile", b)
	}
}

// edit changes one service of the loaded project in place.
func edit(e *env, name string, f func(*types.ServiceConfig)) {
	s := e.p.Services[name]
	f(&s)
	e.p.Services[name] = s
}

func dropPort(port uint32) func(*types.ServiceConfig) {
	return func(s *types.ServiceConfig) {
		s.Ports = slices.DeleteFunc(s.Ports, func(p types.ServicePortConfig) bool { return p.Target == port })
	}
}

func setEnv(key, value string) func(*types.ServiceConfig) {
	return func(s *types.ServiceConfig) {
		s.Environment = maps.Clone(s.Environment)
		if value == "<unset>" {
			delete(s.Environment, key)
			return
		}
		s.Environment[key] = &value
	}
}

func volumeSource(target, source string) func(*types.ServiceConfig) {
	return func(s *types.ServiceConfig) {
		s.Volumes = slices.Clone(s.Volumes)
		for i := range s.Volumes {
			if s.Volumes[i].Target == target {
				s.Volumes[i].Source = source
			}
		}
	}
}

// TestChecksCatch breaks the project or the config one way at a time and
// requires the check responsible for it to fail, naming the problem.
func TestChecksCatch(t *testing.T) {
	for _, tc := range []struct {
		name   string
		check  string
		break_ func(*env)
		want   string
	}{
		{"postgres target port unpublished", "target ports published",
			func(e *env) { edit(e, "envoy", dropPort(15432)) }, "port 15432"},
		{"http target port unpublished", "target ports published",
			func(e *env) { edit(e, "envoy", dropPort(18080)) }, "target httpbin"},
		{"admin unpublished", "envoy admin published",
			func(e *env) { edit(e, "envoy", dropPort(9901)) }, "admin port 9901"},
		{"envoy reads another bootstrap path", "envoy bootstrap mounted",
			func(e *env) {
				edit(e, "envoy", func(s *types.ServiceConfig) { s.Command = []string{"envoy", "-c", "/etc/envoy/envoy.yaml"} })
			}, "no bind mount"},
		{"envoy mounts another file", "envoy bootstrap mounted",
			func(e *env) {
				edit(e, "envoy", volumeSource("/etc/envoy/bootstrap.yaml", filepath.Join(e.root, "envoy", "other.yaml")))
			}, "other.yaml"},
		{"sluice without --config", "sluice config mounted",
			func(e *env) {
				edit(e, "sluice", func(s *types.ServiceConfig) { s.Command = []string{"sluice", "serve"} })
			}, "without --config"},
		{"sluice mounts the demo config", "sluice config mounted",
			func(e *env) {
				edit(e, "sluice", volumeSource("/etc/sluice/config.yaml", filepath.Join(e.root, "policies", "examples", "demo.yaml")))
			}, "demo.yaml"},
		{"redis service missing", "named hosts are services",
			func(e *env) { delete(e.p.Services, "redis") }, `grants.store names host "redis"`},
		{"sluice host not a service", "named hosts are services",
			func(e *env) { e.cfg.Envoy.SluiceHost = "control-plane" }, `"control-plane"`},
		{"postgres upstream renamed", "named hosts are services",
			func(e *env) { e.cfg.Targets[0].Upstream = "db:5432" }, `"db"`},
		{"password env missing", "secrets and files provided",
			func(e *env) { edit(e, "sluice", setEnv("ORDERS_DB_PASSWORD", "<unset>")) }, "ORDERS_DB_PASSWORD"},
		{"bearer env empty", "secrets and files provided",
			func(e *env) { edit(e, "sluice", setEnv("HTTPBIN_TOKEN", "")) }, "HTTPBIN_TOKEN"},
		{"secret file not mounted", "secrets and files provided",
			func(e *env) { e.cfg.Audit.SigningKeyFile = "/etc/sluice/audit.key" }, "audit.signing_key_file"},
		{"audit database not on a volume", "secrets and files provided",
			func(e *env) { e.cfg.Audit.Store = "sqlite:///tmp/audit.db" }, "not on a volume"},
		{"seed password differs", "postgres seeded",
			func(e *env) { edit(e, "postgres", setEnv("ORDERS_DB_PASSWORD", "something-else")) }, "ORDERS_DB_PASSWORD differs"},
		{"seeded database differs", "postgres seeded",
			func(e *env) { edit(e, "postgres", setEnv("POSTGRES_DB", "shop")) }, `"shop"`},
		{"seed not mounted", "postgres seeded",
			func(e *env) {
				edit(e, "postgres", volumeSource("/docker-entrypoint-initdb.d/10-seed.sql", "/elsewhere.sql"))
			}, "seed.sql"},
		{"idp port unpublished", "idp issues what sluice accepts",
			func(e *env) { edit(e, "idp", dropPort(8443)) }, "does not publish 8443"},
		{"issuer port differs", "idp issues what sluice accepts",
			func(e *env) { e.cfg.Identity.Issuers[0].Issuer = "https://idp:9443/default" }, "SERVER_PORT"},
		{"issuer id differs", "idp issues what sluice accepts",
			func(e *env) { e.cfg.Identity.Issuers[0].Issuer = "https://idp:8443/other" }, `issuer id "other"`},
		{"audience differs", "idp issues what sluice accepts",
			func(e *env) { e.cfg.Identity.Issuers[0].Audiences = []string{"not-sluice"} }, "aud"},
		{"groups claim differs", "idp issues what sluice accepts",
			func(e *env) { e.cfg.Identity.Issuers[0].GroupsClaim = "roles" }, `"roles"`},
		{"no policy for the idp's groups", "idp issues what sluice accepts",
			func(e *env) {
				for i := range e.cfg.Policies {
					e.cfg.Policies[i].Principals.Groups = []string{"humans"}
				}
			}, "no token carries a group"},
		{"idp certificate not trusted", "idp issues what sluice accepts",
			func(e *env) { edit(e, "sluice", setEnv("SSL_CERT_DIR", "/etc/ssl/certs")) }, "trusts no mounted certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := load(t)
			var fn func(*env) error
			for _, c := range checks {
				if c.name == tc.check {
					fn = c.fn
				}
			}
			if fn == nil {
				t.Fatalf("no check named %q", tc.check)
			}
			if err := fn(e); err != nil {
				t.Fatalf("precondition: %q fails on the unbroken project: %v", tc.check, err)
			}
			tc.break_(e)
			err := fn(e)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q = %v, want an error containing %q", tc.check, err, tc.want)
			}
		})
	}
}
