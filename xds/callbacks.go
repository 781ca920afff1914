package xds

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	deltav3 "github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/peer"
)

// tracker follows every ADS stream to tell ACKs from NACKs, count them and
// log each rejection with Envoy's reason.
//
// go-control-plane calls the callbacks from each stream's goroutine; mu
// guards the per-stream maps, the counters are atomic.
type tracker struct {
	log *slog.Logger
	m   *metrics

	streams, acks, nacks atomic.Int64

	mu    sync.Mutex
	state map[streamKey]*streamState
}

// streamKey tells SotW and delta streams apart: their ids are counted
// separately and can repeat.
type streamKey struct {
	delta bool
	id    int64
}

type streamState struct {
	node string
	// sent is the latest response per type URL: its nonce and version.
	sent map[string]sentResponse
	// logged is the nonce of the last NACK logged per type URL, so a NACK
	// repeated for one nonce is counted each time but logged once.
	logged map[string]string
}

type sentResponse struct{ nonce, version string }

func newTracker(log *slog.Logger, m *metrics) *tracker {
	return &tracker{log: log, m: m, state: map[streamKey]*streamState{}}
}

// The tracker is the callbacks of both ADS servers. go-control-plane's
// serverv3.CallbackFuncs would do the same, but package serverv3 also pulls
// in the ratelimit module, which sluice does not need.
var (
	_ sotwv3.Callbacks  = (*tracker)(nil)
	_ deltav3.Callbacks = (*tracker)(nil)
)

// OnStreamOpen implements sotwv3.Callbacks.
func (t *tracker) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	t.open(ctx, streamKey{id: id})
	return nil
}

// OnStreamClosed implements sotwv3.Callbacks.
func (t *tracker) OnStreamClosed(id int64, node *corev3.Node) { t.closed(streamKey{id: id}, node) }

// OnStreamRequest implements sotwv3.Callbacks.
func (t *tracker) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	t.sotwRequest(id, req)
	return nil
}

// OnStreamResponse implements sotwv3.Callbacks.
func (t *tracker) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	t.sent(streamKey{id: id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

// OnDeltaStreamOpen implements deltav3.Callbacks.
func (t *tracker) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	t.open(ctx, streamKey{delta: true, id: id})
	return nil
}

// OnDeltaStreamClosed implements deltav3.Callbacks.
func (t *tracker) OnDeltaStreamClosed(id int64, node *corev3.Node) {
	t.closed(streamKey{delta: true, id: id}, node)
}

// OnStreamDeltaRequest implements deltav3.Callbacks.
func (t *tracker) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	t.deltaRequest(id, req)
	return nil
}

// OnStreamDeltaResponse implements deltav3.Callbacks.
func (t *tracker) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	t.sent(streamKey{delta: true, id: id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

func mode(k streamKey) string {
	if k.delta {
		return "delta"
	}
	return "sotw"
}

func (t *tracker) open(ctx context.Context, k streamKey) {
	t.m.streamOpened(ctx, mode(k))
	t.streams.Add(1)
	t.mu.Lock()
	t.state[k] = &streamState{sent: map[string]sentResponse{}, logged: map[string]string{}}
	t.mu.Unlock()
	addr := ""
	if p, ok := peer.FromContext(ctx); ok {
		addr = p.Addr.String()
	}
	t.log.Info("ADS stream opened", "stream", k.id, "mode", mode(k), "peer", addr)
}

func (t *tracker) closed(k streamKey, node *corev3.Node) {
	t.m.streamClosed(context.Background(), mode(k))
	t.mu.Lock()
	delete(t.state, k)
	t.mu.Unlock()
	t.log.Info("ADS stream closed", "stream", k.id, "mode", mode(k), "node", node.GetId())
}

func (t *tracker) sent(k streamKey, typeURL, nonce, version string) {
	t.mu.Lock()
	if st := t.state[k]; st != nil {
		st.sent[typeURL] = sentResponse{nonce: nonce, version: version}
	}
	t.mu.Unlock()
	t.log.Debug("xDS response sent", "stream", k.id, "mode", mode(k), "type_url", typeURL, "version", version, "nonce", nonce)
}

// sotwRequest classifies a SotW request: NACK (error_detail set: the
// only signal, section 7), ACK (the version of the response whose nonce it
// carries), or a first or subscription-changing request.
//
// A NACK's version_info is Envoy's previously accepted version, so
// go-control-plane sees a version that differs from the snapshot's and
// resends the rejected snapshot at once, which Envoy rejects again: a loop
// until the next SetSnapshot (go-control-plane #582). Since Envoy never
// accepts a version it rejected, the request is rewritten to carry the
// rejected version: the cache then parks the watch, and the next published
// snapshot is sent as usual.
func (t *tracker) sotwRequest(id int64, req *discoveryv3.DiscoveryRequest) {
	k := streamKey{id: id}
	typeURL, nonce := req.GetTypeUrl(), req.GetResponseNonce()
	t.mu.Lock()
	st := t.state[k]
	if st == nil { // a request before its open callback: never, but be safe
		st = &streamState{sent: map[string]sentResponse{}, logged: map[string]string{}}
		t.state[k] = st
	}
	if req.GetNode() != nil {
		st.node = req.GetNode().GetId()
	}
	last := st.sent[typeURL]
	if req.GetErrorDetail() == nil {
		t.mu.Unlock()
		if nonce != "" && nonce == last.nonce && req.GetVersionInfo() == last.version {
			t.ack(k, typeURL, nonce, last.version)
		}
		return
	}
	rejected := ""
	if nonce != "" && nonce == last.nonce {
		rejected = last.version
	}
	first := st.logged[typeURL] != nonce
	st.logged[typeURL] = nonce
	node := st.node
	t.mu.Unlock()
	t.nack(k, node, typeURL, nonce, rejected, req.GetVersionInfo(), req.GetErrorDetail().GetCode(), req.GetErrorDetail().GetMessage(), first)
	if rejected != "" {
		req.VersionInfo = rejected
	}
}

// deltaRequest classifies a delta request: NACK with error_detail, ACK
// with a nonce and no error_detail. The delta server does not resend on
// NACK, so nothing is rewritten.
func (t *tracker) deltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) {
	k := streamKey{delta: true, id: id}
	typeURL, nonce := req.GetTypeUrl(), req.GetResponseNonce()
	t.mu.Lock()
	st := t.state[k]
	if st == nil {
		st = &streamState{sent: map[string]sentResponse{}, logged: map[string]string{}}
		t.state[k] = st
	}
	if req.GetNode() != nil {
		st.node = req.GetNode().GetId()
	}
	last := st.sent[typeURL]
	if req.GetErrorDetail() == nil {
		t.mu.Unlock()
		if nonce != "" {
			t.ack(k, typeURL, nonce, last.version)
		}
		return
	}
	rejected := ""
	if nonce == last.nonce {
		rejected = last.version
	}
	first := st.logged[typeURL] != nonce
	st.logged[typeURL] = nonce
	node := st.node
	t.mu.Unlock()
	t.nack(k, node, typeURL, nonce, rejected, "", req.GetErrorDetail().GetCode(), req.GetErrorDetail().GetMessage(), first)
}

// ack and nack log and export before they count, so a reader that sees
// the count sees the log line and the metric too.
func (t *tracker) ack(k streamKey, typeURL, nonce, version string) {
	t.log.Debug("Envoy accepted xDS response (ACK)", "stream", k.id, "mode", mode(k), "type_url", typeURL, "version", version, "nonce", nonce)
	t.m.ack(context.Background(), typeURL)
	t.acks.Add(1)
}

func (t *tracker) nack(k streamKey, node, typeURL, nonce, rejected, accepted string, code int32, msg string, log bool) {
	if log {
		t.log.Error("Envoy rejected xDS response (NACK); it keeps its previous config",
			"stream", k.id, "mode", mode(k), "node", node, "type_url", typeURL, "nonce", nonce,
			"version", rejected, "accepted_version", accepted, "code", code, "error_detail", msg)
	}
	t.m.nack(context.Background(), typeURL)
	t.nacks.Add(1)
}

// metrics are the OpenTelemetry instruments, plus plain counters for
// Stats (an OTel counter cannot be read back).
type metrics struct {
	nacks, acks, streams, publishedC, refusedC metric.Int64Counter
	active                                     metric.Int64UpDownCounter
	publishedN, refusedN                       atomic.Int64
}

func newMetrics(m metric.Meter) (*metrics, error) {
	x := &metrics{}
	var err error
	counter := func(dst *metric.Int64Counter, name, desc string) {
		if err == nil {
			*dst, err = m.Int64Counter(name, metric.WithDescription(desc))
		}
	}
	counter(&x.nacks, "sluice_xds_nacks", "xDS responses Envoy rejected, by type_url")
	counter(&x.acks, "sluice_xds_acks", "xDS responses Envoy accepted, by type_url")
	counter(&x.streams, "sluice_xds_streams", "ADS streams opened, by mode (sotw, delta)")
	counter(&x.publishedC, "sluice_xds_snapshots_published", "xDS snapshot versions published")
	counter(&x.refusedC, "sluice_xds_snapshots_refused", "configs refused before publishing (translation or validation failed)")
	if err == nil {
		x.active, err = m.Int64UpDownCounter("sluice_xds_streams_active", metric.WithDescription("ADS streams open now, by mode"))
	}
	return x, err
}

func typeAttr(typeURL string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("type_url", typeURL))
}

func modeAttr(mode string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("mode", mode))
}

func (x *metrics) nack(ctx context.Context, typeURL string) { x.nacks.Add(ctx, 1, typeAttr(typeURL)) }
func (x *metrics) ack(ctx context.Context, typeURL string)  { x.acks.Add(ctx, 1, typeAttr(typeURL)) }

func (x *metrics) streamOpened(ctx context.Context, mode string) {
	x.streams.Add(ctx, 1, modeAttr(mode))
	x.active.Add(ctx, 1, modeAttr(mode))
}

func (x *metrics) streamClosed(ctx context.Context, mode string) {
	x.active.Add(ctx, -1, modeAttr(mode))
}

func (x *metrics) published(ctx context.Context) {
	x.publishedC.Add(ctx, 1)
	x.publishedN.Add(1)
}

func (x *metrics) refused(ctx context.Context) {
	x.refusedC.Add(ctx, 1)
	x.refusedN.Add(1)
}
