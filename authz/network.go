package authz

import (
	"context"
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluicehq/sluice/policies"
)

// checkNetwork is the connection-level check for a Postgres target
// (envoy-contract.md section 2). The TCP CheckRequest carries no
// context_extensions, so the target is the one whose listener port the
// connection arrived on. The agent's token arrives later, in-band, and is
// verified by the Postgres session; here only what is known at connect is
// checked: the target exists and is enabled, and the source is allowed.
//
// Refusals are recorded best effort (recordRefusal). An allow is not
// recorded here: it lets the connection reach the Postgres session, which
// records the login (authn, session start) and every statement, durably,
// before anything reaches the target.
func (c *check) checkNetwork(ctx context.Context, st *state, attrs *authv3.AttributeContext) (*authv3.CheckResponse, string) {
	var source string
	src, srcOK := peerAddr(attrs.GetSource().GetAddress())
	if srcOK {
		source = src.String()
	}
	refuse := func(target, reason string) (*authv3.CheckResponse, string) {
		c.recordRefusal(ctx, refusalEvent(c.opts.Now(), policies.Principal{}, target, source, "", reason, ""))
		return networkDeny("sluice: " + reason), "deny"
	}
	dst, ok := peerAddr(attrs.GetDestination().GetAddress())
	if !ok {
		return refuse("", "the connection has no destination address; refusing")
	}
	t, ok := st.byPort[uint32(dst.Port())]
	if !ok {
		return refuse("", fmt.Sprintf("no target listens on port %d", dst.Port()))
	}
	if t.Disabled {
		return refuse(t.Name, fmt.Sprintf("target %s is disabled", t.Name))
	}
	if !srcOK || !sourceAllowed(t, src.Addr()) {
		c.log.Warn("connection refused: source not allowed", "target", t.Name, "source", src.String())
		return refuse(t.Name, fmt.Sprintf("source %s may not connect to %s", src.Addr(), t.Name))
	}
	md, _ := structpb.NewStruct(map[string]any{"target": t.Name, "source": src.String()})
	return &authv3.CheckResponse{Status: &status.Status{Code: int32(codes.OK)}, DynamicMetadata: md}, "allow"
}

// networkDeny makes Envoy close the connection: any non-zero status is
// Denied for network ext_authz (contract section 2).
func networkDeny(reason string) *authv3.CheckResponse {
	return &authv3.CheckResponse{Status: &status.Status{Code: int32(codes.PermissionDenied), Message: reason}}
}
