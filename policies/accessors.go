package policies

import (
	"net"
	"path/filepath"
	"strings"
	"time"
)

// Target returns the target with that name.
func (c *Config) Target(name string) (*Target, bool) {
	for i := range c.Targets {
		if c.Targets[i].Name == name {
			return &c.Targets[i], true
		}
	}
	return nil, false
}

// SluiceHost is the host Envoy uses to reach sluice's gRPC services:
// envoy.sluice_host, or else the host of server.xds (0.0.0.0 and :: become
// 127.0.0.1, since a wildcard bind is not an address to dial).
func (c *Config) SluiceHost() string {
	if c.Envoy.SluiceHost != "" {
		return c.Envoy.SluiceHost
	}
	host, _, _ := net.SplitHostPort(c.Server.XDS)
	switch host {
	case "", "0.0.0.0", "::":
		return "127.0.0.1"
	}
	return host
}

// MaxWait is the longest approval wait of any policy that governs target:
// the network ext_proc message timeout must cover a statement held that
// long (design.md section 6).
func (c *Config) MaxWait(target string) time.Duration {
	var longest time.Duration
	for _, p := range c.Policies {
		for _, t := range p.Targets {
			if t == target && p.Wait > longest {
				longest = p.Wait
			}
		}
	}
	return longest
}

// resolvePaths makes every relative file path in the config relative to the
// directory of the config file, not to wherever sluice was started: a
// config and the certificates beside it move together.
func resolvePaths(c *Config, dir string) {
	if dir == "" || dir == "." {
		return
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Audit.SigningKeyFile)
	abs(&c.Approvers.WebhookURLFile)
	for i := range c.Targets {
		t := &c.Targets[i]
		abs(&t.Credentials.PasswordFile)
		abs(&t.Credentials.BearerFile)
		abs(&t.Credentials.ClientCertFile)
		abs(&t.Credentials.ClientKeyFile)
		abs(&t.UpstreamCAFile)
		if t.TLS != nil {
			abs(&t.TLS.CertFile)
			abs(&t.TLS.KeyFile)
		}
	}
}

// UpstreamTLS reports whether Envoy speaks TLS to the target's server. For
// an http target that is an https:// upstream. For a postgres target it is
// a client certificate or a CA to verify the server with: postgres_proxy
// then asks the server for TLS itself (upstream_ssl REQUIRE) and the
// cluster's starttls transport socket switches to TLS when the server
// agrees, since a Postgres connection starts in clear text
// (envoy-contract.md section 5, "Upstream REQUIRE").
func (t *Target) UpstreamTLS() bool {
	switch t.Kind {
	case KindPostgres:
		return t.Credentials.ClientCertFile != "" || t.UpstreamCAFile != ""
	case KindHTTP:
		return strings.HasPrefix(t.Upstream, "https://")
	}
	return false
}
