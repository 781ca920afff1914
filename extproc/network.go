package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/policies"
)

// MetadataNamespace is where the session learns its target: sluice's
// network ext_authz puts {"target", "source"} there, and the listener's
// network ext_proc forwards that namespace with every chunk
// (xds/translate_postgres.go; envoy-contract.md sections 1.1 and 2).
const MetadataNamespace = authz.MetadataNamespaceNetwork

// TokenVerifier verifies an agent's OIDC access token. *authz.Verifier
// and *authz.Server (which shares ext_authz's verified-token cache)
// implement it; a refusal is an *authz.TokenError.
type TokenVerifier interface {
	Verify(ctx context.Context, raw string) (authz.Verified, error)
}

// NetworkOptions configure a NetworkServer.
type NetworkOptions struct {
	// Config is the initial configuration; Update replaces it. Until one is
	// set every connection is refused.
	Config *policies.Config
	// Verifier checks the agents' tokens. Required.
	Verifier TokenVerifier
	// Audit records session start, authentication and session end; a
	// failed Append refuses the session. Required.
	Audit audit.Sink
	// Gate decides statements. Required: serve passes the policy gate
	// (PolicyGate); tests may pass postgres.MarkerGate.
	Gate   postgres.Gate
	Logger *slog.Logger
	// Now is the clock of audit records; default time.Now.
	Now func() time.Time
}

// NetworkServer is Envoy's network external processor for Postgres
// targets: one postgres.Session per gRPC stream, that is, per downstream
// connection. It is safe for concurrent use; each stream is served by one
// goroutine, which owns its session.
type NetworkServer struct {
	netextprocv3.UnimplementedNetworkExternalProcessorServer

	opts  NetworkOptions
	log   *slog.Logger
	cfg   atomic.Pointer[policies.Config]
	keys  *postgres.KeyRegistry
	scram *postgres.SCRAMClients
}

var _ netextprocv3.NetworkExternalProcessorServer = (*NetworkServer)(nil)

// NewNetworkServer builds the server.
func NewNetworkServer(opts NetworkOptions) (*NetworkServer, error) {
	if opts.Verifier == nil || opts.Audit == nil {
		return nil, errors.New("extproc: a token verifier and an audit sink are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Gate == nil {
		// No default: a gate that allows what it was not told about would
		// be the one fail-open component in the chain.
		return nil, errors.New("extproc: a statement gate is required")
	}
	s := &NetworkServer{opts: opts, log: opts.Logger, keys: postgres.NewKeyRegistry(), scram: postgres.NewSCRAMClients()}
	if opts.Config != nil {
		s.cfg.Store(opts.Config)
	}
	return s, nil
}

// Register adds the NetworkExternalProcessor service to a gRPC server.
func (s *NetworkServer) Register(g *grpc.Server) {
	netextprocv3.RegisterNetworkExternalProcessorServer(g, s)
}

// Update swaps in a new config. Sessions keep the target they started
// with; new connections see the new one.
func (s *NetworkServer) Update(cfg *policies.Config) error {
	if cfg == nil {
		return errors.New("extproc: nil config")
	}
	s.cfg.Store(cfg)
	return nil
}

// Process serves one downstream connection. Every read_data and
// write_data chunk gets exactly one response of the same direction, and
// nothing else is ever sent (design.md section 6; envoy-contract.md
// section 1.4): the session's FromClient/FromServer return exactly one
// Reply each, and this loop sends exactly one response per Reply.
func (s *NetworkServer) Process(stream netextprocv3.NetworkExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	c := &connection{srv: s}
	defer func() { c.end() }()
	for {
		req, err := stream.Recv()
		if err != nil {
			if c.endReason == "" {
				c.endReason = streamEndReason(ctx, err)
			}
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		resp := c.handle(ctx, req)
		if resp == nil {
			continue
		}
		if err := stream.Send(resp); err != nil {
			c.endReason = "send to envoy failed: " + err.Error()
			return err
		}
		if resp.GetConnectionStatus() != netextprocv3.ProcessingResponse_CONTINUE {
			// Envoy closes the connection and then the stream; chunks it
			// sent meanwhile no longer matter.
			return nil
		}
	}
}

func streamEndReason(ctx context.Context, err error) string {
	switch {
	case errors.Is(err, io.EOF):
		return "envoy closed the stream"
	case ctx.Err() != nil || status.Code(err) == codes.Canceled:
		return "envoy cancelled the stream"
	}
	return fmt.Sprintf("stream error: %v", err)
}

// closeResponse ends the connection: Envoy closes it (FlushWrite) and
// drops the response's data (envoy-contract.md section 1.4, step 2).
func closeResponse() *netextprocv3.ProcessingResponse {
	return &netextprocv3.ProcessingResponse{ConnectionStatus: netextprocv3.ProcessingResponse_CLOSE}
}

func readResponse(r postgres.Reply) *netextprocv3.ProcessingResponse {
	if r.Close {
		return closeResponse()
	}
	return &netextprocv3.ProcessingResponse{ReadData: &netextprocv3.Data{Data: r.Data, EndOfStream: r.EndOfStream}}
}

func writeResponse(r postgres.Reply) *netextprocv3.ProcessingResponse {
	if r.Close {
		return closeResponse()
	}
	return &netextprocv3.ProcessingResponse{WriteData: &netextprocv3.Data{Data: r.Data, EndOfStream: r.EndOfStream}}
}
