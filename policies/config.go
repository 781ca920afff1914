package policies

import (
	"time"
)

// Config is the whole operator contract: one YAML file (design.md section 4).
// It is immutable once Load returns it; a reload produces a new *Config.
type Config struct {
	Server    Server        `yaml:"server"`
	Envoy     Envoy         `yaml:"envoy"`
	Identity  Identity      `yaml:"identity"`
	Approvers Approvers     `yaml:"approvers"`
	Auditors  Auditors      `yaml:"auditors"`
	Grants    Grants        `yaml:"grants"`
	Audit     Audit         `yaml:"audit"`
	Telemetry Telemetry     `yaml:"telemetry"`
	Targets   []Target      `yaml:"targets"`
	Policies  []Policy      `yaml:"policies"`
	Masking   []MaskingRule `yaml:"masking"`

	// Source is the file the config was loaded from ("" when loaded from bytes
	// without a name). It is not part of the YAML.
	Source string `yaml:"-"`
	// Digest is "sha256:<hex>" of the bytes it was loaded from, as the
	// audit trail records each config applied.
	Digest string `yaml:"-"`
}

// Server holds the addresses sluice's own services bind to.
type Server struct {
	XDS     string `yaml:"xds"`     // ADS for Envoy
	Authz   string `yaml:"authz"`   // ext_authz gRPC (HTTP and network)
	ExtProc string `yaml:"extproc"` // ext_proc and network ext_proc gRPC
	API     string `yaml:"api"`     // grants, audit, /metrics, health
}

// Envoy describes the Envoy fleet that sluice configures.
type Envoy struct {
	// Node is the xDS node id the snapshot is published for.
	Node string `yaml:"node"`
	// ListenAddress is the address every generated listener binds to.
	ListenAddress string `yaml:"listen_address"`
	// SluiceHost is the host name or address Envoy uses to reach sluice's
	// gRPC services (xDS, ext_authz, ext_proc). It defaults to the host of
	// server.xds; set it when Envoy reaches sluice by another name (for
	// example "sluice" inside docker compose while sluice binds 0.0.0.0).
	SluiceHost string `yaml:"sluice_host"`
	// AdminAddress is where the generated bootstrap puts Envoy's admin
	// endpoint.
	AdminAddress string `yaml:"admin_address"`
	// Delta selects incremental xDS (DELTA_GRPC) in the generated bootstrap.
	Delta bool `yaml:"delta"`
	// AuthzTimeout bounds one ext_authz Check (network and HTTP).
	AuthzTimeout time.Duration `yaml:"authz_timeout"`
	// ExtProcMessageTimeout bounds how long Envoy waits for one ext_proc
	// response. For Postgres targets the effective network ext_proc timeout
	// is raised to cover the longest policy approval wait.
	ExtProcMessageTimeout time.Duration `yaml:"extproc_message_timeout"`
	// ConnectTimeout bounds upstream connection establishment.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
}

// Identity lists the OIDC issuers whose tokens sluice accepts.
type Identity struct {
	Issuers []Issuer `yaml:"issuers"`
}

// Issuer is one trusted OIDC issuer.
type Issuer struct {
	Issuer      string   `yaml:"issuer"`
	Audiences   []string `yaml:"audiences"`
	GroupsClaim string   `yaml:"groups_claim"`
}

// Approvers names who may approve just-in-time grants.
type Approvers struct {
	Groups []string `yaml:"groups"`
	// Webhook, when set, receives a Slack-compatible JSON message for every
	// new pending grant request. The URL itself is a secret reference.
	WebhookURLEnv  string `yaml:"webhook_url_env"`
	WebhookURLFile string `yaml:"webhook_url_file"`
}

// Grants configures the grant store.
type Grants struct {
	// Store is "embedded" or a redis:// / rediss:// URL.
	Store string `yaml:"store"`
	// MaxDuration caps the duration any grant may be requested for.
	MaxDuration time.Duration `yaml:"max_duration"`
}

// Auditors names who may read the audit trail through GET /v1/audit.
type Auditors struct {
	Groups []string `yaml:"groups"`
}

// Audit configures the audit trail.
type Audit struct {
	// Store is sqlite:///path/to/file.db or a postgres:// URL.
	Store     string        `yaml:"store"`
	Retention time.Duration `yaml:"retention"`
	// SigningKeyFile holds the ed25519 key that signs checkpoints (PEM
	// PKCS #8, a raw 32-byte seed, or the seed in hex). Required with a
	// postgres store; without it a sqlite store signs with a key that lives
	// as long as the process.
	SigningKeyFile string `yaml:"signing_key_file"`
	// CheckpointEvery and CheckpointInterval set how often a writer seals
	// its chain with a signed checkpoint: after that many events, or that
	// long after the first unsealed one.
	CheckpointEvery    int           `yaml:"checkpoint_every"`
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// Export copies committed events elsewhere; the store stays the record.
	Export AuditExport `yaml:"export"`
}

// AuditExport names where audit events are copied to.
type AuditExport struct {
	// OTLPEndpoint is host:port of an OTLP/gRPC logs receiver.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	OTLPInsecure bool   `yaml:"otlp_insecure"`
	// JSONL is a file events are appended to as JSON lines, or "-" for
	// stdout.
	JSONL string `yaml:"jsonl"`
}

// Telemetry configures traces, metrics and logs.
type Telemetry struct {
	// ServiceName is the OpenTelemetry service.name resource attribute.
	ServiceName string `yaml:"service_name"`
	// OTLPEndpoint, when set, exports traces and metrics over OTLP/gRPC to
	// that host:port.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// OTLPInsecure disables TLS towards the OTLP endpoint.
	OTLPInsecure bool `yaml:"otlp_insecure"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is json or text.
	LogFormat string `yaml:"log_format"`
}

// TargetKind is the protocol a target speaks.
type TargetKind string

// Target kinds.
const (
	KindPostgres TargetKind = "postgres"
	KindHTTP     TargetKind = "http"
)

// TargetAPI is what an http target speaks.
type TargetAPI string

// Target APIs.
const (
	APIGeneric    TargetAPI = ""
	APIKubernetes TargetAPI = "kubernetes"
)

// Target is one protected upstream that Envoy exposes on its own port.
type Target struct {
	Name string     `yaml:"name"`
	Kind TargetKind `yaml:"kind"`
	// Port is the Envoy listener port agents connect to.
	Port int `yaml:"port"`
	// Upstream is host:port for postgres, an http:// or https:// URL for http.
	Upstream string `yaml:"upstream"`
	// Database is the upstream database name (postgres only).
	Database string `yaml:"database"`
	// Disabled takes a target out of service without removing it: its
	// listener is still generated, and every connection is refused.
	Disabled bool `yaml:"disabled"`
	// Credentials sluice presents upstream; the agent never sees them.
	Credentials Credentials `yaml:"credentials"`
	// TLS is the certificate Envoy presents to agents (postgres: through
	// SSLRequest/starttls; http: on the listener).
	TLS *TLS `yaml:"tls"`
	// UpstreamCAFile verifies the upstream's certificate chain, and its name
	// (upstream_sni, else the upstream's host). For http it applies to an
	// https upstream, which without it is verified against the system trust
	// store. For postgres it turns TLS to the server on (as a client
	// certificate does); without it the server is not verified, as libpq's
	// sslmode=require.
	UpstreamCAFile string `yaml:"upstream_ca_file"`
	// UpstreamSNI is the SNI sent to the upstream and the name its
	// certificate must carry; by default the upstream's host name (an IP
	// address is never sent as SNI). Postgres: only with TLS to the server.
	UpstreamSNI string `yaml:"upstream_sni"`
	// API says what an http target speaks, for classification and
	// masking: "" for any HTTP API (method and path rules), "kubernetes"
	// for a Kubernetes API server (verbs, resources, Secrets masked).
	API TargetAPI `yaml:"api"`
	// RequestTimeout bounds one HTTP request through the route (http only);
	// 0 disables it, as Kubernetes watches need.
	RequestTimeout *time.Duration `yaml:"request_timeout"`
	// IdleTimeout closes an idle connection (postgres only).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// AllowedSources restricts agent source addresses (CIDRs); empty allows any.
	AllowedSources []string `yaml:"allowed_sources"`
}

// Credentials are references to the secrets sluice presents upstream.
// Values are never inlined in the file: each secret is named by an
// environment variable (*_env) or a file (*_file), resolved when used.
type Credentials struct {
	User         string `yaml:"user"`
	PasswordEnv  string `yaml:"password_env"`
	PasswordFile string `yaml:"password_file"`
	BearerEnv    string `yaml:"bearer_env"`
	BearerFile   string `yaml:"bearer_file"`
	// Header names a static header that carries the bearer secret instead of
	// "Authorization: Bearer" (http only), for APIs that take a key in, say,
	// X-API-Key.
	Header string `yaml:"header"`
	// ClientCertFile and ClientKeyFile authenticate to the upstream with a
	// certificate: mutual TLS to an https upstream, or, for postgres, TLS to
	// the server (postgres_proxy upstream_ssl REQUIRE) presenting it, which
	// pg_hba.conf's cert method accepts without a password.
	ClientCertFile string `yaml:"client_cert_file"`
	ClientKeyFile  string `yaml:"client_key_file"`
}

// Password is the reference to the upstream password (postgres).
func (c Credentials) Password() SecretRef {
	return SecretRef{Env: c.PasswordEnv, File: c.PasswordFile}
}

// Bearer is the reference to the upstream bearer token or API key (http).
func (c Credentials) Bearer() SecretRef {
	return SecretRef{Env: c.BearerEnv, File: c.BearerFile}
}

// TLS is a certificate and key on disk.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Require refuses agents that do not negotiate TLS (postgres: a
	// cleartext StartupMessage gets FATAL 28000).
	Require bool `yaml:"require"`
}

// Policy binds principals and targets to what they may do.
type Policy struct {
	Name         string           `yaml:"name"`
	Targets      []string         `yaml:"targets"`
	Principals   Principals       `yaml:"principals"`
	Allow        []OperationClass `yaml:"allow"`
	RequireGrant []OperationClass `yaml:"require_grant"`
	Deny         []OperationClass `yaml:"deny"`
	Mask         []string         `yaml:"mask"`
	MaxRows      int64            `yaml:"max_rows"`
	MaxBytes     int64            `yaml:"max_bytes"`
	// Wait holds a statement that needs a grant for up to this long while a
	// human decides; 0 rejects it at once with the approval request id.
	Wait time.Duration `yaml:"wait"`
	// MaxGrantDuration caps grants requested under this policy.
	MaxGrantDuration time.Duration `yaml:"max_grant_duration"`
	// HTTP lists method/path rules for http targets.
	HTTP []HTTPRule `yaml:"http"`
}

// Principals selects who a policy applies to. An empty selector matches
// nobody; use groups: ["*"] to match every authenticated principal.
type Principals struct {
	Subjects []string `yaml:"subjects"`
	Groups   []string `yaml:"groups"`
	Clients  []string `yaml:"clients"`
}

// HTTPRule classifies HTTP requests by method and path pattern.
type HTTPRule struct {
	Methods []string       `yaml:"methods"`
	Path    string         `yaml:"path"`
	Class   OperationClass `yaml:"class"`
}

// MaskingRule is a named set of columns, JSON paths and detectors.
type MaskingRule struct {
	Name      string   `yaml:"name"`
	Columns   []string `yaml:"columns"`
	JSONPaths []string `yaml:"json_paths"`
	Detectors []string `yaml:"detectors"`
}
