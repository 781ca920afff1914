package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// PKI is a throwaway certificate authority whose certificates live as PEM
// files in one directory: a CA, server certificates and client
// certificates, ECDSA P-256, valid for a day. Postgres reads its
// certificate and key from there (WithTLS), and sluice's config names the
// client certificate and the CA.
type PKI struct {
	// Dir holds the files.
	Dir string
	// CAFile is the CA certificate, the trust anchor for both sides.
	CAFile string

	t      testing.TB
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial atomic.Int64
	owner  func(path string) // makes a file the server's (running as root)
}

// NewPKI makes a CA named name in a fresh directory under dir (t.TempDir()
// when dir is empty).
func NewPKI(t testing.TB, name, dir string) *PKI {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	d, err := os.MkdirTemp(dir, "pki-")
	if err != nil {
		t.Fatal(err)
	}
	p := &PKI{Dir: d, t: t, owner: func(string) {}}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.caKey = key
	p.serial.Store(1)
	p.CAFile = p.write("ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	return p
}

// ServerCert issues a certificate for 127.0.0.1 and localhost and
// returns its certificate and key files.
func (p *PKI) ServerCert(name string) (certFile, keyFile string) {
	return p.issue(name, &x509.Certificate{
		Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// ClientCert issues a client certificate whose CN is cn, which Postgres's
// cert method takes as the role name, and returns its files.
func (p *PKI) ClientCert(cn string) (certFile, keyFile string) {
	return p.issue("client-"+cn, &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func (p *PKI) issue(name string, tmpl *x509.Certificate) (string, string) {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(p.serial.Add(1))
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		p.t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	cert := p.write(name+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	// Postgres refuses a key file others can read.
	keyFile := p.write(name+".key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, keyFile
}

func (p *PKI) write(name string, data []byte, mode os.FileMode) string {
	p.t.Helper()
	path := filepath.Join(p.Dir, name)
	if err := os.WriteFile(path, data, mode); err != nil {
		p.t.Fatal(err)
	}
	p.owner(path)
	return path
}

// WithTLS starts the server with ssl=on: a server certificate from a PKI
// of its own (Postgres.PKI), whose CA also verifies client certificates
// (ssl_ca_file), so that pg_hba.conf's cert method works (SetCertAuth).
// Connections without TLS are still accepted where pg_hba.conf says host.
func WithTLS() PostgresOption { return func(p *Postgres) { p.tls = true } }

// startTLS makes the server's PKI in its directory, readable by the
// server's OS user, and returns the server's TLS settings.
func (p *Postgres) startTLS() []string {
	p.PKI = NewPKI(p.t, "sluice test Postgres CA", p.SocketDir)
	if p.cred != nil {
		uid, gid := int(p.cred.Uid), int(p.cred.Gid)
		own := func(path string) {
			if err := os.Chown(path, uid, gid); err != nil {
				p.t.Fatal(err)
			}
		}
		own(p.PKI.Dir)
		own(p.PKI.CAFile)
		p.PKI.owner = own
	}
	cert, key := p.PKI.ServerCert("server")
	return []string{"-c", "ssl=on", "-c", "ssl_cert_file=" + cert, "-c", "ssl_key_file=" + key, "-c", "ssl_ca_file=" + p.PKI.CAFile}
}
