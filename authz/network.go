package authz

import (
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
)

// checkNetwork is the connection-level check for a Postgres target
// (envoy-contract.md section 2). The TCP CheckRequest carries no
// context_extensions, so the target is the one whose listener port the
// connection arrived on. The agent's token arrives later, in-band, and is
// verified by the Postgres session; here only what is known at connect is
// checked: the target exists and is enabled, and the source is allowed.
func (s *Server) checkNetwork(st *state, attrs *authv3.AttributeContext) (*authv3.CheckResponse, string) {
	dst, ok := peerAddr(attrs.GetDestination().GetAddress())
	if !ok {
		return networkDeny("sluice: the connection has no destination address; refusing"), "deny"
	}
	t, ok := st.byPort[uint32(dst.Port())]
	if !ok {
		return networkDeny(fmt.Sprintf("sluice: no target listens on port %d", dst.Port())), "deny"
	}
	if t.Disabled {
		return networkDeny(fmt.Sprintf("sluice: target %s is disabled", t.Name)), "deny"
	}
	src, ok := peerAddr(attrs.GetSource().GetAddress())
	if !ok || !sourceAllowed(t, src.Addr()) {
		s.log.Warn("connection refused: source not allowed", "target", t.Name, "source", src.String())
		return networkDeny(fmt.Sprintf("sluice: source %s may not connect to %s", src.Addr(), t.Name)), "deny"
	}
	md, _ := structpb.NewStruct(map[string]any{"target": t.Name, "source": src.String()})
	return &authv3.CheckResponse{Status: &status.Status{Code: int32(codes.OK)}, DynamicMetadata: md}, "allow"
}

// networkDeny makes Envoy close the connection: any non-zero status is
// Denied for network ext_authz (contract section 2).
func networkDeny(reason string) *authv3.CheckResponse {
	return &authv3.CheckResponse{Status: &status.Status{Code: int32(codes.PermissionDenied), Message: reason}}
}
