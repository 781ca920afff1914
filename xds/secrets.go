package xds

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// Certificates and keys travel to Envoy as SDS secrets with inline_bytes,
// read by sluice at each Translate: the files live beside sluice's config,
// not necessarily on Envoy's machine. A rotated certificate reaches Envoy
// with the next config reload.

// certSecret reads a PEM certificate chain and its key and adds them as the
// SDS secret name. A pair that does not load (missing, unreadable, or a key
// that does not match) fails the translation: Envoy would otherwise NACK the
// listener, or accept it and fail every handshake.
func (t *translator) certSecret(name, certFile, keyFile string) {
	cert, err := os.ReadFile(certFile)
	if err != nil {
		t.fail(fmt.Errorf("secret %s: %w", name, err))
		return
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.fail(fmt.Errorf("secret %s: %w", name, err))
		return
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		t.fail(fmt.Errorf("secret %s: %s and %s: %w", name, certFile, keyFile, err))
		return
	}
	t.res.Secrets = append(t.res.Secrets, &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineBytes(cert),
			PrivateKey:       inlineBytes(key),
		}},
	})
}

// caSecret reads a PEM CA bundle and adds it as the SDS validation-context
// secret name. A file with no certificate in it fails the translation: an
// empty trust store would fail every upstream handshake.
func (t *translator) caSecret(name, caFile string) {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.fail(fmt.Errorf("secret %s: %w", name, err))
		return
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		t.fail(fmt.Errorf("secret %s: %s holds no PEM certificate", name, caFile))
		return
	}
	t.res.Secrets = append(t.res.Secrets, &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inlineBytes(ca),
		}},
	})
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}
