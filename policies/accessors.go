package policies

import (
	"net"
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
