package authz

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

// MetadataNamespace is where the decision travels to later filters, as
// Envoy sets CheckResponse.dynamic_metadata under its own filter name
// (envoy-contract.md sections 2 and 3).
const (
	MetadataNamespaceHTTP    = "envoy.filters.http.ext_authz"
	MetadataNamespaceNetwork = "envoy.filters.network.ext_authz"
)

// GrantStore is what the ext_authz server needs of the grant store.
type GrantStore interface {
	// Active returns the principal's approved, unexpired grants on target.
	Active(ctx context.Context, p policies.Principal, target string, now time.Time) ([]policies.Grant, error)
	// RequestApproval opens (or finds the open) approval request for what
	// was refused, and returns its id.
	RequestApproval(ctx context.Context, r ApprovalRequest) (id string, err error)
}

// ApprovalRequest is what a refused request asks a human for.
type ApprovalRequest struct {
	Principal   policies.Principal
	Target      string
	Class       policies.OperationClass
	Fingerprint string
	Statement   string
	Reason      string
	// Duration is how long the grant lasts once approved.
	Duration time.Duration
	Now      time.Time
}

// Options configure a Server.
type Options struct {
	Logger *slog.Logger
	Meter  metric.Meter
	Grants GrantStore
	Audit  audit.Sink
	// Now is the clock (tests inject one); default time.Now.
	Now func() time.Time
	// VerifierOptions are passed to every Verifier the server builds.
	VerifierOptions []VerifierOption
}

// Server answers Envoy's ext_authz Check for HTTP routes and network
// (Postgres) connections. The config can be replaced at any time by Update;
// each Check sees one consistent snapshot of it.
type Server struct {
	authv3.UnimplementedAuthorizationServer

	opts   Options
	log    *slog.Logger
	state  atomic.Pointer[state]
	checks metric.Int64Counter
}

// state is one config and what is derived from it.
type state struct {
	cfg      *policies.Config
	verifier *Verifier
	byPort   map[uint32]*policies.Target
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// NewServer builds a server for cfg.
func NewServer(cfg *policies.Config, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Meter == nil {
		opts.Meter = noop.NewMeterProvider().Meter("")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Grants == nil || opts.Audit == nil {
		return nil, fmt.Errorf("authz: a grant store and an audit sink are required")
	}
	// Approval requests the server opens are recorded in its own sink.
	opts.Grants = withAudit(opts.Grants, opts.Audit)
	s := &Server{opts: opts, log: opts.Logger}
	var err error
	s.checks, err = opts.Meter.Int64Counter("sluice_authz_checks",
		metric.WithDescription("ext_authz Check calls by kind (http, network) and outcome"))
	if err != nil {
		return nil, err
	}
	s.Update(cfg)
	return s, nil
}

// Update swaps in a new config. A verifier is rebuilt only when the
// issuers changed, so the token cache survives unrelated reloads.
func (s *Server) Update(cfg *policies.Config) error {
	old := s.state.Load()
	st := &state{cfg: cfg, byPort: map[uint32]*policies.Target{}}
	if old != nil && sameIssuers(old.cfg.Identity.Issuers, cfg.Identity.Issuers) {
		st.verifier = old.verifier
	} else {
		vo := append([]VerifierOption{WithClock(s.opts.Now)}, s.opts.VerifierOptions...)
		st.verifier = NewVerifier(cfg.Identity.Issuers, vo...)
	}
	for i := range cfg.Targets {
		st.byPort[uint32(cfg.Targets[i].Port)] = &cfg.Targets[i]
	}
	s.state.Store(st)
	return nil
}

func sameIssuers(a, b []policies.Issuer) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Issuer != b[i].Issuer || a[i].GroupsClaim != b[i].GroupsClaim || fmt.Sprint(a[i].Audiences) != fmt.Sprint(b[i].Audiences) {
			return false
		}
	}
	return true
}

// Register adds the Authorization service to a gRPC server.
func (s *Server) Register(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, s) }

// Check answers one ext_authz call. It never returns a gRPC error for a
// refusal: every outcome is a CheckResponse, so Envoy applies sluice's
// status and body instead of its own error handling.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	st := s.state.Load()
	c := &check{Server: s, auditBy: time.Now().Add(auditBudget(st.cfg.Envoy.AuthzTimeout))}
	attrs := req.GetAttributes()
	if http := attrs.GetRequest().GetHttp(); http != nil && http.GetMethod() != "" {
		resp, outcome := c.checkHTTP(ctx, st, attrs, http)
		s.checks.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", "http"), attribute.String("outcome", outcome)))
		return resp, nil
	}
	resp, outcome := c.checkNetwork(ctx, st, attrs)
	s.checks.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", "network"), attribute.String("outcome", outcome)))
	return resp, nil
}

// peerAddr returns the IP and port of a socket address.
func peerAddr(a *corev3.Address) (netip.AddrPort, bool) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}, false
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue())), true
}

// sourceAllowed applies a target's allowed_sources (empty allows any).
func sourceAllowed(t *policies.Target, src netip.Addr) bool {
	if len(t.AllowedSources) == 0 {
		return true
	}
	for _, s := range t.AllowedSources {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(src) {
			return true
		}
		if a, err := netip.ParseAddr(s); err == nil && a == src {
			return true
		}
	}
	return false
}

// Verify checks a bearer token with the current config's issuers, sharing
// the Check path's verified-token cache. The grants and audit APIs
// authenticate their callers with it.
func (s *Server) Verify(ctx context.Context, raw string) (Verified, error) {
	return s.state.Load().verifier.Verify(ctx, raw)
}
