package policies

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Limits the validator enforces, with where they come from.
const (
	// MaxExtProcTimeout is the PGV bound on network ext_proc message_timeout
	// (envoy-contract.md section 1.1): a policy wait must fit inside it.
	MaxExtProcTimeout = time.Hour
	// maxNameLen keeps generated Envoy resource and stat names readable.
	maxNameLen = 63
)

// Detectors are the value detectors the masking engine implements.
var Detectors = []string{"credit_card", "email", "us_ssn", "iban", "api_key", "jwt"}

var (
	nodeRe       = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
	nameRe       = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	headerNameRe = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	columnRe     = regexp.MustCompile(`^(\*|[A-Za-z_][A-Za-z0-9_$]*)(\.[A-Za-z_*][A-Za-z0-9_$]*){1,2}$`)
	httpMethods  = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true, "CONNECT": true, "TRACE": true, "*": true}
)

type validator struct {
	file string
	idx  *nodeIndex
	errs []*FieldError
}

func (v *validator) result() error {
	if len(v.errs) == 0 {
		return nil
	}
	return &ValidationError{Errs: v.errs}
}

// errorf records a problem at key, located at its value node (or, if the
// key is absent from the file, at the nearest parent present).
func (v *validator) errorf(key, format string, args ...any) {
	v.errorAt(key, key, format, args...)
}

// errorAt records a problem with key, located at the node of path: for a
// missing key, the place in the file that makes it necessary.
func (v *validator) errorAt(path, key, format string, args ...any) {
	e := &FieldError{File: v.file, Key: key, Msg: fmt.Sprintf(format, args...)}
	for p := path; ; p = parentPath(p) {
		if n := v.idx.value[p]; n != nil {
			e.Line, e.Column = n.Line, n.Column
			break
		}
		if p == "" {
			break
		}
	}
	v.errs = append(v.errs, e)
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// rejectInlineSecrets refuses secret values written into the file: secrets
// are referenced by *_env or *_file, never inlined (design.md section 4).
func (v *validator) rejectInlineSecrets() {
	inline := map[string]string{"password": "password_env or password_file", "bearer": "bearer_env or bearer_file", "token": "bearer_env or bearer_file", "secret": "a *_env or *_file reference", "webhook_url": "webhook_url_env or webhook_url_file"}
	for path, k := range v.idx.key {
		if hint, bad := inline[k.Value]; bad {
			v.errs = append(v.errs, &FieldError{File: v.file, Line: k.Line, Column: k.Column, Key: path,
				Msg: fmt.Sprintf("secrets are never written into the config; use %s", hint)})
		}
	}
	sortErrs(v.errs)
}

func (v *validator) validate(c *Config) {
	v.addr("server.xds", c.Server.XDS)
	v.addr("server.authz", c.Server.Authz)
	v.addr("server.extproc", c.Server.ExtProc)
	v.addr("server.api", c.Server.API)
	if c.Server.XDS == c.Server.API {
		v.errorf("server.api", "must differ from server.xds (%s): one is gRPC, the other HTTP", c.Server.XDS)
	}
	if c.Server.Authz == c.Server.API || c.Server.ExtProc == c.Server.API {
		v.errorf("server.api", "must differ from server.authz and server.extproc: the API is HTTP/1.1, they are gRPC")
	}

	if !nodeRe.MatchString(c.Envoy.Node) {
		v.errorf("envoy.node", "expected an xDS node id of letters, digits, '.', '_' or '-', got %q", c.Envoy.Node)
	}
	if _, err := netip.ParseAddr(c.Envoy.ListenAddress); err != nil {
		v.errorf("envoy.listen_address", "expected an IP address such as 0.0.0.0 or 127.0.0.1, got %q", c.Envoy.ListenAddress)
	}
	v.addr("envoy.admin_address", c.Envoy.AdminAddress)
	v.positive("envoy.authz_timeout", c.Envoy.AuthzTimeout)
	v.positive("envoy.extproc_message_timeout", c.Envoy.ExtProcMessageTimeout)
	if c.Envoy.ExtProcMessageTimeout > MaxExtProcTimeout {
		v.errorf("envoy.extproc_message_timeout", "expected at most %s (Envoy's limit), got %s", MaxExtProcTimeout, c.Envoy.ExtProcMessageTimeout)
	}
	v.positive("envoy.connect_timeout", c.Envoy.ConnectTimeout)

	seenIss := map[string]bool{}
	for i, is := range c.Identity.Issuers {
		key := fmt.Sprintf("identity.issuers[%d]", i)
		u, err := url.Parse(is.Issuer)
		switch {
		case is.Issuer == "":
			v.errorf(key+".issuer", "required: the issuer URL exactly as tokens carry it in iss")
		case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
			v.errorf(key+".issuer", "expected an https:// URL, got %q", is.Issuer)
		case u.Scheme == "http" && !isLoopbackHost(u.Hostname()):
			v.errorf(key+".issuer", "expected https:// (plain http is accepted only for a loopback issuer), got %q", is.Issuer)
		}
		if seenIss[is.Issuer] {
			v.errorf(key+".issuer", "issuer %q is listed twice", is.Issuer)
		}
		seenIss[is.Issuer] = true
		if len(is.Audiences) == 0 {
			v.errorf(key+".audiences", "required: at least one audience, so that a token minted for another service is refused")
		}
	}

	if len(c.Approvers.Groups) == 0 {
		for i, p := range c.Policies {
			if len(p.RequireGrant) > 0 {
				v.errorAt(fmt.Sprintf("policies[%d].require_grant", i), "approvers.groups",
					"required: policy %q uses require_grant, so someone must be able to approve", p.Name)
				break
			}
		}
	}
	if c.Approvers.WebhookURLEnv != "" && c.Approvers.WebhookURLFile != "" {
		v.errorf("approvers.webhook_url_file", "set webhook_url_env or webhook_url_file, not both")
	}

	if c.Grants.Store != "embedded" {
		u, err := url.Parse(c.Grants.Store)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			v.errorf("grants.store", "expected \"embedded\" or a redis:// or rediss:// URL, got %q", c.Grants.Store)
		}
	}
	v.positive("grants.max_duration", c.Grants.MaxDuration)

	switch {
	case strings.HasPrefix(c.Audit.Store, "sqlite://"):
		if strings.TrimPrefix(c.Audit.Store, "sqlite://") == "" {
			v.errorf("audit.store", "expected sqlite://<path to the database file>, got %q", c.Audit.Store)
		}
	case strings.HasPrefix(c.Audit.Store, "postgres://"), strings.HasPrefix(c.Audit.Store, "postgresql://"):
		if c.Audit.SigningKeyFile == "" {
			// Replicas share the store, so their checkpoints must be signed
			// with one key that verify can check; an ephemeral key per
			// process would make the trail unverifiable.
			v.errorAt("audit.store", "audit.signing_key_file", "required with a postgres audit store: every replica signs checkpoints with this key (create one with: sluice audit keygen --out FILE)")
		}
	default:
		v.errorf("audit.store", "expected sqlite://<path> or postgres://…, got %q", c.Audit.Store)
	}
	v.positive("audit.retention", c.Audit.Retention)
	if c.Audit.CheckpointEvery < 1 {
		v.errorf("audit.checkpoint_every", "expected a positive number of events, got %d", c.Audit.CheckpointEvery)
	}
	v.positive("audit.checkpoint_interval", c.Audit.CheckpointInterval)
	if c.Audit.Export.OTLPEndpoint != "" {
		v.addr("audit.export.otlp_endpoint", c.Audit.Export.OTLPEndpoint)
	}
	for i, g := range c.Auditors.Groups {
		if strings.TrimSpace(g) == "" {
			v.errorf(fmt.Sprintf("auditors.groups[%d]", i), "expected a group name, got an empty string")
		}
	}

	switch c.Telemetry.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		v.errorf("telemetry.log_level", "expected debug, info, warn or error, got %q", c.Telemetry.LogLevel)
	}
	switch c.Telemetry.LogFormat {
	case "json", "text":
	default:
		v.errorf("telemetry.log_format", "expected json or text, got %q", c.Telemetry.LogFormat)
	}
	if c.Telemetry.OTLPEndpoint != "" {
		v.addr("telemetry.otlp_endpoint", c.Telemetry.OTLPEndpoint)
	}

	v.targets(c)
	masks := v.masking(c)
	v.policies(c, masks)
	sortErrs(v.errs)
}

func (v *validator) targets(c *Config) {
	names := map[string]bool{}
	ports := map[int]string{}
	if _, p, err := net.SplitHostPort(c.Envoy.AdminAddress); err == nil {
		if n, err := strconv.Atoi(p); err == nil {
			ports[n] = "envoy.admin_address"
		}
	}
	if len(c.Targets) == 0 {
		v.errorf("targets", "required: at least one target")
	}
	for i, t := range c.Targets {
		key := fmt.Sprintf("targets[%d]", i)
		switch {
		case t.Name == "":
			v.errorf(key+".name", "required")
		case len(t.Name) > maxNameLen || !nameRe.MatchString(t.Name):
			v.errorf(key+".name", "expected lower-case letters, digits and '-' (at most %d), got %q", maxNameLen, t.Name)
		case names[t.Name]:
			v.errorf(key+".name", "target %q is defined twice", t.Name)
		}
		names[t.Name] = true

		if t.Port < 1 || t.Port > 65535 {
			v.errorf(key+".port", "expected a port from 1 to 65535, got %d", t.Port)
		} else if other, dup := ports[t.Port]; dup {
			v.errorf(key+".port", "port %d is already used by %s", t.Port, other)
		} else {
			ports[t.Port] = key
		}
		for j, s := range t.AllowedSources {
			if _, err := netip.ParsePrefix(s); err != nil {
				if _, err2 := netip.ParseAddr(s); err2 != nil {
					v.errorf(fmt.Sprintf("%s.allowed_sources[%d]", key, j), "expected a CIDR such as 10.0.0.0/8, got %q", s)
				}
			}
		}
		v.secretPair(key+".credentials.password", t.Credentials.PasswordEnv, t.Credentials.PasswordFile)
		v.secretPair(key+".credentials.bearer", t.Credentials.BearerEnv, t.Credentials.BearerFile)
		if (t.Credentials.ClientCertFile == "") != (t.Credentials.ClientKeyFile == "") {
			v.errorf(key+".credentials", "client_cert_file and client_key_file go together")
		} else if t.Credentials.ClientCertFile != "" {
			v.keyPair(key+".credentials.client_cert_file", t.Credentials.ClientCertFile, t.Credentials.ClientKeyFile)
		}
		if t.TLS != nil {
			if t.TLS.CertFile == "" || t.TLS.KeyFile == "" {
				v.errorf(key+".tls", "cert_file and key_file are both required")
			} else {
				v.keyPair(key+".tls.cert_file", t.TLS.CertFile, t.TLS.KeyFile)
			}
		}

		switch t.Kind {
		case KindPostgres:
			host, port, err := net.SplitHostPort(t.Upstream)
			if err != nil || host == "" || !validPort(port) {
				v.errorf(key+".upstream", "expected host:port of the Postgres server, got %q", t.Upstream)
			}
			if t.Database == "" {
				v.errorf(key+".database", "required: the upstream database the agent's session maps to")
			}
			if t.Credentials.User == "" {
				v.errorf(key+".credentials.user", "required: the upstream role sluice logs in as")
			}
			if !t.Credentials.Bearer().IsZero() || t.Credentials.Header != "" {
				v.errorf(key+".credentials", "bearer_env, bearer_file and header are for http targets")
			}
			if t.RequestTimeout != nil {
				v.errorf(key+".request_timeout", "is for http targets; postgres targets use idle_timeout")
			}
			if t.API != APIGeneric {
				v.errorf(key+".api", "is for http targets")
			}
			if t.UpstreamCAFile != "" {
				v.readable(key+".upstream_ca_file", t.UpstreamCAFile)
			}
			if t.UpstreamSNI != "" && !t.UpstreamTLS() {
				v.errorf(key+".upstream_sni", "needs TLS to the server: set credentials.client_cert_file or upstream_ca_file")
			}
			if t.UpstreamTLS() && t.TLS == nil {
				// Without a certificate of its own, postgres_proxy passes a
				// client's SSLRequest through and stops reading the
				// connection, so it would never ask the server for TLS; and
				// sluice could not tell that SSLRequest from postgres_proxy's
				// own (envoy-contract.md section 5).
				v.errorf(key+".tls", "required when Envoy speaks TLS to the server (credentials.client_cert_file or upstream_ca_file): Envoy must terminate the agents' TLS to negotiate the server's")
			}
			if t.IdleTimeout < 0 {
				v.errorf(key+".idle_timeout", "must not be negative")
			}
		case KindHTTP:
			u, err := url.Parse(t.Upstream)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
				v.errorf(key+".upstream", "expected http://host[:port] or https://host[:port] with no path, got %q", t.Upstream)
			} else if u.Port() != "" && !validPort(u.Port()) {
				v.errorf(key+".upstream", "expected a port from 1 to 65535, got %q", u.Port())
			} else if u.Scheme == "http" && (t.UpstreamCAFile != "" || t.UpstreamSNI != "") {
				v.errorf(key+".upstream_ca_file", "upstream TLS settings need an https:// upstream")
			}
			if !t.Credentials.Password().IsZero() || t.Credentials.User != "" {
				v.errorf(key+".credentials", "user, password_env and password_file are for postgres targets")
			}
			if t.Credentials.Header != "" && !headerNameRe.MatchString(t.Credentials.Header) {
				v.errorf(key+".credentials.header", "expected an HTTP header name, got %q", t.Credentials.Header)
			}
			if t.Credentials.Header != "" && t.Credentials.Bearer().IsZero() {
				v.errorf(key+".credentials.header", "needs bearer_env or bearer_file: the header carries that secret")
			}
			if t.UpstreamCAFile != "" {
				v.readable(key+".upstream_ca_file", t.UpstreamCAFile)
			}
			if t.RequestTimeout != nil && *t.RequestTimeout < 0 {
				v.errorf(key+".request_timeout", "must not be negative (0 disables it)")
			}
			if t.Database != "" {
				v.errorf(key+".database", "is for postgres targets")
			}
			if t.API != APIGeneric && t.API != APIKubernetes {
				v.errorf(key+".api", "expected kubernetes (or no api key for any HTTP API), got %q", t.API)
			}
		case "":
			v.errorf(key+".kind", "required: postgres or http")
		default:
			v.errorf(key+".kind", "expected postgres or http, got %q", t.Kind)
		}
	}
}

func (v *validator) masking(c *Config) map[string]bool {
	names := map[string]bool{}
	known := map[string]bool{}
	for _, d := range Detectors {
		known[d] = true
	}
	for i, m := range c.Masking {
		key := fmt.Sprintf("masking[%d]", i)
		switch {
		case m.Name == "":
			v.errorf(key+".name", "required")
		case names[m.Name]:
			v.errorf(key+".name", "masking rule %q is defined twice", m.Name)
		}
		names[m.Name] = true
		if len(m.Columns)+len(m.JSONPaths)+len(m.Detectors) == 0 {
			v.errorf(key, "a masking rule needs columns, json_paths or detectors")
		}
		for j, col := range m.Columns {
			if !columnRe.MatchString(col) {
				v.errorf(fmt.Sprintf("%s.columns[%d]", key, j), "expected table.column, schema.table.column or *.column, got %q", col)
			}
		}
		for j, p := range m.JSONPaths {
			if !strings.HasPrefix(p, "$") {
				v.errorf(fmt.Sprintf("%s.json_paths[%d]", key, j), "expected a JSON path starting with $, got %q", p)
			}
		}
		for j, d := range m.Detectors {
			if !known[d] {
				v.errorf(fmt.Sprintf("%s.detectors[%d]", key, j), "unknown detector %q (expected one of %s)", d, strings.Join(Detectors, ", "))
			}
		}
	}
	return names
}

func (v *validator) policies(c *Config, masks map[string]bool) {
	targets := map[string]*Target{}
	for i := range c.Targets {
		targets[c.Targets[i].Name] = &c.Targets[i]
	}
	names := map[string]bool{}
	if len(c.Policies) == 0 {
		v.errorf("policies", "required: at least one policy (with none, every request is denied)")
	}
	for i, p := range c.Policies {
		key := fmt.Sprintf("policies[%d]", i)
		switch {
		case p.Name == "":
			v.errorf(key+".name", "required")
		case names[p.Name]:
			v.errorf(key+".name", "policy %q is defined twice", p.Name)
		}
		names[p.Name] = true
		if len(p.Targets) == 0 {
			v.errorf(key+".targets", "required: the targets this policy governs")
		}
		hasHTTP := false
		for j, tn := range p.Targets {
			t, ok := targets[tn]
			if !ok {
				v.errorf(fmt.Sprintf("%s.targets[%d]", key, j), "unknown target %q", tn)
				continue
			}
			hasHTTP = hasHTTP || t.Kind == KindHTTP
		}
		pr := p.Principals
		if len(pr.Subjects)+len(pr.Groups)+len(pr.Clients) == 0 {
			v.errorf(key+".principals", "required: subjects, groups or clients (groups: [\"*\"] matches every authenticated principal)")
		}
		seen := map[OperationClass]string{}
		for _, list := range []struct {
			name    string
			classes []OperationClass
		}{{"allow", p.Allow}, {"require_grant", p.RequireGrant}, {"deny", p.Deny}} {
			for j, cl := range list.classes {
				if prev, dup := seen[cl]; dup {
					v.errorf(fmt.Sprintf("%s.%s[%d]", key, list.name, j), "class %s is already in %s: a class belongs to one list", cl, prev)
				}
				seen[cl] = list.name
			}
		}
		if len(p.Allow)+len(p.RequireGrant)+len(p.Deny) == 0 {
			v.errorf(key, "a policy needs allow, require_grant or deny")
		}
		for j, m := range p.Mask {
			if !masks[m] {
				v.errorf(fmt.Sprintf("%s.mask[%d]", key, j), "unknown masking rule %q", m)
			}
		}
		if p.MaxRows < 0 {
			v.errorf(key+".max_rows", "must not be negative (0 means no limit)")
		}
		if p.MaxBytes < 0 {
			v.errorf(key+".max_bytes", "must not be negative (0 means no limit)")
		}
		if p.Wait < 0 || p.Wait+c.Envoy.ExtProcMessageTimeout > MaxExtProcTimeout {
			v.errorf(key+".wait", "expected 0 to %s (Envoy's message timeout limit less extproc_message_timeout), got %s", MaxExtProcTimeout-c.Envoy.ExtProcMessageTimeout, p.Wait)
		}
		if p.Wait > 0 && len(p.RequireGrant) == 0 {
			v.errorf(key+".wait", "only statements that need a grant wait; this policy has no require_grant")
		}
		if p.MaxGrantDuration < 0 || p.MaxGrantDuration > c.Grants.MaxDuration {
			v.errorf(key+".max_grant_duration", "expected 0 to grants.max_duration (%s), got %s", c.Grants.MaxDuration, p.MaxGrantDuration)
		}
		if len(p.HTTP) > 0 && !hasHTTP {
			v.errorf(key+".http", "http rules need at least one http target in targets")
		}
		for j, r := range p.HTTP {
			rk := fmt.Sprintf("%s.http[%d]", key, j)
			if !strings.HasPrefix(r.Path, "/") {
				v.errorf(rk+".path", "expected a path pattern starting with /, got %q", r.Path)
			}
			for m, meth := range r.Methods {
				if !httpMethods[meth] {
					v.errorf(fmt.Sprintf("%s.methods[%d]", rk, m), "expected an upper-case HTTP method or *, got %q", meth)
				}
			}
			if r.Class == 0 {
				v.errorf(rk+".class", "required: read, write, ddl, admin or unknown")
			}
		}
	}
}

func (v *validator) addr(key, a string) {
	if _, port, err := net.SplitHostPort(a); err != nil || !validPort(port) {
		v.errorf(key, "expected host:port, got %q", a)
	}
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.errorf(key, "expected a positive duration, got %s", d)
	}
}

func (v *validator) secretPair(key, env, file string) {
	if env != "" && file != "" {
		v.errorf(key+"_file", "set %s_env or %s_file, not both", lastSeg(key), lastSeg(key))
	}
	// A secret file is read when it is used, not at load: a mounted secret
	// may appear after the config does, and its absence then fails closed.
}

func (v *validator) readable(key, path string) {
	f, err := os.Open(path)
	if err != nil {
		v.errorf(key, "cannot read %s: %v", path, unwrapPathErr(err))
		return
	}
	f.Close()
}

func (v *validator) keyPair(key, cert, keyFile string) {
	if _, err := tls.LoadX509KeyPair(cert, keyFile); err != nil {
		v.errorf(key, "expected a PEM certificate and its key: %v", unwrapPathErr(err))
	}
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func lastSeg(key string) string {
	if i := strings.LastIndex(key, "."); i >= 0 {
		return key[i+1:]
	}
	return key
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}

func sortErrs(errs []*FieldError) {
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
}
