package extproc

import (
	"context"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/sluicehq/sluice/audit"
)

// upgradeHeaders is the first message of an upgrade's ext_proc stream: its
// request headers, not ending the stream, and the chain's body modes.
func upgradeHeaders(md *corev3.Metadata, reqBody, respBody httpextprocv3.ProcessingMode_BodySendMode) *extprocv3.ProcessingRequest {
	r := reqHeaders(md, ":method", "GET", ":path", "/api/v1/namespaces/default/pods/web/exec?command=sh",
		"connection", "Upgrade", "upgrade", "websocket", "sec-websocket-protocol", "v5.channel.k8s.io")
	r.GetRequestHeaders().EndOfStream = false
	r.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: reqBody, ResponseBodyMode: respBody}
	return r
}

func immediateStatus(r *extprocv3.ProcessingResponse) int32 {
	return int32(r.GetImmediateResponse().GetStatus().GetCode())
}

// An allowed upgrade passes unchanged (no Accept rewrite: the tunnel is
// not JSON, even where responses are masked); it is recorded before its
// headers are answered (that answer lets Envoy forward it), and the
// response record says 101 without an error once the stream ends.
func TestHTTPUpgradeRecordsThe101(t *testing.T) {
	rec := &sink{}
	x := httpExchange(t, rec)
	ctx := context.Background()
	md := decisionMD("allow", "pii")
	r := x.handle(ctx, upgradeHeaders(md, httpextprocv3.ProcessingMode_NONE, httpextprocv3.ProcessingMode_NONE))
	if r.GetRequestHeaders() == nil || r.GetRequestHeaders().GetResponse().GetHeaderMutation() != nil {
		t.Fatalf("request headers answer %v, want an unchanged continue", r)
	}
	if k := rec.kinds(); len(k) != 1 || k[0] != audit.KindHTTPRequest || !strings.Contains(rec.events[0].Request, "/exec?") {
		t.Fatalf("recorded %v before answering the upgrade's headers, want its request", rec.events)
	}
	r = x.handle(ctx, respHeaders(md, false, ":status", "101", "upgrade", "websocket", "connection", "Upgrade"))
	if r.GetResponseHeaders() == nil || r.GetResponseHeaders().GetResponse().GetHeaderMutation() != nil {
		t.Fatalf("101 answer %v, want an unchanged continue", r)
	}
	x.finish()
	evs := waitEvents(t, rec, 2)
	resp := evs[1]
	if resp.Kind != audit.KindHTTPResponse || resp.HTTPStatus != 101 || resp.Error != "" || resp.RequestID != evs[0].RequestID {
		t.Errorf("response record %+v", resp)
	}
}

// Fail closed: an upgrade on a chain whose ext_proc is sent bodies (Envoy
// would hold it forever, or stream the tunnel here) is refused; so is an
// upgrade the upstream refuses with a body that would have to be masked;
// and nothing passes when the audit store is down. A refusal without a
// body passes, recorded.
func TestHTTPUpgradeFailsClosed(t *testing.T) {
	ctx := context.Background()
	md := decisionMD("allow", "pii")
	for _, modes := range [][2]httpextprocv3.ProcessingMode_BodySendMode{
		{httpextprocv3.ProcessingMode_BUFFERED, httpextprocv3.ProcessingMode_STREAMED},
		{httpextprocv3.ProcessingMode_NONE, httpextprocv3.ProcessingMode_STREAMED},
	} {
		if r := httpExchange(t, &sink{}).handle(ctx, upgradeHeaders(md, modes[0], modes[1])); immediateStatus(r) != 500 {
			t.Errorf("%v: %v, want 500", modes, r)
		}
	}
	noConfig := upgradeHeaders(md, 0, 0)
	noConfig.ProtocolConfig = nil
	if r := httpExchange(t, &sink{}).handle(ctx, noConfig); immediateStatus(r) != 500 {
		t.Errorf("no protocol_config: %v, want 500", r)
	}

	rec := &sink{}
	x := httpExchange(t, rec)
	x.handle(ctx, upgradeHeaders(md, httpextprocv3.ProcessingMode_NONE, httpextprocv3.ProcessingMode_NONE))
	if r := x.handle(ctx, respHeaders(md, false, ":status", "200", "content-type", "application/json")); immediateStatus(r) != 502 {
		t.Errorf("refusal with a body: %v, want 502", r)
	}
	x.finish()
	if evs := waitEvents(t, rec, 2); evs[1].Kind != audit.KindHTTPResponse || evs[1].HTTPStatus != 200 || evs[1].Error == "" {
		t.Errorf("refused answer recorded as %+v", evs)
	}

	rec = &sink{}
	x = httpExchange(t, rec)
	x.handle(ctx, upgradeHeaders(md, httpextprocv3.ProcessingMode_NONE, httpextprocv3.ProcessingMode_NONE))
	if r := x.handle(ctx, respHeaders(md, true, ":status", "403")); r.GetResponseHeaders() == nil {
		t.Errorf("bodiless refusal: %v, want it passed", r)
	}
	x.finish()
	if evs := waitEvents(t, rec, 2); evs[1].HTTPStatus != 403 || evs[1].Error != "" {
		t.Errorf("bodiless refusal recorded as %+v", evs)
	}

	// The audit store down: the upgrade is refused before it is
	// forwarded.
	x = httpExchange(t, &sink{fail: true})
	if r := x.handle(ctx, upgradeHeaders(md, httpextprocv3.ProcessingMode_NONE, httpextprocv3.ProcessingMode_NONE)); immediateStatus(r) != 503 {
		t.Errorf("audit down: %v, want 503", r)
	}
}
