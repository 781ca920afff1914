package compose

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/sluicehq/sluice/policies"
)

// idpConfig is the part of mock-oauth2-server's JSON config sluice cares about.
type idpConfig struct {
	HTTPServer struct {
		SSL *struct {
			KeystoreFile string `json:"keystoreFile"`
		} `json:"ssl"`
	} `json:"httpServer"`
	TokenCallbacks []struct {
		IssuerID        string `json:"issuerId"`
		RequestMappings []struct {
			Claims map[string]any `json:"claims"`
		} `json:"requestMappings"`
	} `json:"tokenCallbacks"`
}

func idpAgrees(e *env) error {
	sl, err := e.sluice()
	if err != nil {
		return err
	}
	var errs []error
	for i, is := range e.cfg.Identity.Issuers {
		if err := e.issuerAgrees(sl, is); err != nil {
			errs = append(errs, fmt.Errorf("identity.issuers[%d] %s: %w", i, is.Issuer, err))
		}
	}
	return errors.Join(errs...)
}

func (e *env) issuerAgrees(sl types.ServiceConfig, is policies.Issuer) error {
	u, err := url.Parse(is.Issuer)
	if err != nil {
		return err
	}
	idp, ok := e.p.Services[u.Hostname()]
	if !ok {
		return nil // namedHostsAreServices reports it
	}
	port, _ := strconv.Atoi(u.Port())
	if port == 0 {
		port = map[string]int{"http": 80, "https": 443}[u.Scheme]
	}
	if got := envValue(idp, "SERVER_PORT"); got != strconv.Itoa(port) {
		return fmt.Errorf("service %s listens on SERVER_PORT %q, the issuer URL says %d", idp.Name, got, port)
	}
	if !publishes(idp, port) {
		return fmt.Errorf("service %s does not publish %d: agents on the host cannot get tokens", idp.Name, port)
	}
	src, ok := mountFor(idp, envValue(idp, "JSON_CONFIG_PATH"))
	if !ok {
		return fmt.Errorf("service %s: JSON_CONFIG_PATH is not a mounted file", idp.Name)
	}
	raw, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	var ic idpConfig
	if err := json.Unmarshal(raw, &ic); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if err := claimsAgree(e.cfg, is, ic, strings.Trim(u.Path, "/")); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if u.Scheme != "https" {
		return nil
	}
	if ic.HTTPServer.SSL == nil || ic.HTTPServer.SSL.KeystoreFile == "" {
		return fmt.Errorf("%s: the issuer is https, but the IdP serves plain http", src)
	}
	if _, ok := mountFor(idp, ic.HTTPServer.SSL.KeystoreFile); !ok {
		return fmt.Errorf("service %s: keystore %s is not mounted", idp.Name, ic.HTTPServer.SSL.KeystoreFile)
	}
	return trusts(sl, u.Hostname())
}

// claimsAgree: every token the IdP mints for this issuer carries one of the
// issuer's audiences and a groups claim, and some policy names a group it
// hands out.
func claimsAgree(cfg *policies.Config, is policies.Issuer, ic idpConfig, issuerID string) error {
	var policyGroups []string
	for _, p := range cfg.Policies {
		policyGroups = append(policyGroups, p.Principals.Groups...)
	}
	mappings, usable := 0, false
	for _, cb := range ic.TokenCallbacks {
		if cb.IssuerID != issuerID {
			continue
		}
		for _, m := range cb.RequestMappings {
			mappings++
			aud, _ := m.Claims["aud"].([]any)
			if !slices.ContainsFunc(aud, func(a any) bool { s, _ := a.(string); return slices.Contains(is.Audiences, s) }) {
				return fmt.Errorf("a token mapping has aud %v, sluice accepts %v", m.Claims["aud"], is.Audiences)
			}
			groups, _ := m.Claims[is.GroupsClaim].([]any)
			if len(groups) == 0 {
				return fmt.Errorf("a token mapping has no %q claim", is.GroupsClaim)
			}
			for _, g := range groups {
				s, _ := g.(string)
				usable = usable || slices.Contains(policyGroups, s)
			}
		}
	}
	switch {
	case mappings == 0:
		return fmt.Errorf("no token mappings for issuer id %q", issuerID)
	case !usable:
		return fmt.Errorf("no token carries a group any policy names (%v)", policyGroups)
	}
	return nil
}

// trusts: sluice's SSL_CERT_DIR includes a mounted certificate valid for
// host, so Go's TLS stack verifies the issuer.
func trusts(sl types.ServiceConfig, host string) error {
	for _, dir := range strings.Split(envValue(sl, "SSL_CERT_DIR"), ":") {
		for _, v := range sl.Volumes {
			if dir == "" || v.Type != types.VolumeTypeBind || path.Dir(v.Target) != dir {
				continue
			}
			pemBytes, err := os.ReadFile(v.Source)
			if err != nil {
				continue
			}
			if b, _ := pem.Decode(pemBytes); b != nil {
				if c, err := x509.ParseCertificate(b.Bytes); err == nil && c.VerifyHostname(host) == nil {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("service %s trusts no mounted certificate for %s (SSL_CERT_DIR=%q)", sl.Name, host, envValue(sl, "SSL_CERT_DIR"))
}
