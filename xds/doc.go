// Package xds turns sluice's config into Envoy resources and serves them to
// Envoy over the aggregated discovery service (ADS), state of the world and
// delta. Envoy carries every byte; what it does with them is decided here.
//
//	policies.Config → Translate → Resources → Validate → Snapshot + Consistent → SetSnapshot(node)
//	Envoy ← LDS, CDS, RDS, SDS over one ADS stream (SotW or delta) ← snapshot cache
//	Envoy → ACK / NACK (error_detail) → logged, counted, sluice_xds_* metrics
//
// # What each target becomes
//
// A Postgres target is a listener on envoy.listen_address:port with one
// filter chain (envoy-contract.md sections 0.1, 5, 6):
//
//	postgres_proxy → network ext_authz → network ext_proc → tcp_proxy → cluster <target>
//
// Filter by filter:
//
//   - postgres_proxy: enable_sql_parsing false (sluice parses every
//     statement itself with pg_query; Envoy's parse would be a second,
//     unused opinion); downstream_ssl REQUIRE when tls.require, ALLOW when
//     tls is set, DISABLE otherwise. With TLS the chain's transport socket
//     is envoy.transport_sockets.starttls (raw_buffer until the
//     SSLRequest, then TLS with the certificate from SDS secret
//     "<target>-downstream-cert"), without which postgres_proxy closes the
//     connection (section 5). upstream_ssl is DISABLE, or REQUIRE for a
//     target with TLS to the server (credentials.client_cert_file or
//     upstream_ca_file): postgres_proxy then sends the server its own
//     SSLRequest and switches the cluster's starttls socket to TLS, with
//     the client certificate (SDS "<target>-upstream-client-cert") and,
//     given a CA (SDS "<target>-upstream-ca"), the server's chain and name
//     verified. Such a chain puts ext_authz first, before postgres_proxy,
//     which would otherwise lose postgres_proxy's injected SSLRequest
//     (translate_postgres.go says why).
//   - network ext_authz (section 2): cluster of sluice's authz, timeout
//     envoy.authz_timeout. The TCP CheckRequest carries no
//     context_extensions: sluice finds the target by the destination port.
//   - network ext_proc (section 1): both directions STREAMED;
//     message_timeout = envoy.extproc_message_timeout + the longest policy
//     wait on the target, capped at one hour (the PGV limit), because a
//     statement waiting for approval is a chunk left unanswered that long.
//     It forwards the untyped metadata namespace
//     envoy.filters.network.ext_authz, where sluice's authz put the target
//     name, so sluice's ext_proc learns the target of each stream.
//   - tcp_proxy: cluster "<target>", idle_timeout from the target.
//     upstream_connect_mode stays IMMEDIATE: Envoy dials the upstream TCP
//     connection at accept, before authorization (section 6). Postgres is
//     client-first and no client byte reaches it before ext_authz and
//     ext_proc passed it, so the dial costs an idle connection, nothing
//     more; a refused connection closes both sides.
//
// An HTTP target is a listener with an HTTP connection manager (section 3,
// 4; design.md section 7):
//
//	ext_authz → ext_proc → router, routes from RDS "<target>" over ADS
//
// In detail:
//
//   - ext_authz: gRPC, timeout envoy.authz_timeout; the route's
//     typed_per_filter_config names the target in context_extensions
//     {"target": "<target>"}.
//   - ext_proc: request headers SEND, request body BUFFERED, response
//     headers SEND, response body STREAMED where a policy on the target
//     masks results and NONE elsewhere, trailers SKIP; message_timeout
//     envoy.extproc_message_timeout; forwards namespace
//     envoy.filters.http.ext_authz.
//   - the HCM uses the peer address (use_remote_address), normalizes paths,
//     merges slashes and refuses encoded slashes, so the path sluice
//     classifies is the path the upstream serves.
//   - upgrade_configs: websocket on every http target, and spdy/3.1 on
//     api: kubernetes targets (exec, attach, port-forward), each with its
//     own chain ext_authz → ext_proc (headers only, no body either way) →
//     router. The same ext_authz decides each upgrade (admin for the
//     Kubernetes subresources); the ext_proc cannot buffer bodies there,
//     because Envoy would hold an upgrade's headers until a body that only
//     starts after the 101 (translate_http.go). Other upgrade types get
//     Envoy's 403.
//   - the route: prefix "/" to cluster "<target>", timeout = request_timeout
//     (0 disables it, for watches), Host rewritten to the upstream's.
//   - downstream TLS (target tls) from SDS "<target>-downstream-cert", ALPN
//     h2 and http/1.1.
//   - an https upstream gets an UpstreamTlsContext: SNI = upstream_sni or
//     the host name (never an IP address); the chain is verified against
//     upstream_ca_file (SDS "<target>-upstream-ca") or, without it, the
//     system store at SystemTrustStore on Envoy's file system; the name is
//     always checked with a SAN matcher (upstream_sni, else the host as a
//     DNS or IP SAN), since Envoy checks only the chain otherwise. A client
//     certificate (credentials.client_cert_file) goes in SDS
//     "<target>-upstream-client-cert".
//
// Every upstream cluster has its endpoint inline: STATIC for an IP
// address, STRICT_DNS (V4_PREFERRED) for a host name; connect_timeout is
// envoy.connect_timeout. sluice's own gRPC services get HTTP/2 clusters at
// SluiceHost() and the ports of server.authz and server.extproc:
// "sluice_authz" and "sluice_extproc", or one "sluice_grpc" when both ports
// are equal. Their circuit breakers are raised to 65,536 streams, since
// network ext_proc holds one stream per Postgres session.
//
// Names: listener, cluster and route configuration of a target are the
// target's name; secrets are "<target>-downstream-cert",
// "<target>-upstream-ca" and "<target>-upstream-client-cert". Target names
// are lower-case letters, digits and '-', so none can collide with the
// "sluice_" clusters. Certificates, keys and CA bundles are read by sluice
// at every translation and sent inline: a rotated file reaches Envoy with
// the next config reload.
//
// # Fail-closed choices
//
//   - failure_mode_allow is false on every ext_authz and ext_proc, and
//     Validate refuses a resource where it is not.
//   - A disabled target keeps its listener and chain: sluice's ext_authz
//     refuses every connection and request for it. Removing the listener
//     would turn "refused by sluice, with a reason" into "connection
//     refused", and re-enabling it would not need a listener drain.
//   - A config that does not translate or validate is never published:
//     Update logs the reason, keeps the running snapshot and returns the
//     error, so the config watcher keeps the running config too.
//   - message timeouts are never left unset (unset means no timer for
//     network ext_proc and an instant timeout for HTTP ext_proc).
//
// # Validation
//
// Validate runs every resource's PGV rules, then unpacks every
// google.protobuf.Any inside (typed_config, typed_per_filter_config,
// transport sockets, typed_extension_protocol_options) and validates it,
// since PGV does not descend into Any (section 7); replicates the checks
// Envoy makes in C++ only (network ext_proc grpc_service and not both SKIP,
// FULL_DUPLEX_STREAMED trailers, tcp_proxy early data, router last,
// starttls for postgres TLS); and checks every cluster, route and secret
// reference. Snapshot then checks Consistent().
//
// # Serving
//
// Server wraps a go-control-plane snapshot cache in ADS mode (responses
// ordered CDS, LDS, RDS, SDS) keyed by node id (envoy.node). Versions are
// "<n>-<hash>": n counts snapshots this process published, hash is the
// start of the SHA-256 of the resources' deterministic encoding. A reload
// that leaves every resource as it was publishes nothing.
//
// A NACK is a request with error_detail (section 7, the only signal). It
// is counted every time, logged once per nonce with the type URL, nonce,
// rejected and accepted versions and Envoy's message, and exported as
// sluice_xds_nacks{type_url}. go-control-plane would answer a SotW NACK by
// resending the rejected snapshot at once, which Envoy rejects again, in a
// loop; the request is therefore rewritten to carry the rejected version,
// which parks the watch until the next snapshot. Delta does not resend.
//
// Metrics (OpenTelemetry; a Prometheus exporter adds _total to counters):
// sluice_xds_nacks and sluice_xds_acks {type_url}, sluice_xds_streams
// {mode=sotw|delta}, sluice_xds_streams_active {mode},
// sluice_xds_snapshots_published, sluice_xds_snapshots_refused.
package xds
