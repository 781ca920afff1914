package extproc

import (
	"context"
	"fmt"
	"net/http"

	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// Upgrades (WebSocket; SPDY/3.1 for Kubernetes exec, attach and
// port-forward). ext_authz decided the upgrade before it reached sluice's
// processor (an upgrade is admin) and recorded that decision; Envoy runs
// upgrades through a filter chain of their own whose ext_proc is sent the
// request headers and the upstream's answer, never a body
// (xds/translate_http.go, envoy-contract.md section 4, "Upgrades"):
//
//	request_headers  (end_of_stream false: the tunnel is the body)  → record http.request, continue
//	response_headers 101                                            → continue
//	  ... the tunnel: bytes both ways, neither seen nor masked ...
//	stream closed    → finish records http.response (status 101)
//
// With Envoy's ext_proc stream-close optimisation (default on) the stream
// closes right after the 101 is answered, so the processor never learns
// when the tunnel ends; an Envoy that keeps the stream until the HTTP
// stream is destroyed closes it at the tunnel's end, and the http.response
// record's duration is then the session's.
//
// The request is recorded, durably, before its headers are answered: that
// answer lets Envoy forward the upgrade, and no body message follows to
// wait for. Fail closed: an upgrade whose record cannot be appended is
// refused (503); an upgrade that reaches a processor configured to be sent
// bodies is refused (Envoy would buffer the request until a body end that
// never comes, or send the tunnel's bytes here); an upgrade the upstream
// refuses with a body sluice would have to mask, but cannot on this path,
// is refused too.

// upgradeRequest checks an upgrade request's processing mode, records it
// and answers its headers unchanged.
func (x *exchange) upgradeRequest(ctx context.Context, hs map[string]string, pc *extprocv3.ProtocolConfiguration) *extprocv3.ProcessingResponse {
	x.upgrade = hs["upgrade"]
	if x.upgrade == "" {
		x.upgrade = "(no Upgrade header)"
	}
	if pc == nil || pc.GetRequestBodyMode() != httpextprocv3.ProcessingMode_NONE ||
		pc.GetResponseBodyMode() != httpextprocv3.ProcessingMode_NONE {
		x.srv.log.Error("upgrade reached an ext_proc filter that is sent bodies; refusing",
			"target", x.target.Name, "upgrade", x.upgrade, "protocol_config_present", pc != nil,
			"request_body_mode", pc.GetRequestBodyMode().String(), "response_body_mode", pc.GetResponseBodyMode().String())
		return refusal(typev3.StatusCode_InternalServerError, x.target.Name,
			"sluice: this upgrade reached a filter chain that cannot carry it; Envoy is not running the configuration sluice serves")
	}
	if r := x.recordRequest(ctx); r != nil {
		return r
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
		RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{}}}}
}

// upgradeResponse answers the upstream's answer to an upgrade (recorded
// in http.response when the stream ends): a 101 opens the tunnel;
// anything else is the upstream's refusal, which passes unless it has a
// body sluice would have to mask.
func (x *exchange) upgradeResponse(h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	if x.status != http.StatusSwitchingProtocols && len(x.masks) > 0 && !h.GetEndOfStream() {
		return x.refuseResponse(typev3.StatusCode_BadGateway, fmt.Sprintf(
			"sluice: the upstream refused the %s upgrade with status %d and a body, which sluice cannot mask on the upgrade path", x.upgrade, x.status))
	}
	// Nothing more of this exchange comes here: the tunnel's bytes (or
	// the refusal's body) are not sent to the processor.
	x.done = true
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
		ResponseHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{}}}}
}
