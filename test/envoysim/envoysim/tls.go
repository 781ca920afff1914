package envoysim

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
)

// TLS contexts: DownstreamTlsContext for listeners (tls and starttls transport
// sockets), UpstreamTlsContext for clusters. Certificates come inline, from
// files, or from SDS Secrets (received over ADS or given to Apply), resolved
// when a connection needs them.

func dataSource(ds *corev3.DataSource) ([]byte, error) {
	switch v := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		return v.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(v.InlineString), nil
	case *corev3.DataSource_Filename:
		return os.ReadFile(v.Filename)
	case *corev3.DataSource_EnvironmentVariable:
		val, ok := os.LookupEnv(v.EnvironmentVariable)
		if !ok {
			return nil, fmt.Errorf("environment variable %s is not set", v.EnvironmentVariable)
		}
		return []byte(val), nil
	}
	return nil, errors.New("empty DataSource")
}

func checkTLSCertificate(tc *tlsv3.TlsCertificate) error {
	if err := checkFields(tc, "certificate_chain", "private_key"); err != nil {
		return err
	}
	if tc.GetCertificateChain() == nil || tc.GetPrivateKey() == nil {
		return errors.New("tls_certificate needs certificate_chain and private_key")
	}
	return nil
}

func loadTLSCertificate(tc *tlsv3.TlsCertificate) (tls.Certificate, error) {
	chain, err := dataSource(tc.GetCertificateChain())
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := dataSource(tc.GetPrivateKey())
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(chain, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading certificate: %w", err)
	}
	if len(cert.Certificate) > 0 && cert.Leaf == nil {
		cert.Leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	}
	return cert, nil
}

// checkValidationContext accepts trusted_ca and match_typed_subject_alt_names.
// A trusted_ca file that does not load rejects the config, as Envoy reads it
// when the context is created.
func checkValidationContext(vc *tlsv3.CertificateValidationContext) error {
	if err := checkFields(vc, "trusted_ca", "match_typed_subject_alt_names"); err != nil {
		return err
	}
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		if err := checkFields(m, "san_type", "matcher"); err != nil {
			return err
		}
		if err := checkFields(m.GetMatcher(), "exact", "prefix", "suffix", "contains", "ignore_case"); err != nil {
			return err
		}
		if m.GetSanType() == tlsv3.SubjectAltNameMatcher_SAN_TYPE_UNSPECIFIED || m.GetSanType() == tlsv3.SubjectAltNameMatcher_OTHER_NAME {
			return fmt.Errorf("match_typed_subject_alt_names: san_type %s is not implemented by envoysim", m.GetSanType())
		}
	}
	if f := vc.GetTrustedCa().GetFilename(); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("Failed to load trusted CA certificates from %s: %w", f, err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("Failed to load trusted CA certificates from %s", f)
		}
	}
	return nil
}

func checkSecret(sec *tlsv3.Secret) error {
	if err := checkFields(sec, "name", "tls_certificate", "validation_context"); err != nil {
		return err
	}
	if tc := sec.GetTlsCertificate(); tc != nil {
		return checkTLSCertificate(tc)
	}
	if vc := sec.GetValidationContext(); vc != nil {
		return checkValidationContext(vc)
	}
	return fmt.Errorf("secret %q: only tls_certificate and validation_context secrets are implemented", sec.GetName())
}

// checkCommonTLS is the config-time check; it returns the SDS secret names the
// context needs (a listener warms until they are present).
func checkCommonTLS(ctx *tlsv3.CommonTlsContext) ([]string, error) {
	if err := checkFields(ctx, "tls_params", "tls_certificates", "tls_certificate_sds_secret_configs",
		"validation_context", "validation_context_sds_secret_config", "combined_validation_context",
		"alpn_protocols"); err != nil {
		return nil, err
	}
	if err := checkFields(ctx.GetTlsParams(), "tls_minimum_protocol_version", "tls_maximum_protocol_version"); err != nil {
		return nil, err
	}
	var names []string
	for _, tc := range ctx.GetTlsCertificates() {
		if err := checkTLSCertificate(tc); err != nil {
			return nil, err
		}
	}
	for _, sds := range ctx.GetTlsCertificateSdsSecretConfigs() {
		if err := checkSDSConfig(sds); err != nil {
			return nil, err
		}
		names = append(names, sds.GetName())
	}
	if err := checkValidationContext(ctx.GetValidationContext()); err != nil {
		return nil, err
	}
	if sds := ctx.GetValidationContextSdsSecretConfig(); sds != nil {
		if err := checkSDSConfig(sds); err != nil {
			return nil, err
		}
		names = append(names, sds.GetName())
	}
	if cvc := ctx.GetCombinedValidationContext(); cvc != nil {
		if err := checkFields(cvc, "default_validation_context", "validation_context_sds_secret_config"); err != nil {
			return nil, err
		}
		if err := checkValidationContext(cvc.GetDefaultValidationContext()); err != nil {
			return nil, err
		}
		if err := checkSDSConfig(cvc.GetValidationContextSdsSecretConfig()); err != nil {
			return nil, err
		}
		names = append(names, cvc.GetValidationContextSdsSecretConfig().GetName())
	}
	return names, nil
}

func checkSDSConfig(sds *tlsv3.SdsSecretConfig) error {
	if err := checkFields(sds, "name", "sds_config"); err != nil {
		return err
	}
	if src := sds.GetSdsConfig(); src != nil && src.GetAds() == nil {
		return fmt.Errorf("SDS secret %q: only ads sds_config is implemented", sds.GetName())
	}
	return nil
}

type resolvedTLS struct {
	certs []tls.Certificate
	roots *x509.CertPool
	sans  []*tlsv3.SubjectAltNameMatcher
	alpn  []string
	min   uint16
	max   uint16
}

func tlsVersion(v tlsv3.TlsParameters_TlsProtocol, def uint16) uint16 {
	switch v {
	case tlsv3.TlsParameters_TLSv1_0:
		return tls.VersionTLS10
	case tlsv3.TlsParameters_TLSv1_1:
		return tls.VersionTLS11
	case tlsv3.TlsParameters_TLSv1_2:
		return tls.VersionTLS12
	case tlsv3.TlsParameters_TLSv1_3:
		return tls.VersionTLS13
	}
	return def
}

// resolveCommonTLS loads certificates and trust anchors, SDS ones from the store.
func (s *Sim) resolveCommonTLS(ctx *tlsv3.CommonTlsContext, server bool) (*resolvedTLS, error) {
	r := &resolvedTLS{alpn: ctx.GetAlpnProtocols()}
	r.min = tlsVersion(ctx.GetTlsParams().GetTlsMinimumProtocolVersion(), tls.VersionTLS12)
	defMax := uint16(tls.VersionTLS13)
	if !server {
		defMax = tls.VersionTLS12 // Envoy's client default maximum
	}
	r.max = tlsVersion(ctx.GetTlsParams().GetTlsMaximumProtocolVersion(), defMax)
	tcs := append([]*tlsv3.TlsCertificate(nil), ctx.GetTlsCertificates()...)
	for _, sds := range ctx.GetTlsCertificateSdsSecretConfigs() {
		sec := s.secret(sds.GetName())
		if sec.GetTlsCertificate() == nil {
			return nil, fmt.Errorf("SDS secret %q (tls_certificate) is not available", sds.GetName())
		}
		tcs = append(tcs, sec.GetTlsCertificate())
	}
	for _, tc := range tcs {
		cert, err := loadTLSCertificate(tc)
		if err != nil {
			return nil, err
		}
		r.certs = append(r.certs, cert)
	}
	vc := ctx.GetValidationContext()
	sds := ctx.GetValidationContextSdsSecretConfig()
	if cvc := ctx.GetCombinedValidationContext(); cvc != nil {
		vc, sds = cvc.GetDefaultValidationContext(), cvc.GetValidationContextSdsSecretConfig()
	}
	if sds != nil {
		sec := s.secret(sds.GetName())
		if sec.GetValidationContext() == nil {
			return nil, fmt.Errorf("SDS secret %q (validation_context) is not available", sds.GetName())
		}
		// A combined context is the default merged with the SDS one.
		merged := proto.Clone(sec.GetValidationContext()).(*tlsv3.CertificateValidationContext)
		if vc != nil {
			merged = proto.Clone(vc).(*tlsv3.CertificateValidationContext)
			proto.Merge(merged, sec.GetValidationContext())
		}
		vc = merged
	}
	r.sans = vc.GetMatchTypedSubjectAltNames()
	if vc.GetTrustedCa() != nil {
		pem, err := dataSource(vc.GetTrustedCa())
		if err != nil {
			return nil, err
		}
		r.roots = x509.NewCertPool()
		if !r.roots.AppendCertsFromPEM(pem) {
			return nil, errors.New("trusted_ca: no certificate found")
		}
	}
	return r, nil
}

func checkDownstreamTLS(d *tlsv3.DownstreamTlsContext) ([]string, error) {
	if err := checkFields(d, "common_tls_context", "require_client_certificate", "require_sni"); err != nil {
		return nil, err
	}
	if d.GetCommonTlsContext() == nil {
		return nil, errors.New("DownstreamTlsContext: common_tls_context is required")
	}
	return checkCommonTLS(d.GetCommonTlsContext())
}

// serverTLSConfig builds the listener side; it also returns the local leaf
// certificate (ext_authz's destination.principal comes from it).
func (s *Sim) serverTLSConfig(d *tlsv3.DownstreamTlsContext) (*tls.Config, *x509.Certificate, error) {
	r, err := s.resolveCommonTLS(d.GetCommonTlsContext(), true)
	if err != nil {
		return nil, nil, err
	}
	if len(r.certs) == 0 {
		return nil, nil, errors.New("DownstreamTlsContext has no certificate")
	}
	cfg := &tls.Config{Certificates: r.certs, NextProtos: r.alpn, MinVersion: r.min, MaxVersion: r.max}
	if r.roots != nil {
		cfg.ClientCAs = r.roots
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if d.GetRequireClientCertificate().GetValue() {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	} else if d.GetRequireClientCertificate().GetValue() {
		cfg.ClientAuth = tls.RequireAnyClientCert
	}
	if len(r.sans) > 0 {
		sans := r.sans
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil // no client certificate: require_client_certificate decides
			}
			return verifyPeer(nil, sans)(raw, nil)
		}
	}
	if d.GetRequireSni().GetValue() {
		cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			if h.ServerName == "" {
				return nil, errors.New("require_sni: client sent no SNI")
			}
			return nil, nil
		}
	}
	return cfg, r.certs[0].Leaf, nil
}

func checkUpstreamTLS(u *tlsv3.UpstreamTlsContext) ([]string, error) {
	if err := checkFields(u, "common_tls_context", "sni"); err != nil {
		return nil, err
	}
	if u.GetCommonTlsContext() == nil {
		return nil, nil
	}
	return checkCommonTLS(u.GetCommonTlsContext())
}

// clientTLSConfig builds the cluster side. Without a validation context Envoy
// does not verify the server certificate, and neither does the sim.
func (s *Sim) clientTLSConfig(u *tlsv3.UpstreamTlsContext) (*tls.Config, error) {
	r := &resolvedTLS{min: tls.VersionTLS12, max: tls.VersionTLS12}
	if u.GetCommonTlsContext() != nil {
		var err error
		if r, err = s.resolveCommonTLS(u.GetCommonTlsContext(), false); err != nil {
			return nil, err
		}
	}
	// Envoy verifies the chain against trusted_ca and the SAN matchers, never
	// the name against sni (that would take auto_sni_san_validation).
	cfg := &tls.Config{
		Certificates: r.certs, NextProtos: r.alpn, MinVersion: r.min, MaxVersion: r.max,
		ServerName: u.GetSni(), InsecureSkipVerify: true, //nolint:gosec // verified below, as Envoy does
	}
	if r.roots != nil || len(r.sans) > 0 {
		cfg.VerifyPeerCertificate = verifyPeer(r.roots, r.sans)
	}
	if len(r.certs) > 0 {
		// BoringSSL presents the configured certificate whenever the server
		// asks for one; Go would send none when its issuer is not among the
		// server's certificate_authorities, and the server would see a
		// missing certificate instead of an untrusted one.
		cert := &r.certs[0]
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg, nil
}

// verifyPeer checks the chain against roots (when set) and, when matchers are
// given, that one SAN of the leaf matches one of them.
func verifyPeer(roots *x509.CertPool, sans []*tlsv3.SubjectAltNameMatcher) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, chains [][]*x509.Certificate) error {
		if roots != nil {
			if err := verifyChainOnly(roots)(raw, chains); err != nil {
				return err
			}
		}
		if len(sans) == 0 {
			return nil
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		if !matchSANs(leaf, sans) {
			return errors.New("x509: certificate SANs do not match match_typed_subject_alt_names")
		}
		return nil
	}
}

func matchSANs(leaf *x509.Certificate, sans []*tlsv3.SubjectAltNameMatcher) bool {
	for _, m := range sans {
		var values []string
		switch m.GetSanType() {
		case tlsv3.SubjectAltNameMatcher_DNS:
			values = leaf.DNSNames
		case tlsv3.SubjectAltNameMatcher_EMAIL:
			values = leaf.EmailAddresses
		case tlsv3.SubjectAltNameMatcher_URI:
			for _, u := range leaf.URIs {
				values = append(values, u.String())
			}
		case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
			for _, ip := range leaf.IPAddresses {
				values = append(values, ip.String())
			}
		}
		for _, v := range values {
			if matchString(m.GetMatcher(), v) {
				return true
			}
		}
	}
	return false
}

func matchString(m *matcherv3.StringMatcher, v string) bool {
	if m.GetIgnoreCase() {
		v = strings.ToLower(v)
	}
	norm := func(p string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(p)
		}
		return p
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return v == norm(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(v, norm(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(v, norm(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(v, norm(p.Contains))
	}
	return false
}

func verifyChainOnly(roots *x509.CertPool) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("no server certificate")
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		inter := x509.NewCertPool()
		for _, r := range raw[1:] {
			if c, err := x509.ParseCertificate(r); err == nil {
				inter.AddCert(c)
			}
		}
		_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
		return err
	}
}

func (s *Sim) secret(name string) *tlsv3.Secret {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.secrets[name]
}

// applySecrets replaces the SDS secrets (state of the world).
func (s *Sim) applySecrets(secrets []*tlsv3.Secret) error {
	next := map[string]*tlsv3.Secret{}
	var bad []string
	for _, sec := range secrets {
		if err := validate(sec); err == nil {
			err = checkSecret(sec)
			if err == nil {
				next[sec.GetName()] = sec
				continue
			}
			bad = append(bad, fmt.Sprintf("%s: %v", sec.GetName(), err))
		} else {
			bad = append(bad, fmt.Sprintf("%s: %v", sec.GetName(), err))
		}
	}
	s.mu.Lock()
	s.secrets = next
	s.notifyLocked()
	s.mu.Unlock()
	s.activateWarmingListeners()
	if len(bad) > 0 {
		return fmt.Errorf("Error adding/updating secret(s) %v", bad)
	}
	return nil
}
