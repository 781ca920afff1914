package xds

// Names of the resources Translate generates. Target names are lower-case
// letters, digits and '-' (policies validates this), so a name built from a
// target can never collide with the "sluice_" clusters, which contain '_'.
const (
	// AuthzCluster is the cluster of sluice's ext_authz gRPC service when it
	// listens on its own address.
	AuthzCluster = "sluice_authz"
	// ExtProcCluster is the cluster of sluice's ext_proc gRPC service when
	// it listens on its own address.
	ExtProcCluster = "sluice_extproc"
	// SharedGRPCCluster replaces both when server.authz and server.extproc
	// are the same address: one cluster, one HTTP/2 connection pool.
	SharedGRPCCluster = "sluice_grpc"
)

// Envoy extension names and metadata namespaces the generated config uses.
const (
	filterPostgres    = "envoy.filters.network.postgres_proxy"
	filterNetAuthz    = "envoy.filters.network.ext_authz"
	filterNetExtProc  = "envoy.filters.network.ext_proc"
	filterTCPProxy    = "envoy.filters.network.tcp_proxy"
	filterHCM         = "envoy.filters.network.http_connection_manager"
	filterHTTPAuthz   = "envoy.filters.http.ext_authz"
	filterHTTPExtProc = "envoy.filters.http.ext_proc"
	filterRouter      = "envoy.filters.http.router"

	socketStartTLS  = "envoy.transport_sockets.starttls"
	socketTLS       = "envoy.transport_sockets.tls"
	httpProtocolExt = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

	// The namespaces ext_authz writes its CheckResponse.dynamic_metadata to
	// (envoy-contract.md sections 2 and 3). sluice's authz puts the target
	// name there; ext_proc forwards the namespace so sluice's ext_proc
	// learns which target a stream belongs to.
	nsNetAuthz  = filterNetAuthz
	nsHTTPAuthz = filterHTTPAuthz
)

// ContextExtensionTarget is the ext_authz per-route context_extensions key
// that names an HTTP route's target (design.md section 7).
const ContextExtensionTarget = "target"

// SystemTrustStore is the CA bundle, on Envoy's file system, that verifies
// an https upstream when the target names no upstream_ca_file. It is the
// Debian/Ubuntu path, which the official Envoy images use.
const SystemTrustStore = "/etc/ssl/certs/ca-certificates.crt"

// ListenerName, ClusterName and RouteName are the name of a target's
// listener, upstream cluster and route configuration: the target's own name.
// Envoy keeps each resource type in its own namespace.
func ListenerName(target string) string { return target }

// ClusterName is the name of a target's upstream cluster.
func ClusterName(target string) string { return target }

// RouteName is the name of an HTTP target's route configuration (RDS).
func RouteName(target string) string { return target }

// DownstreamCertSecret is the SDS secret holding the certificate and key
// Envoy presents to agents on target's listener.
func DownstreamCertSecret(target string) string { return target + "-downstream-cert" }

// UpstreamCASecret is the SDS secret holding the CA bundle that verifies a
// target's upstream (from upstream_ca_file): an https upstream, or a
// Postgres server Envoy speaks TLS to.
func UpstreamCASecret(target string) string { return target + "-upstream-ca" }

// UpstreamClientCertSecret is the SDS secret holding the client
// certificate Envoy presents to an https upstream (mutual TLS) or to a
// Postgres server (pg_hba.conf cert).
func UpstreamClientCertSecret(target string) string { return target + "-upstream-client-cert" }
