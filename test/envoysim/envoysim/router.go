package envoysim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	"google.golang.org/protobuf/proto"
)

// The router filter (envoy.filters.http.router), following
// source/common/router/router.cc: it picks the route's cluster, rewrites the
// host (host_rewrite_literal), adds x-envoy-expected-rq-timeout-ms, sends the
// request upstream over HTTP/1.1 (or HTTP/2 for a cluster configured so), and
// encodes the upstream response. The route timeout starts when the
// downstream request is complete and ends when the upstream response is:
// firing before then gives 504 "upstream request timeout" (or a reset when
// headers already went downstream). A connection failure gives 503.

var routerConfigName = (&routerv3.Router{}).ProtoReflect().Descriptor().FullName()

type routerConfig struct {
	sim                  *Sim
	hc                   *hcmConfig
	suppressEnvoyHeaders bool
}

func buildRouter(hc *hcmConfig, cb *chainBuild, m proto.Message) (func(*httpStream, string) any, error) {
	pc := m.(*routerv3.Router)
	if err := checkFields(pc, "suppress_envoy_headers",
		// Stats, tracing and logging options do not change what a stream observes.
		"dynamic_stats", "start_child_span", "upstream_log", "upstream_log_options"); err != nil {
		return nil, err
	}
	cfg := &routerConfig{sim: cb.sim, hc: hc, suppressEnvoyHeaders: pc.GetSuppressEnvoyHeaders()}
	return func(s *httpStream, _ string) any { return &routerFilter{cfg: cfg, s: s} }, nil
}

type routerFilter struct {
	cfg      *routerConfig
	s        *httpStream
	dec      *filterHandle
	ce       *clusterEntry
	stat     string // "cluster.<name>."
	body     *bodyPipe
	cancel   context.CancelFunc
	timer    *timer
	timeout  time.Duration
	sentAt   time.Time
	started  bool // upstream response headers arrived
	finished bool
	upgrade  *upgradeUpstream // an upgrade request's upstream side (router_upgrade.go)
}

func (f *routerFilter) init(dec, _ *filterHandle) { f.dec = dec }

func (f *routerFilter) decodeHeaders(h *headerMap, endStream bool) headersStatus {
	st := f.cfg.sim.stats
	r := f.s.routeEntry()
	if r == nil {
		f.cfg.hc.stats.noRoute.Add(1)
		f.s.sendLocalReply(http.StatusNotFound, "", nil, "route_not_found")
		return headersStopIteration
	}
	f.ce = f.cfg.sim.cluster(r.cluster)
	if f.ce == nil {
		st.counter(f.cfg.hc.statPrefix + "no_cluster").Add(1)
		f.s.sendLocalReply(http.StatusServiceUnavailable, "", nil, "cluster_not_found")
		return headersStopIteration
	}
	f.stat = "cluster." + f.ce.name + "."
	// finalizeRequestHeaders.
	if r.hostRewrite != "" {
		h.set(":authority", r.hostRewrite)
	}
	f.timeout = r.timeout
	if !f.cfg.suppressEnvoyHeaders && f.timeout > 0 {
		h.set("x-envoy-expected-rq-timeout-ms", strconv.FormatInt(f.timeout.Milliseconds(), 10))
	}
	st.counter(f.stat + "upstream_rq_total").Add(1)
	f.timer = f.s.d.newTimer(f.onResponseTimeout)
	if f.s.upgradeType != "" {
		f.startUpgrade(h)
		return headersStopIteration
	}
	f.startUpstream(h, endStream)
	if endStream {
		f.onRequestComplete()
	}
	return headersStopIteration
}

func (f *routerFilter) decodeData(b *buffer, endStream bool) dataStatus {
	if f.upgrade != nil {
		f.upgrade.fromDownstream(b.take())
		return dataStopNoBuffer
	}
	if f.body != nil {
		f.body.write(b.take(), endStream)
	}
	if endStream {
		f.onRequestComplete()
	}
	return dataStopNoBuffer
}

// onRequestComplete starts the route timeout.
func (f *routerFilter) onRequestComplete() {
	if f.timeout > 0 && !f.finished {
		f.timer.enable(f.timeout)
	}
}

func (f *routerFilter) onResponseTimeout() {
	f.cfg.sim.stats.counter(f.stat + "upstream_rq_timeout").Add(1)
	f.abortUpstream()
	f.s.sendLocalReply(http.StatusGatewayTimeout, "upstream request timeout", nil, "upstream_response_timeout")
}

func (f *routerFilter) abortUpstream() {
	f.finished = true
	f.timer.disable()
	if f.cancel != nil {
		f.cancel()
	}
	if f.body != nil {
		f.body.abort()
	}
	if f.upgrade != nil {
		f.upgrade.close()
	}
}

func (f *routerFilter) onDestroy() {
	if f.timer != nil {
		f.abortUpstream()
	}
}

// newUpstreamRequest is the upstream request for the request headers h: the
// path as received, the (rewritten) authority, every regular header but
// content-length, which the codec writes itself.
func (f *routerFilter) newUpstreamRequest(h *headerMap) (*http.Request, error) {
	path, query, hasQuery := strings.Cut(h.value(":path"), "?")
	scheme := "http"
	if f.ce.tls != nil {
		scheme = "https"
	}
	u := &url.URL{Scheme: scheme, Host: "envoysim-upstream", Opaque: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	req, err := http.NewRequestWithContext(ctx, h.value(":method"), u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.URL = u
	req.Host = h.value(":authority")
	req.Header = http.Header{"User-Agent": nil} // no Go default User-Agent
	for _, e := range h.entries {
		if !isPseudo(e.key) && e.key != "content-length" {
			req.Header.Add(e.key, e.value)
		}
	}
	return req, nil
}

// startUpstream sends the request on a goroutine; its results are posted to
// the stream's dispatcher.
func (f *routerFilter) startUpstream(h *headerMap, endStream bool) {
	req, err := f.newUpstreamRequest(h)
	if err != nil {
		f.s.sendLocalReply(http.StatusBadRequest, "", nil, "invalid_upstream_request")
		return
	}
	switch {
	case endStream:
		req.ContentLength = 0
	default:
		req.ContentLength = -1
		if cl, err := strconv.ParseInt(h.value("content-length"), 10, 64); err == nil {
			req.ContentLength = cl
		}
		f.body = newBodyPipe()
		req.Body = f.body
	}
	tr := f.cfg.sim.upstreamTransport(f.ce)
	d := f.s.d
	f.sentAt = time.Now()
	go func() {
		resp, err := tr.RoundTrip(req)
		if err != nil {
			d.post(func() { f.onUpstreamError(err) })
			return
		}
		f.relayResponse(d, resp)
	}()
}

// relayResponse runs on the request's goroutine: it posts the response
// headers, then each chunk of the body, to the stream's dispatcher.
func (f *routerFilter) relayResponse(d *dispatcher, resp *http.Response) {
	if !d.post(func() { f.onUpstreamHeaders(resp) }) {
		_ = resp.Body.Close()
		return
	}
	buf := make([]byte, readChunkBytes)
	for {
		n, err := resp.Body.Read(buf)
		data := append([]byte(nil), buf[:n]...)
		if !d.post(func() { f.onUpstreamData(data, err) }) || err != nil {
			_ = resp.Body.Close()
			return
		}
	}
}

func (f *routerFilter) onUpstreamError(err error) {
	if f.finished || f.s.done {
		return
	}
	f.abortUpstream()
	var ce *upstreamConnectError
	reason := "connection termination"
	if errors.As(err, &ce) {
		reason = "connection failure"
		if ce.transport != "" {
			reason += ", transport failure reason: " + ce.transport
		}
	}
	f.cfg.sim.logf("http stream %d: upstream %s: %v", f.s.id, f.ce.name, err)
	if f.started {
		f.s.resetStream("upstream_reset_after_response_started")
		return
	}
	f.s.sendLocalReply(http.StatusServiceUnavailable,
		"upstream connect error or disconnect/reset before headers. reset reason: "+reason, nil,
		"upstream_reset_before_response_started{"+strings.ReplaceAll(reason, " ", "_")+"}")
}

func (f *routerFilter) onUpstreamHeaders(resp *http.Response) {
	if f.finished || f.s.done {
		_ = resp.Body.Close()
		return
	}
	f.started = true
	h := f.responseHeaders(resp, false)
	if resp.ContentLength >= 0 && !h.has("content-length") && f.s.req.Method != http.MethodHead {
		h.add("content-length", strconv.FormatInt(resp.ContentLength, 10))
	}
	if !f.cfg.suppressEnvoyHeaders {
		h.set("x-envoy-upstream-service-time", strconv.FormatInt(time.Since(f.sentAt).Milliseconds(), 10))
	}
	endStream := resp.Body == http.NoBody || resp.ContentLength == 0
	if endStream {
		f.onUpstreamComplete()
	}
	f.s.details = "via_upstream"
	f.s.encodeHeaders(h, endStream)
}

// responseHeaders counts the response in the cluster's stats and converts
// its headers; connection-level headers go unless keepUpgrade (a 101 that
// switches protocols keeps Connection and Upgrade, as HCM's
// mutateResponseHeaders does for upgrades).
func (f *routerFilter) responseHeaders(resp *http.Response, keepUpgrade bool) *headerMap {
	st := f.cfg.sim.stats
	st.counter(f.stat + "upstream_rq_" + strconv.Itoa(resp.StatusCode)).Add(1)
	st.counter(fmt.Sprintf("%supstream_rq_%dxx", f.stat, resp.StatusCode/100)).Add(1)
	h := &headerMap{}
	h.add(":status", strconv.Itoa(resp.StatusCode))
	keys := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		lk := strings.ToLower(k)
		switch lk {
		case "connection", "upgrade":
			if !keepUpgrade {
				continue
			}
		case "keep-alive", "proxy-connection", "transfer-encoding":
			continue
		}
		for _, v := range resp.Header[k] {
			h.add(lk, v)
		}
	}
	return h
}

func (f *routerFilter) onUpstreamData(data []byte, err error) {
	if f.finished || f.s.done {
		return
	}
	switch {
	case err == io.EOF:
		f.onUpstreamComplete()
		f.s.enc.onData(newBuffer(data), true)
	case err != nil:
		f.cfg.sim.logf("http stream %d: upstream body: %v", f.s.id, err)
		f.abortUpstream()
		f.s.resetStream("upstream_reset_after_response_started")
	case len(data) > 0:
		f.s.enc.onData(newBuffer(data), false)
	}
}

func (f *routerFilter) onUpstreamComplete() {
	f.finished = true
	f.timer.disable()
}
