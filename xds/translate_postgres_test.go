package xds

import (
	"strings"
	"testing"

	postgresv3alpha "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	starttlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/starttls/v3"
)

// TestPostgresUpstreamTLS: a postgres target with a client certificate asks
// the server for TLS (upstream_ssl REQUIRE), its cluster starts in clear
// text and switches with the certificate, CA and SNI, and ext_authz comes
// before postgres_proxy, where it cannot swallow the SSLRequest that
// postgres_proxy injects (envoy-contract.md section 5).
func TestPostgresUpstreamTLS(t *testing.T) {
	_, r := load(t, tlsConfig)
	chain := findListener(t, r, "cert-db").GetFilterChains()[0]
	var order []string
	for _, f := range chain.GetFilters() {
		order = append(order, f.GetName())
	}
	if want := []string{filterNetAuthz, filterPostgres, filterNetExtProc, filterTCPProxy}; strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("filters %v, want %v", order, want)
	}
	pg := unpack[*postgresv3alpha.PostgresProxy](t, chain.GetFilters()[1].GetTypedConfig())
	if pg.GetUpstreamSsl() != postgresv3alpha.PostgresProxy_REQUIRE || pg.GetDownstreamSsl() != postgresv3alpha.PostgresProxy_ALLOW {
		t.Errorf("postgres_proxy upstream_ssl %s downstream_ssl %s", pg.GetUpstreamSsl(), pg.GetDownstreamSsl())
	}
	ts := findCluster(t, r, "cert-db").GetTransportSocket()
	if ts.GetName() != socketStartTLS {
		t.Fatalf("cluster transport socket %q", ts.GetName())
	}
	st := unpack[*starttlsv3.UpstreamStartTlsConfig](t, ts.GetTypedConfig())
	up := st.GetTlsSocketConfig()
	if up.GetSni() != "db.sluice.test" {
		t.Errorf("sni %q", up.GetSni())
	}
	common := up.GetCommonTlsContext()
	if n := common.GetTlsCertificateSdsSecretConfigs(); len(n) != 1 || n[0].GetName() != UpstreamClientCertSecret("cert-db") {
		t.Errorf("client certificate secrets %v", n)
	}
	cvc := common.GetCombinedValidationContext()
	if cvc.GetValidationContextSdsSecretConfig().GetName() != UpstreamCASecret("cert-db") ||
		cvc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact() != "db.sluice.test" {
		t.Errorf("validation %v", cvc)
	}
	findSecret(t, r, UpstreamClientCertSecret("cert-db"))
	findSecret(t, r, UpstreamCASecret("cert-db"))

	// A target without TLS to the server keeps the usual order and a raw
	// cluster.
	if got := findListener(t, r, "tls-required-db").GetFilterChains()[0].GetFilters()[0].GetName(); got != filterPostgres {
		t.Errorf("tls-required-db starts with %s", got)
	}
	if ts := findCluster(t, r, "tls-required-db").GetTransportSocket(); ts != nil {
		t.Errorf("tls-required-db cluster has transport socket %s", ts.GetName())
	}
}

// TestValidateUpstreamSSL: Validate refuses what would make postgres_proxy's
// upstream TLS fail at run time: ext_authz after postgres_proxy, or a
// cluster without the starttls transport socket.
func TestValidateUpstreamSSL(t *testing.T) {
	_, r := load(t, tlsConfig)
	chain := findListener(t, r, "cert-db").GetFilterChains()[0]
	chain.Filters[0], chain.Filters[1] = chain.Filters[1], chain.Filters[0]
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "would drop the SSLRequest") {
		t.Errorf("ext_authz after postgres_proxy: %v", err)
	}

	_, r = load(t, tlsConfig)
	findCluster(t, r, "ca-only-db").TransportSocket = nil
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), `needs cluster "ca-only-db" to have transport socket envoy.transport_sockets.starttls`) {
		t.Errorf("raw cluster: %v", err)
	}

	_, r = load(t, tlsConfig)
	if err := r.Validate(); err != nil {
		t.Fatalf("unbroken resources: %v", err)
	}
}
