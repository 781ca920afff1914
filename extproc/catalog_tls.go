package extproc

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"

	"github.com/sluicehq/sluice/policies"
)

// targetTLS is the TLS sluice's own connection to a postgres target speaks,
// the same Envoy speaks on the agents' behalf (xds postgresUpstreamTLS):
// the target's client certificate when it has one; with upstream_ca_file,
// the chain verified against it and the name against upstream_sni or the
// host (libpq's sslmode=verify-full); without it, no verification
// (sslmode=require). SNI is upstream_sni or the host name, never an
// address.
func targetTLS(t *policies.Target, host string) (*tls.Config, error) {
	name := host
	if t.UpstreamSNI != "" {
		name = t.UpstreamSNI
	}
	cfg := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12}
	if net.ParseIP(name) != nil {
		cfg.ServerName = "" // no SNI; the address is checked below
	}
	if t.Credentials.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.Credentials.ClientCertFile, t.Credentials.ClientKeyFile)
		if err != nil {
			return nil, fmt.Errorf("target client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if t.UpstreamCAFile == "" {
		cfg.InsecureSkipVerify = true //nolint:gosec // sslmode=require: the operator named no CA
		return cfg, nil
	}
	pem, err := os.ReadFile(t.UpstreamCAFile)
	if err != nil {
		return nil, fmt.Errorf("target upstream_ca_file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("target upstream_ca_file %s holds no PEM certificate", t.UpstreamCAFile)
	}
	// Verified by hand so that an address is checked against the IP SANs
	// while no SNI is sent, as Envoy does.
	cfg.InsecureSkipVerify = true //nolint:gosec // verified in VerifyPeerCertificate
	cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return fmt.Errorf("target %s sent no certificate", t.Name)
		}
		certs := make([]*x509.Certificate, len(raw))
		for i, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return err
			}
			certs[i] = c
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name})
		return err
	}
	return cfg, nil
}
