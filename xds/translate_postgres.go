package xds

import (
	"fmt"
	"net/netip"
	"time"

	postgresv3alpha "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	netauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	starttlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/starttls/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicehq/sluice/policies"
)

// postgres adds a Postgres target's listener, upstream cluster and, with
// TLS, its certificate secrets. The chain is
//
//	postgres_proxy → ext_authz → ext_proc → tcp_proxy
//
// Read filters run in this order and write filters in reverse
// (envoy-contract.md section 0.1), so ext_proc sees the client's bytes
// after postgres_proxy has removed TLS, and the server's bytes before
// postgres_proxy does (section 5, "Ordering").
//
// With TLS to the server (credentials.client_cert_file or
// upstream_ca_file) the chain is
//
//	ext_authz → postgres_proxy → ext_proc → tcp_proxy
//
// because postgres_proxy then sends the server an SSLRequest of its own
// (injectReadDataToFilterChain) before any client byte passes it, and
// ext_authz, which waits for its first bytes and then resumes with the
// connection's read buffer (continueReading), would swallow injected
// bytes: the SSLRequest would never reach the server (section 5,
// "Upstream REQUIRE"). sluice's connection check reads only addresses,
// which are known before the first byte.
func (t *translator) postgres(tg *policies.Target) {
	host, port, err := hostPort(tg.Upstream)
	if err != nil {
		t.fail(fmt.Errorf("target %q: upstream %q: %w", tg.Name, tg.Upstream, err))
		return
	}
	name := tg.Name

	pg := &postgresv3alpha.PostgresProxy{
		StatPrefix: name,
		// sluice parses every statement itself (pg_query, in ext_proc) and
		// decides on that parse; Envoy's hsql parse would be a second,
		// weaker opinion that costs CPU per statement and whose metadata
		// nothing reads. Off, so there is one parser and one truth.
		EnableSqlParsing: wrapperspb.Bool(false),
		DownstreamSsl:    postgresv3alpha.PostgresProxy_DISABLE,
		UpstreamSsl:      postgresv3alpha.PostgresProxy_DISABLE,
	}
	if tg.UpstreamTLS() {
		pg.UpstreamSsl = postgresv3alpha.PostgresProxy_REQUIRE
	}
	if tg.TLS != nil {
		pg.DownstreamSsl = postgresv3alpha.PostgresProxy_ALLOW
		if tg.TLS.Require {
			pg.DownstreamSsl = postgresv3alpha.PostgresProxy_REQUIRE
		}
	}

	authz := &netauthzv3.ExtAuthz{
		StatPrefix:          name,
		GrpcService:         grpcService(t.authzCluster, t.cfg.Envoy.AuthzTimeout),
		FailureModeAllow:    false,
		TransportApiVersion: corev3.ApiVersion_V3,
	}

	extproc := &netextprocv3.NetworkExternalProcessor{
		GrpcService:      grpcService(t.extprocCluster, 0),
		FailureModeAllow: false,
		ProcessingMode: &netextprocv3.ProcessingMode{
			ProcessRead:  netextprocv3.ProcessingMode_STREAMED,
			ProcessWrite: netextprocv3.ProcessingMode_STREAMED,
		},
		MessageTimeout: durationpb.New(postgresMessageTimeout(t.cfg, name)),
		StatPrefix:     name,
		// ext_authz stores sluice's CheckResponse.dynamic_metadata (the
		// target name) on the connection before the first byte reaches
		// ext_proc; forwarding it tells sluice's ext_proc the target, which
		// network ext_proc has no other way to learn (section 1.1).
		MetadataOptions: &netextprocv3.MetadataOptions{
			ForwardingNamespaces: &netextprocv3.MetadataOptions_MetadataNamespaces{Untyped: []string{nsNetAuthz}},
		},
	}

	// upstream_connect_mode stays IMMEDIATE (the default): tcp_proxy dials
	// the upstream at accept, before ext_authz or ext_proc has seen a byte
	// (section 6). The dial costs the upstream an idle TCP connection and
	// nothing more: Postgres speaks only after the client's StartupMessage,
	// and no client byte reaches it before ext_authz has allowed the
	// connection and ext_proc has passed the byte on. A refused connection
	// closes both sides.
	tcp := &tcpproxyv3.TcpProxy{
		StatPrefix:       name,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: ClusterName(name)},
		IdleTimeout:      durationOrNil(tg.IdleTimeout),
	}

	chain := &listenerv3.FilterChain{Filters: []*listenerv3.Filter{
		t.filter(filterPostgres, pg),
		t.filter(filterNetAuthz, authz),
		t.filter(filterNetExtProc, extproc),
		t.filter(filterTCPProxy, tcp),
	}}
	if tg.UpstreamTLS() {
		chain.Filters[0], chain.Filters[1] = chain.Filters[1], chain.Filters[0]
	}
	if tg.TLS != nil {
		// postgres_proxy answers SSLRequest with 'S' and then switches the
		// connection to TLS, which only a starttls transport socket can do
		// (section 5); without it the connection is closed.
		secret := DownstreamCertSecret(name)
		t.certSecret(secret, tg.TLS.CertFile, tg.TLS.KeyFile)
		chain.TransportSocket = t.transportSocket(socketStartTLS, &starttlsv3.StartTlsConfig{
			CleartextSocketConfig: &rawbufferv3.RawBuffer{},
			TlsSocketConfig: &tlsv3.DownstreamTlsContext{
				CommonTlsContext: &tlsv3.CommonTlsContext{
					TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(secret)},
				},
			},
		})
	}

	t.res.Listeners = append(t.res.Listeners, t.listener(tg, chain))
	c := t.cluster(ClusterName(name), host, port)
	if tg.UpstreamTLS() {
		// A Postgres connection starts in clear text (postgres_proxy's
		// SSLRequest, the server's 'S'); postgres_proxy then calls
		// startUpstreamSecureTransport, which only a starttls socket
		// implements. Without it the connection is closed (section 5).
		c.TransportSocket = t.transportSocket(socketStartTLS, &starttlsv3.UpstreamStartTlsConfig{
			CleartextSocketConfig: &rawbufferv3.RawBuffer{},
			TlsSocketConfig:       t.postgresUpstreamTLS(tg, host),
		})
	}
	t.res.Clusters = append(t.res.Clusters, c)
}

// postgresUpstreamTLS is the TLS context Envoy speaks to a Postgres server
// with, as libpq would with the same settings: the client certificate
// (SDS "<target>-upstream-client-cert") when one is configured; with
// upstream_ca_file, the chain verified against it (SDS
// "<target>-upstream-ca") and the name against upstream_sni or the host (a
// DNS SAN for a name, an IP SAN for an address), which is sslmode
// verify-full; without it, no verification, which is sslmode require. SNI
// is upstream_sni or the host name, never an IP address (RFC 6066 section
// 3); Envoy sends none unless told.
func (t *translator) postgresUpstreamTLS(tg *policies.Target, host string) *tlsv3.UpstreamTlsContext {
	common := &tlsv3.CommonTlsContext{}
	sni := host
	san := &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: exact(host)}
	if _, err := netip.ParseAddr(host); err == nil {
		sni = ""
		san.SanType = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
	}
	if tg.UpstreamSNI != "" {
		sni = tg.UpstreamSNI
		san = &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: exact(tg.UpstreamSNI)}
	}
	if tg.UpstreamCAFile != "" {
		secret := UpstreamCASecret(tg.Name)
		t.caSecret(secret, tg.UpstreamCAFile)
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san},
				},
				ValidationContextSdsSecretConfig: sdsSecret(secret),
			},
		}
	}
	if tg.Credentials.ClientCertFile != "" {
		secret := UpstreamClientCertSecret(tg.Name)
		t.certSecret(secret, tg.Credentials.ClientCertFile, tg.Credentials.ClientKeyFile)
		common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{sdsSecret(secret)}
	}
	return &tlsv3.UpstreamTlsContext{CommonTlsContext: common, Sni: sni}
}

// postgresMessageTimeout is how long network ext_proc waits for sluice to
// answer one chunk: the configured message timeout plus the longest
// approval wait of any policy on the target, since a statement that waits
// for a human is a chunk left unanswered that long (design.md section 6).
// It is capped at the PGV maximum of one hour.
func postgresMessageTimeout(cfg *policies.Config, target string) time.Duration {
	return capMessageTimeout(extProcTimeout(cfg) + cfg.MaxWait(target))
}
