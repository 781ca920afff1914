package xds

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	postgresv3alpha "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	netauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	starttlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/starttls/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/sluicehq/sluice/policies"
)

const (
	demoConfig   = "../policies/examples/demo.yaml"
	tlsConfig    = "testdata/configs/xds-tls.yaml"
	sharedConfig = "testdata/configs/xds-shared.yaml"
)

// TestFailClosedEverywhere: every ext_authz and ext_proc in every config
// has failure_mode_allow false and a gRPC service.
func TestFailClosedEverywhere(t *testing.T) {
	for _, path := range goldenConfigs(t) {
		cfg, err := policies.LoadFile(path)
		if err != nil {
			continue // reported by TestGolden
		}
		res, err := Translate(cfg)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		n := 0
		for _, f := range collect[*netauthzv3.ExtAuthz](t, res) {
			n++
			if f.GetFailureModeAllow() || f.GetGrpcService() == nil {
				t.Errorf("%s: network ext_authz %s: failure_mode_allow=%v grpc_service=%v", path, f.GetStatPrefix(), f.GetFailureModeAllow(), f.GetGrpcService())
			}
		}
		for _, f := range collect[*netextprocv3.NetworkExternalProcessor](t, res) {
			n++
			if f.GetFailureModeAllow() || f.GetGrpcService() == nil {
				t.Errorf("%s: network ext_proc %s: failure_mode_allow=%v", path, f.GetStatPrefix(), f.GetFailureModeAllow())
			}
		}
		for _, f := range collect[*httpauthzv3.ExtAuthz](t, res) {
			n++
			if f.GetFailureModeAllow() || f.GetGrpcService() == nil {
				t.Errorf("%s: http ext_authz: failure_mode_allow=%v", path, f.GetFailureModeAllow())
			}
		}
		for _, f := range collect[*httpextprocv3.ExternalProcessor](t, res) {
			n++
			if f.GetFailureModeAllow() || f.GetGrpcService() == nil {
				t.Errorf("%s: http ext_proc: failure_mode_allow=%v", path, f.GetFailureModeAllow())
			}
		}
		want := 2 * len(cfg.Targets)
		for _, hcm := range collect[*hcmv3.HttpConnectionManager](t, res) {
			want += 2 * len(hcm.GetUpgradeConfigs()) // each upgrade chain has its own pair
		}
		if n != want {
			t.Errorf("%s: %d ext_authz/ext_proc filters, want %d (two per target and per upgrade chain)", path, n, want)
		}
	}
}

func TestPostgresChain(t *testing.T) {
	_, res := load(t, demoConfig)
	l := findListener(t, res, "orders-db")
	if sa := l.GetAddress().GetSocketAddress(); sa.GetAddress() != "0.0.0.0" || sa.GetPortValue() != 15432 {
		t.Errorf("address = %v", sa)
	}
	if len(l.GetFilterChains()) != 1 {
		t.Fatalf("%d filter chains, want 1", len(l.GetFilterChains()))
	}
	chain := l.GetFilterChains()[0]
	want := []string{filterPostgres, filterNetAuthz, filterNetExtProc, filterTCPProxy}
	if got := names(chain.GetFilters()); !slices.Equal(got, want) {
		t.Fatalf("filters = %v, want %v", got, want)
	}
	if chain.GetTransportSocket() != nil {
		t.Errorf("a target without tls has transport socket %v", chain.GetTransportSocket())
	}

	pg := unpack[*postgresv3alpha.PostgresProxy](t, chain.Filters[0].GetTypedConfig())
	if pg.GetEnableSqlParsing() == nil || pg.GetEnableSqlParsing().GetValue() {
		t.Errorf("enable_sql_parsing = %v, want explicit false (its default is true)", pg.GetEnableSqlParsing())
	}
	if pg.GetDownstreamSsl() != postgresv3alpha.PostgresProxy_DISABLE || pg.GetStatPrefix() != "orders-db" {
		t.Errorf("postgres_proxy = %v", pg)
	}

	authz := unpack[*netauthzv3.ExtAuthz](t, chain.Filters[1].GetTypedConfig())
	if c := authz.GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != AuthzCluster {
		t.Errorf("ext_authz cluster = %q", c)
	}
	if d := authz.GetGrpcService().GetTimeout().AsDuration(); d != time.Second {
		t.Errorf("ext_authz timeout = %v, want 1s (envoy.authz_timeout default)", d)
	}
	if authz.GetTransportApiVersion() != corev3.ApiVersion_V3 || authz.GetStatPrefix() != "orders-db" {
		t.Errorf("ext_authz = %v", authz)
	}

	ep := unpack[*netextprocv3.NetworkExternalProcessor](t, chain.Filters[2].GetTypedConfig())
	if c := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != ExtProcCluster {
		t.Errorf("ext_proc cluster = %q", c)
	}
	if ep.GetGrpcService().GetTimeout() != nil {
		t.Errorf("ext_proc grpc_service has a stream timeout %v; a session outlives any", ep.GetGrpcService().GetTimeout())
	}
	// demo: extproc_message_timeout default 5s + policy wait 2m.
	if d := ep.GetMessageTimeout().AsDuration(); d != 5*time.Second+2*time.Minute {
		t.Errorf("message_timeout = %v, want 2m5s", d)
	}
	pm := ep.GetProcessingMode()
	if pm == nil || pm.GetProcessRead() != netextprocv3.ProcessingMode_STREAMED || pm.GetProcessWrite() != netextprocv3.ProcessingMode_STREAMED {
		t.Errorf("processing_mode = %v", pm)
	}
	if ns := ep.GetMetadataOptions().GetForwardingNamespaces().GetUntyped(); !slices.Equal(ns, []string{"envoy.filters.network.ext_authz"}) {
		t.Errorf("forwarding namespaces = %v", ns)
	}
	if ep.GetStatPrefix() != "orders-db" {
		t.Errorf("ext_proc stat_prefix = %q", ep.GetStatPrefix())
	}

	tcp := unpack[*tcpproxyv3.TcpProxy](t, chain.Filters[3].GetTypedConfig())
	if tcp.GetCluster() != "orders-db" || tcp.GetStatPrefix() != "orders-db" {
		t.Errorf("tcp_proxy = %v", tcp)
	}
	if tcp.GetUpstreamConnectMode() != tcpproxyv3.UpstreamConnectMode_IMMEDIATE {
		t.Errorf("upstream_connect_mode = %v", tcp.GetUpstreamConnectMode())
	}
	if d := tcp.GetIdleTimeout().AsDuration(); d != time.Hour {
		t.Errorf("idle_timeout = %v, want 1h", d)
	}

	c := findCluster(t, res, "orders-db")
	if c.GetType() != clusterv3.Cluster_STATIC || c.GetConnectTimeout().AsDuration() != 5*time.Second {
		t.Errorf("cluster type %v connect_timeout %v", c.GetType(), c.GetConnectTimeout())
	}
	ep0 := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if ep0.GetAddress() != "127.0.0.1" || ep0.GetPortValue() != 5432 {
		t.Errorf("endpoint = %v", ep0)
	}
}

func TestPostgresStartTLS(t *testing.T) {
	_, res := load(t, tlsConfig)
	for _, tc := range []struct {
		target string
		mode   postgresv3alpha.PostgresProxy_SSLMode
	}{
		{"tls-required-db", postgresv3alpha.PostgresProxy_REQUIRE},
		{"tls-allowed-db", postgresv3alpha.PostgresProxy_ALLOW},
	} {
		chain := findListener(t, res, tc.target).GetFilterChains()[0]
		pg := unpack[*postgresv3alpha.PostgresProxy](t, chain.GetFilters()[0].GetTypedConfig())
		if pg.GetDownstreamSsl() != tc.mode {
			t.Errorf("%s: downstream_ssl = %v, want %v", tc.target, pg.GetDownstreamSsl(), tc.mode)
		}
		ts := chain.GetTransportSocket()
		if ts.GetName() != "envoy.transport_sockets.starttls" {
			t.Fatalf("%s: transport socket %q", tc.target, ts.GetName())
		}
		st := unpack[*starttlsv3.StartTlsConfig](t, ts.GetTypedConfig())
		if st.GetCleartextSocketConfig() == nil {
			t.Errorf("%s: no cleartext_socket_config", tc.target)
		}
		sds := st.GetTlsSocketConfig().GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()
		if len(sds) != 1 || sds[0].GetName() != tc.target+"-downstream-cert" || sds[0].GetSdsConfig().GetAds() == nil {
			t.Fatalf("%s: sds = %v", tc.target, sds)
		}
		secret := findSecret(t, res, sds[0].GetName())
		cert, _ := os.ReadFile("testdata/certs/server.crt")
		key, _ := os.ReadFile("testdata/certs/server.key")
		tc := secret.GetTlsCertificate()
		if !bytes.Equal(tc.GetCertificateChain().GetInlineBytes(), cert) || !bytes.Equal(tc.GetPrivateKey().GetInlineBytes(), key) {
			t.Errorf("secret %s does not carry the PEM files' bytes", secret.GetName())
		}
	}
}

func TestHTTPChain(t *testing.T) {
	_, res := load(t, demoConfig)
	chain := findListener(t, res, "cluster-api").GetFilterChains()[0]
	if len(chain.GetFilters()) != 1 || chain.GetFilters()[0].GetName() != filterHCM {
		t.Fatalf("filters = %v", names(chain.GetFilters()))
	}
	hcm := unpack[*hcmv3.HttpConnectionManager](t, chain.GetFilters()[0].GetTypedConfig())
	if got, want := names(hcm.GetHttpFilters()), []string{filterHTTPAuthz, filterHTTPExtProc, filterRouter}; !slices.Equal(got, want) {
		t.Fatalf("http filters = %v, want %v", got, want)
	}
	if hcm.GetRds().GetRouteConfigName() != "cluster-api" || hcm.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("rds = %v", hcm.GetRds())
	}
	if hcm.GetStatPrefix() != "cluster-api" || !hcm.GetUseRemoteAddress().GetValue() {
		t.Errorf("hcm stat_prefix %q use_remote_address %v", hcm.GetStatPrefix(), hcm.GetUseRemoteAddress())
	}
	// upgrade_configs: TestHTTPUpgradeChain (translate_http_test.go).

	authz := unpack[*httpauthzv3.ExtAuthz](t, hcm.GetHttpFilters()[0].GetTypedConfig())
	if authz.GetGrpcService().GetEnvoyGrpc().GetClusterName() != AuthzCluster || authz.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		t.Errorf("ext_authz = %v", authz)
	}
	if d := authz.GetGrpcService().GetTimeout().AsDuration(); d != time.Second {
		t.Errorf("ext_authz timeout = %v", d)
	}

	ep := unpack[*httpextprocv3.ExternalProcessor](t, hcm.GetHttpFilters()[1].GetTypedConfig())
	pm := ep.GetProcessingMode()
	if pm.GetRequestHeaderMode() != httpextprocv3.ProcessingMode_SEND ||
		pm.GetResponseHeaderMode() != httpextprocv3.ProcessingMode_SEND ||
		pm.GetRequestBodyMode() != httpextprocv3.ProcessingMode_BUFFERED ||
		pm.GetResponseBodyMode() != httpextprocv3.ProcessingMode_STREAMED ||
		pm.GetRequestTrailerMode() != httpextprocv3.ProcessingMode_SKIP ||
		pm.GetResponseTrailerMode() != httpextprocv3.ProcessingMode_SKIP {
		t.Errorf("processing_mode = %v", pm)
	}
	if d := ep.GetMessageTimeout().AsDuration(); d != 5*time.Second {
		t.Errorf("message_timeout = %v, want 5s", d)
	}
	if c := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != ExtProcCluster {
		t.Errorf("ext_proc cluster = %q", c)
	}

	rc := findRoute(t, res, "cluster-api")
	vh := rc.GetVirtualHosts()
	if len(vh) != 1 || !slices.Equal(vh[0].GetDomains(), []string{"*"}) || len(vh[0].GetRoutes()) != 1 {
		t.Fatalf("virtual hosts = %v", vh)
	}
	r := vh[0].GetRoutes()[0]
	if r.GetMatch().GetPrefix() != "/" || r.GetRoute().GetCluster() != "cluster-api" {
		t.Errorf("route = %v", r)
	}
	if to := r.GetRoute().GetTimeout(); to == nil || to.AsDuration() != 0 {
		t.Errorf("route timeout = %v, want explicit 0s (request_timeout: 0s)", to)
	}
	per := unpack[*httpauthzv3.ExtAuthzPerRoute](t, r.GetTypedPerFilterConfig()[filterHTTPAuthz])
	if got := per.GetCheckSettings().GetContextExtensions()["target"]; got != "cluster-api" {
		t.Errorf("context_extensions target = %q", got)
	}
}

func TestUpstreamTLS(t *testing.T) {
	_, res := load(t, tlsConfig)
	upstream := func(name string) (*clusterv3.Cluster, *tlsv3.UpstreamTlsContext) {
		c := findCluster(t, res, name)
		if c.GetTransportSocket().GetName() != "envoy.transport_sockets.tls" {
			t.Fatalf("%s: transport socket %v", name, c.GetTransportSocket())
		}
		return c, unpack[*tlsv3.UpstreamTlsContext](t, c.GetTransportSocket().GetTypedConfig())
	}

	_, k8s := upstream("cluster-api")
	if k8s.GetSni() != "kubernetes.default.svc" {
		t.Errorf("cluster-api sni = %q", k8s.GetSni())
	}
	combined := k8s.GetCommonTlsContext().GetCombinedValidationContext()
	san := combined.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(san) != 1 || san[0].GetSanType() != tlsv3.SubjectAltNameMatcher_DNS || san[0].GetMatcher().GetExact() != "kubernetes.default.svc" {
		t.Errorf("cluster-api SAN matchers = %v", san)
	}
	if n := combined.GetValidationContextSdsSecretConfig().GetName(); n != "cluster-api-upstream-ca" {
		t.Errorf("CA secret = %q", n)
	}
	ca, _ := os.ReadFile("testdata/certs/ca.crt")
	if got := findSecret(t, res, "cluster-api-upstream-ca").GetValidationContext().GetTrustedCa().GetInlineBytes(); !bytes.Equal(got, ca) {
		t.Error("CA secret does not carry ca.crt")
	}
	if s := k8s.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs(); len(s) != 1 || s[0].GetName() != "cluster-api-upstream-client-cert" {
		t.Errorf("client cert sds = %v", s)
	}
	findSecret(t, res, "cluster-api-upstream-client-cert")

	saasCluster, saas := upstream("saas-api")
	if saas.GetSni() != "api.example.com" || saasCluster.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Errorf("saas-api sni %q type %v", saas.GetSni(), saasCluster.GetType())
	}
	vc := saas.GetCommonTlsContext().GetValidationContext()
	if vc.GetTrustedCa().GetFilename() != SystemTrustStore || vc.GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact() != "api.example.com" {
		t.Errorf("saas-api validation = %v", vc)
	}
	if p := saasCluster.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); p != 443 {
		t.Errorf("saas-api port = %d, want 443", p)
	}
	if h := findRoute(t, res, "saas-api").GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetHostRewriteLiteral(); h != "api.example.com" {
		t.Errorf("host rewrite = %q", h)
	}

	_, ip := upstream("ip-api")
	if ip.GetSni() != "" {
		t.Errorf("ip-api sni = %q, want none for an IP address", ip.GetSni())
	}
	if s := ip.GetCommonTlsContext().GetValidationContext().GetMatchTypedSubjectAltNames()[0]; s.GetSanType() != tlsv3.SubjectAltNameMatcher_IP_ADDRESS || s.GetMatcher().GetExact() != "192.0.2.10" {
		t.Errorf("ip-api SAN = %v", s)
	}

	// Downstream TLS on the HTTP listener comes from SDS.
	ds := unpack[*tlsv3.DownstreamTlsContext](t, findListener(t, res, "cluster-api").GetFilterChains()[0].GetTransportSocket().GetTypedConfig())
	if s := ds.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs(); len(s) != 1 || s[0].GetName() != "cluster-api-downstream-cert" {
		t.Errorf("downstream sds = %v", s)
	}
}

func TestSluiceClusters(t *testing.T) {
	_, res := load(t, demoConfig)
	for name, port := range map[string]uint32{AuthzCluster: 9001, ExtProcCluster: 9002} {
		c := findCluster(t, res, name)
		sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != port {
			t.Errorf("%s endpoint = %v", name, sa)
		}
		opts := unpack[*upstreamhttpv3.HttpProtocolOptions](t, c.GetTypedExtensionProtocolOptions()[httpProtocolExt])
		if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
			t.Errorf("%s is not HTTP/2: %v", name, opts)
		}
	}

	_, shared := load(t, sharedConfig)
	var grpcClusters []string
	for _, c := range shared.Clusters {
		if strings.HasPrefix(c.GetName(), "sluice_") {
			grpcClusters = append(grpcClusters, c.GetName())
		}
	}
	if !slices.Equal(grpcClusters, []string{SharedGRPCCluster}) {
		t.Fatalf("sluice clusters = %v, want one %s", grpcClusters, SharedGRPCCluster)
	}
	c := findCluster(t, shared, SharedGRPCCluster)
	sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if sa.GetAddress() != "sluice" || sa.GetPortValue() != 9001 || c.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Errorf("shared cluster %v type %v", sa, c.GetType())
	}
	for _, g := range collect[*corev3.GrpcService](t, shared) {
		if n := g.GetEnvoyGrpc().GetClusterName(); n != SharedGRPCCluster {
			t.Errorf("a filter uses cluster %q", n)
		}
	}
}

func TestSharedConfigDetails(t *testing.T) {
	_, res := load(t, sharedConfig)
	// Disabled targets keep their listeners; sluice's ext_authz refuses
	// their connections and requests.
	for _, name := range []string{"legacy-db", "inventory"} {
		findListener(t, res, name)
	}
	if got := findCluster(t, res, "reports-db").GetType(); got != clusterv3.Cluster_STRICT_DNS {
		t.Errorf("reports-db type = %v", got)
	}
	if got := findCluster(t, res, "legacy-db").GetType(); got != clusterv3.Cluster_STATIC {
		t.Errorf("legacy-db (IPv6 literal) type = %v", got)
	}
	eps := collect[*netextprocv3.NetworkExternalProcessor](t, res)
	for _, ep := range eps {
		// 2s + 57m30s.
		if d := ep.GetMessageTimeout().AsDuration(); d != 57*time.Minute+32*time.Second {
			t.Errorf("%s: message_timeout = %v", ep.GetStatPrefix(), d)
		}
	}
	for target, want := range map[string]time.Duration{"legacy-db": time.Hour, "reports-db": 10 * time.Minute} {
		f := findListener(t, res, target).GetFilterChains()[0].GetFilters()[3]
		if d := unpack[*tcpproxyv3.TcpProxy](t, f.GetTypedConfig()).GetIdleTimeout().AsDuration(); d != want {
			t.Errorf("%s idle_timeout = %v, want %v", target, d, want)
		}
	}
	if sa := findListener(t, res, "reports-db").GetAddress().GetSocketAddress(); sa.GetAddress() != "::" || !sa.GetIpv4Compat() {
		t.Errorf("listen address = %v, want :: with ipv4_compat", sa)
	}
}

// TestMessageTimeoutCap: a wait past Envoy's one-hour limit is capped, for
// configs built in code (policies refuses such a file).
func TestMessageTimeoutCap(t *testing.T) {
	cfg, _ := load(t, demoConfig)
	cfg.Policies[0].Wait = 2 * time.Hour
	cfg.Envoy.ExtProcMessageTimeout = 90 * time.Minute
	res, err := Translate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range collect[*netextprocv3.NetworkExternalProcessor](t, res) {
		if d := ep.GetMessageTimeout().AsDuration(); d != time.Hour {
			t.Errorf("network message_timeout = %v, want 1h", d)
		}
	}
	for _, ep := range collect[*httpextprocv3.ExternalProcessor](t, res) {
		if d := ep.GetMessageTimeout().AsDuration(); d != time.Hour {
			t.Errorf("http message_timeout = %v, want 1h", d)
		}
	}
	if err := res.Validate(); err != nil {
		t.Errorf("capped resources do not validate: %v", err)
	}
}

// TestDeterministic: the same config gives the same bytes whatever the
// order of its targets.
func TestDeterministic(t *testing.T) {
	cfg, a := load(t, tlsConfig)
	slices.Reverse(cfg.Targets)
	b, err := Translate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ha, _ := a.Hash()
	hb, _ := b.Hash()
	if ha != hb || !bytes.Equal(render(t, a), render(t, b)) {
		t.Errorf("reordered targets changed the output: %s vs %s", ha, hb)
	}
	cfg.Targets[0].Port++
	c, _ := Translate(cfg)
	if hc, _ := c.Hash(); hc == ha {
		t.Error("a changed port did not change the hash")
	}
}

func TestTranslateErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*policies.Config)
		want   string
	}{
		{"missing cert", func(c *policies.Config) {
			target(t, c, "tls-allowed-db").TLS.CertFile = filepath.Join(dir, "gone.crt")
		}, "secret tls-allowed-db-downstream-cert"},
		{"mismatched key", func(c *policies.Config) {
			target(t, c, "tls-allowed-db").TLS.KeyFile = "testdata/certs/client.key"
		}, "private key does not match"},
		{"CA without certificate", func(c *policies.Config) {
			target(t, c, "cluster-api").UpstreamCAFile = garbage
		}, "holds no PEM certificate"},
		{"unknown kind", func(c *policies.Config) { target(t, c, "saas-api").Kind = "ssh" }, `unknown kind "ssh"`},
		{"bad sluice address", func(c *policies.Config) { c.Server.Authz = "nowhere" }, "server.authz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := policies.LoadFile(tlsConfig)
			if err != nil {
				t.Fatal(err)
			}
			tc.mutate(cfg)
			_, err = Translate(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Translate error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func target(t *testing.T, c *policies.Config, name string) *policies.Target {
	t.Helper()
	tg, ok := c.Target(name)
	if !ok {
		t.Fatalf("no target %q", name)
	}
	return tg
}
