package policies_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// TestExamplesLoad: every example in policies/examples is valid, so the
// README, docker compose and the golden xDS tests start from real configs.
func TestExamplesLoad(t *testing.T) {
	files, err := filepath.Glob("examples/*.yaml")
	if err != nil || len(files) < 5 {
		t.Fatalf("expected at least 5 examples, got %v (%v)", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := policies.LoadFile(f)
			if err != nil {
				t.Fatalf("example does not load:\n%v", err)
			}
			if cfg.Source != f {
				t.Errorf("Source = %q, want %q", cfg.Source, f)
			}
		})
	}
}

// TestBrokenExamples: each file under examples/broken states the exact
// errors it must produce in "# want:" lines, and produces no others.
func TestBrokenExamples(t *testing.T) {
	files, _ := filepath.Glob("examples/broken/*.yaml")
	if len(files) < 10 {
		t.Fatalf("expected at least 10 broken examples, got %d", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var wants []string
			for _, line := range strings.Split(string(data), "\n") {
				if w, ok := strings.CutPrefix(line, "# want: "); ok {
					wants = append(wants, w)
				}
			}
			if len(wants) == 0 {
				t.Fatal("broken example has no '# want:' line")
			}
			_, err = policies.LoadFile(f)
			if err == nil {
				t.Fatal("broken example loaded without error")
			}
			got := policies.FieldErrors(err)
			if len(got) != len(wants) {
				t.Fatalf("got %d errors, want %d:\n%v", len(got), len(wants), err)
			}
			for i, w := range wants {
				if !strings.Contains(got[i].Error(), w) {
					t.Errorf("error %d:\n got  %s\n want …%s…", i, got[i].Error(), w)
				}
				if got[i].File != f {
					t.Errorf("error %d names file %q, want %q", i, got[i].File, f)
				}
			}
		})
	}
}

const base = `
identity:
  issuers: [{ issuer: https://idp.example.com, audiences: [sluice] }]
targets:
  - name: app-db
    kind: postgres
    port: 15432
    upstream: 127.0.0.1:5432
    database: app
    credentials: { user: app, password_env: APP_PW }
policies:
  - { name: p, targets: [app-db], principals: { groups: [agents] }, allow: [read], deny: [write] }
`

func TestDefaults(t *testing.T) {
	cfg, err := policies.Load("base.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"server.xds", cfg.Server.XDS, policies.DefaultXDSAddr},
		{"server.api", cfg.Server.API, policies.DefaultAPIAddr},
		{"envoy.node", cfg.Envoy.Node, "edge"},
		{"envoy.listen_address", cfg.Envoy.ListenAddress, "0.0.0.0"},
		{"envoy.authz_timeout", cfg.Envoy.AuthzTimeout, time.Second},
		{"groups_claim", cfg.Identity.Issuers[0].GroupsClaim, "groups"},
		{"grants.store", cfg.Grants.Store, "embedded"},
		{"audit.retention", cfg.Audit.Retention, 2160 * time.Hour},
		{"idle_timeout", cfg.Targets[0].IdleTimeout, time.Hour},
		{"log_format", cfg.Telemetry.LogFormat, "json"},
		{"allow", cfg.Policies[0].Allow[0], policies.ClassRead},
		{"deny", cfg.Policies[0].Deny[0].String(), "write"},
		{"sluice host", cfg.SluiceHost(), "127.0.0.1"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestInvalid covers rules that the broken examples do not, each with the
// key it must name.
func TestInvalid(t *testing.T) {
	cases := []struct {
		name, edit, from, key, msg string
	}{
		{"redis url", "grants:\n  store: mysql://x\n", "", "grants.store", "expected \"embedded\" or a redis://"},
		{"audit store", "audit:\n  store: /var/audit.db\n", "", "audit.store", "expected sqlite://"},
		{"negative max_rows", "", "allow: [read]", "policies[0].max_rows", "must not be negative"},
		{"bad cidr", "", "database: app", "targets[0].allowed_sources[0]", "expected a CIDR"},
		{"both env and file", "", "password_env: APP_PW", "targets[0].credentials.password_file", "not both"},
		{"bearer on postgres", "", "user: app,", "targets[0].credentials", "are for http targets"},
		{"no principals", "", "principals: { groups: [agents] }", "policies[0].principals", "required"},
		{"bad log level", "telemetry:\n  log_level: loud\n", "", "telemetry.log_level", "expected debug, info"},
		{"same api and xds", "server:\n  xds: 127.0.0.1:1\n  api: 127.0.0.1:1\n", "", "server.api", "must differ"},
		{"top-level list", "", "", "", ""},
	}
	replacements := map[string]string{
		"negative max_rows":  "allow: [read], max_rows: -1",
		"bad cidr":           "database: app\n    allowed_sources: [10.0.0.0/33]",
		"both env and file":  "password_env: APP_PW, password_file: /x",
		"bearer on postgres": "user: app, bearer_env: X,",
		"no principals":      "principals: {}",
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := c.edit + base
			if c.from != "" {
				doc = c.edit + strings.Replace(base, c.from, replacements[c.name], 1)
			}
			if c.name == "top-level list" {
				doc = "- a\n- b\n"
			}
			_, err := policies.Load("t.yaml", []byte(doc))
			if err == nil {
				t.Fatal("loaded without error")
			}
			if c.key == "" {
				return
			}
			for _, fe := range policies.FieldErrors(err) {
				if fe.Key == c.key && strings.Contains(fe.Msg, c.msg) {
					if fe.Line == 0 {
						t.Errorf("error has no line: %v", fe)
					}
					return
				}
			}
			t.Errorf("no error for key %s containing %q in:\n%v", c.key, c.msg, err)
		})
	}
}

func TestRelativePathsFollowTheConfigFile(t *testing.T) {
	cfg, err := policies.LoadFile("examples/postgres-tls.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Targets[0].TLS.CertFile, filepath.Join("examples", "certs", "demo-server.crt"); got != want {
		t.Errorf("cert_file = %q, want %q", got, want)
	}
}

func TestSecretRef(t *testing.T) {
	t.Setenv("SLUICE_TEST_SECRET", "s3cret")
	if v, err := (policies.SecretRef{Env: "SLUICE_TEST_SECRET"}).Resolve(); err != nil || v != "s3cret" {
		t.Errorf("env: %q %v", v, err)
	}
	if _, err := (policies.SecretRef{Env: "SLUICE_TEST_UNSET_VAR"}).Resolve(); !errors.Is(err, policies.ErrSecretUnset) {
		t.Errorf("unset env: err = %v, want ErrSecretUnset", err)
	}
	f := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(f, []byte("from-file\n"), 0o600)
	if v, err := (policies.SecretRef{File: f}).Resolve(); err != nil || v != "from-file" {
		t.Errorf("file: %q %v", v, err)
	}
	if _, err := (policies.SecretRef{File: f + ".missing"}).Resolve(); err == nil {
		t.Error("missing file resolved")
	}
	if s := (policies.SecretRef{Env: "X"}).String(); s != "env:X" {
		t.Errorf("String = %q", s)
	}
}

func TestClassNames(t *testing.T) {
	for _, c := range policies.AllClasses {
		back, err := policies.ParseClass(c.String())
		if err != nil || back != c {
			t.Errorf("%v does not round-trip: %v %v", c, back, err)
		}
	}
	if _, err := policies.ParseClass("select"); err == nil {
		t.Error("ParseClass(select) succeeded")
	}
}
