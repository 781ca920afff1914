package compose

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/sluicehq/sluice/policies"
)

// env is what every check looks at: the loaded compose project, the sluice
// config it is meant to run, and the repository root both live in.
type env struct {
	root    string
	cfgPath string // host path of the sluice config
	cfg     *policies.Config
	p       *types.Project
}

type check struct {
	name string
	fn   func(*env) error
}

var checks = []check{
	{"target ports published", targetPortsPublished},
	{"envoy admin published", adminPublished},
	{"envoy bootstrap mounted", bootstrapMounted},
	{"sluice config mounted", sluiceConfigMounted},
	{"named hosts are services", namedHostsAreServices},
	{"secrets and files provided", secretsProvided},
	{"postgres seeded", postgresSeeded},
	{"idp issues what sluice accepts", idpAgrees},
}

func (e *env) service(name string) (types.ServiceConfig, error) {
	s, ok := e.p.Services[name]
	if !ok {
		return s, fmt.Errorf("no compose service %q", name)
	}
	return s, nil
}

// sluice is the service Envoy dials for xDS, ext_authz and ext_proc.
func (e *env) sluice() (types.ServiceConfig, error) {
	s, err := e.service(e.cfg.SluiceHost())
	if err != nil {
		return s, fmt.Errorf("envoy.sluice_host: %w", err)
	}
	return s, nil
}

func publishes(s types.ServiceConfig, port int) bool {
	return slices.ContainsFunc(s.Ports, func(p types.ServicePortConfig) bool {
		return int(p.Target) == port && p.Published != "" && (p.Protocol == "" || p.Protocol == "tcp")
	})
}

// flag returns the value of a command-line flag in either "-f v" or "-f=v" form.
func flag(cmd []string, names ...string) (string, bool) {
	for i, a := range cmd {
		for _, n := range names {
			if a == n && i+1 < len(cmd) {
				return cmd[i+1], true
			}
			if v, ok := strings.CutPrefix(a, n+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

// mountFor returns the host path behind container path p, if a bind mount
// of s covers it.
func mountFor(s types.ServiceConfig, p string) (string, bool) {
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if p == v.Target {
			return v.Source, true
		}
		if rest, ok := strings.CutPrefix(p, v.Target+"/"); ok {
			return filepath.Join(v.Source, rest), true
		}
	}
	return "", false
}

// persisted reports whether container path p is on any mount (a named
// volume or a bind), so it outlives the container.
func persisted(s types.ServiceConfig, p string) bool {
	return slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
		return p == v.Target || strings.HasPrefix(p, v.Target+"/")
	})
}

func envValue(s types.ServiceConfig, key string) string {
	if v := s.Environment[key]; v != nil {
		return *v
	}
	return ""
}

func targetPortsPublished(e *env) error {
	envoy, err := e.service("envoy")
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range e.cfg.Targets {
		if !publishes(envoy, t.Port) {
			errs = append(errs, fmt.Errorf("target %s: envoy does not publish port %d", t.Name, t.Port))
		}
	}
	return errors.Join(errs...)
}

func adminPublished(e *env) error {
	envoy, err := e.service("envoy")
	if err != nil {
		return err
	}
	_, p, err := net.SplitHostPort(e.cfg.Envoy.AdminAddress)
	if err != nil {
		return err
	}
	port, _ := strconv.Atoi(p)
	if !publishes(envoy, port) {
		return fmt.Errorf("envoy does not publish its admin port %d (envoy.admin_address)", port)
	}
	return nil
}

func bootstrapMounted(e *env) error {
	envoy, err := e.service("envoy")
	if err != nil {
		return err
	}
	p, ok := flag(envoy.Command, "-c", "--config-path")
	if !ok {
		return fmt.Errorf("envoy command %q has no -c <bootstrap>", envoy.Command)
	}
	src, ok := mountFor(envoy, p)
	if !ok {
		return fmt.Errorf("envoy reads %s, but no bind mount provides it", p)
	}
	if want := filepath.Join(e.root, "envoy", "bootstrap.yaml"); src != want {
		return fmt.Errorf("envoy mounts %s at %s, want %s (the bootstrap generated from %s)", src, p, want, e.cfgPath)
	}
	if _, err := os.Stat(src); err != nil {
		return err
	}
	return nil
}

func sluiceConfigMounted(e *env) error {
	s, err := e.sluice()
	if err != nil {
		return err
	}
	if len(s.Command) < 2 || s.Command[0] != "sluice" || s.Command[1] != "serve" {
		return fmt.Errorf("service %s runs %q, want sluice serve --config …", s.Name, s.Command)
	}
	p, ok := flag(s.Command, "--config", "-config")
	if !ok {
		return fmt.Errorf("service %s runs %q without --config", s.Name, s.Command)
	}
	src, ok := mountFor(s, p)
	if !ok {
		return fmt.Errorf("sluice reads %s, but no bind mount provides it", p)
	}
	if src != e.cfgPath {
		return fmt.Errorf("sluice mounts %s at %s, want %s", src, p, e.cfgPath)
	}
	_, err = os.Stat(src)
	return err
}

// hosts lists every host name the config makes sluice or Envoy dial, with
// the key that names it.
func hosts(cfg *policies.Config) map[string]string {
	out := map[string]string{"envoy.sluice_host": cfg.SluiceHost()}
	if u, err := url.Parse(cfg.Grants.Store); err == nil && u.Hostname() != "" {
		out["grants.store"] = u.Hostname()
	}
	if u, err := url.Parse(cfg.Audit.Store); err == nil && strings.HasPrefix(u.Scheme, "postgres") {
		out["audit.store"] = u.Hostname()
	}
	if h, _, err := net.SplitHostPort(cfg.Telemetry.OTLPEndpoint); err == nil {
		out["telemetry.otlp_endpoint"] = h
	}
	for i, t := range cfg.Targets {
		key := fmt.Sprintf("targets[%d].upstream", i)
		if t.Kind == policies.KindPostgres {
			out[key], _, _ = net.SplitHostPort(t.Upstream)
		} else if u, err := url.Parse(t.Upstream); err == nil {
			out[key] = u.Hostname()
		}
	}
	for i, is := range cfg.Identity.Issuers {
		if u, err := url.Parse(is.Issuer); err == nil {
			out[fmt.Sprintf("identity.issuers[%d]", i)] = u.Hostname()
		}
	}
	return out
}

func namedHostsAreServices(e *env) error {
	var errs []error
	for key, h := range hosts(e.cfg) {
		if _, ok := e.p.Services[h]; !ok {
			errs = append(errs, fmt.Errorf("%s names host %q, which is not a compose service", key, h))
		}
	}
	return errors.Join(errs...)
}

func secretsProvided(e *env) error {
	s, err := e.sluice()
	if err != nil {
		return err
	}
	envs := map[string]string{"approvers.webhook_url_env": e.cfg.Approvers.WebhookURLEnv}
	files := map[string]string{
		"audit.signing_key_file":     e.cfg.Audit.SigningKeyFile,
		"approvers.webhook_url_file": e.cfg.Approvers.WebhookURLFile,
	}
	for i, t := range e.cfg.Targets {
		k := fmt.Sprintf("targets[%d].", i)
		envs[k+"credentials.password_env"] = t.Credentials.PasswordEnv
		envs[k+"credentials.bearer_env"] = t.Credentials.BearerEnv
		files[k+"credentials.password_file"] = t.Credentials.PasswordFile
		files[k+"credentials.bearer_file"] = t.Credentials.BearerFile
		files[k+"credentials.client_cert_file"] = t.Credentials.ClientCertFile
		files[k+"credentials.client_key_file"] = t.Credentials.ClientKeyFile
		files[k+"upstream_ca_file"] = t.UpstreamCAFile
		if t.TLS != nil {
			files[k+"tls.cert_file"], files[k+"tls.key_file"] = t.TLS.CertFile, t.TLS.KeyFile
		}
	}
	var errs []error
	for key, name := range envs {
		if name != "" && envValue(s, name) == "" {
			errs = append(errs, fmt.Errorf("%s is %s, but service %s does not set it", key, name, s.Name))
		}
	}
	for key, p := range files {
		if p == "" {
			continue
		}
		if _, ok := mountFor(s, p); !ok {
			errs = append(errs, fmt.Errorf("%s is %s, which no bind mount of service %s provides", key, p, s.Name))
		}
	}
	if db, ok := strings.CutPrefix(e.cfg.Audit.Store, "sqlite://"); ok && !persisted(s, db) {
		errs = append(errs, fmt.Errorf("audit.store %s is not on a volume: the audit trail would die with the container", db))
	}
	return errors.Join(errs...)
}

// postgresSeeded: a compose Postgres behind a target is initialised with
// deploy/postgres/seed.sql, for the target's database, with the password
// sluice will present as the target's user.
func postgresSeeded(e *env) error {
	sl, err := e.sluice()
	if err != nil {
		return err
	}
	seed := filepath.Join(e.root, "deploy", "postgres", "seed.sql")
	var errs []error
	for _, t := range e.cfg.Targets {
		if t.Kind != policies.KindPostgres {
			continue
		}
		host, _, _ := net.SplitHostPort(t.Upstream)
		pg, ok := e.p.Services[host]
		if !ok {
			continue // namedHostsAreServices reports it
		}
		if !slices.ContainsFunc(pg.Volumes, func(v types.ServiceVolumeConfig) bool {
			return v.Source == seed && path.Dir(v.Target) == "/docker-entrypoint-initdb.d"
		}) {
			errs = append(errs, fmt.Errorf("service %s does not mount %s into /docker-entrypoint-initdb.d", host, seed))
		}
		if db := envValue(pg, "POSTGRES_DB"); db != t.Database {
			errs = append(errs, fmt.Errorf("service %s creates database %q, target %s uses %q", host, db, t.Name, t.Database))
		}
		if k := t.Credentials.PasswordEnv; k != "" && envValue(pg, k) != envValue(sl, k) {
			errs = append(errs, fmt.Errorf("%s differs between %s (seeds role %s) and %s (logs in as it)", k, host, t.Credentials.User, sl.Name))
		}
	}
	return errors.Join(errs...)
}
