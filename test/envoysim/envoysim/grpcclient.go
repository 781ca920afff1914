package envoysim

import (
	"errors"
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// grpcTarget is a parsed GrpcService. Only envoy_grpc is implemented: the sim
// resolves cluster_name against its clusters, which must be HTTP/2.
type grpcTarget struct {
	cluster   string
	authority string
	timeout   time.Duration // 0 when unset
	md        metadata.MD
}

func parseGrpcService(gs *corev3.GrpcService) (*grpcTarget, error) {
	if gs == nil {
		return nil, errors.New("grpc_service is required")
	}
	if err := checkFields(gs, "envoy_grpc", "timeout", "initial_metadata"); err != nil {
		return nil, err
	}
	eg := gs.GetEnvoyGrpc()
	if eg == nil {
		return nil, errors.New("grpc_service: only envoy_grpc is implemented by envoysim")
	}
	if err := checkFields(eg, "cluster_name", "authority"); err != nil {
		return nil, err
	}
	t := &grpcTarget{cluster: eg.GetClusterName(), authority: eg.GetAuthority(), md: metadata.MD{}}
	if gs.GetTimeout() != nil {
		t.timeout = gs.GetTimeout().AsDuration()
	}
	for _, h := range gs.GetInitialMetadata() {
		v := h.GetValue()
		if v == "" && len(h.GetRawValue()) > 0 {
			v = string(h.GetRawValue())
		}
		t.md.Append(h.GetKey(), v)
	}
	return t, nil
}

// grpcConn returns the channel for t's cluster. Envoy resolves envoy_grpc
// clusters when a stream or call starts, so an unknown cluster is a runtime
// failure, not a config error.
func (s *Sim) grpcConn(t *grpcTarget) (*grpc.ClientConn, error) {
	key := t.cluster + "|" + t.authority
	s.mu.Lock()
	closed, ce, cc := s.closed, s.clusters[t.cluster], s.grpcConns[key]
	s.mu.Unlock()
	switch {
	case closed:
		return nil, errors.New("envoysim is closed")
	case ce == nil:
		return nil, fmt.Errorf("unknown gRPC cluster %q", t.cluster)
	case !ce.http2:
		return nil, fmt.Errorf("gRPC cluster %q is not configured for HTTP/2", t.cluster)
	case cc != nil:
		return cc, nil
	}
	addr, err := ce.pick()
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if ce.tls != nil {
		cfg, err := s.clientTLSConfig(ce.tls)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if t.authority != "" {
		opts = append(opts, grpc.WithAuthority(t.authority))
	}
	cc, err = grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if have := s.grpcConns[key]; have != nil || s.clusters[t.cluster] != ce {
		// Lost a race with another stream or with a cluster update.
		s.oldGRPC = append(s.oldGRPC, cc)
		if have != nil {
			return have, nil
		}
		return cc, nil
	}
	s.grpcConns[key] = cc
	return cc, nil
}
