package envoysim

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The router's side of an HTTP/1.1 upgrade (contract §3, "Upgrades"),
// following source/common/router/upstream_request.cc
// (acceptHeadersFromRouter) and upstream_codec_filter.cc (CodecBridge::
// decodeHeaders):
//
//   - the request goes upstream with its Connection and Upgrade headers and
//     no body; what the agent sends is held until the upstream switches
//     protocols (paused_for_websocket_; for other types
//     paused_for_generic_upgrade_, runtime
//     http_pause_generic_upgrade_request_body, whose default is
//     [UNVERIFIED]: the sim holds both);
//   - a WebSocket upgrade starts the route timeout at once (runtime
//     websocket_enable_timeout_on_upgrade_response, default true) and a 101
//     disables it; other upgrades never complete their request, so the
//     route timeout never starts;
//   - 101 with Upgrade and Connection: upgrade: the response headers go
//     downstream through the encoder filters, then bytes flow both ways
//     through the filter chain (data frames without end_stream) until a
//     side closes, which resets the stream (codec_client.cc: an HTTP/1
//     RemoteClose resets the active request; HCM resets its streams when the
//     downstream connection closes);
//   - a WebSocket upgrade answered with 400 or more: that response passes
//     through the filter chain like any (runtime
//     websocket_allow_4xx_5xx_through_filter_chain, default true); answered
//     with another status (200, 3xx): a local reply with that status and the
//     upstream's headers but no body, details websocket_handshake_unsuccessful;
//   - another upgrade type answered without 101: an ordinary response.
//
// An upgrade to an HTTP/2 cluster (extended CONNECT) is not implemented and
// is answered with 501.

// upgradeUpstream is an upgrade's upstream side. Owner: the stream's
// dispatcher.
type upgradeUpstream struct {
	websocket bool
	held      [][]byte      // what the agent sent before the 101
	out       *tunnelWriter // to the upstream, once it switched protocols
}

// fromDownstream forwards bytes from the agent, or holds them until the 101.
func (u *upgradeUpstream) fromDownstream(p []byte) {
	if len(p) == 0 {
		return
	}
	if u.out != nil {
		u.out.write(p)
		return
	}
	u.held = append(u.held, p)
}

// close ends the upstream side after what was written is flushed.
func (u *upgradeUpstream) close() {
	u.held = nil
	if u.out != nil {
		u.out.close()
	}
}

// startUpgrade sends an upgrade request upstream; the answer is posted to
// the stream's dispatcher.
func (f *routerFilter) startUpgrade(h *headerMap) {
	if f.ce.http2 {
		f.cfg.sim.logf("http stream %d: upgrade to HTTP/2 cluster %s: not implemented by envoysim", f.s.id, f.ce.name)
		f.s.sendLocalReply(http.StatusNotImplemented, "envoysim: upgrades to an HTTP/2 upstream are not implemented", nil, "envoysim_not_implemented")
		return
	}
	f.upgrade = &upgradeUpstream{websocket: strings.EqualFold(h.value("upgrade"), "websocket")}
	req, err := f.newUpstreamRequest(h)
	if err != nil {
		f.s.sendLocalReply(http.StatusBadRequest, "", nil, "invalid_upstream_request")
		return
	}
	req.ContentLength = 0 // the payload follows the 101, outside HTTP
	if f.upgrade.websocket && f.timeout > 0 {
		f.timer.enable(f.timeout)
	}
	tr := f.cfg.sim.upstreamTransport(f.ce)
	d, websocket := f.s.d, f.upgrade.websocket
	f.sentAt = time.Now()
	go func() {
		resp, err := tr.RoundTrip(req)
		if err != nil {
			d.post(func() { f.onUpstreamError(err) })
			return
		}
		rwc, switched := resp.Body.(io.ReadWriteCloser)
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols && switched:
			if !d.post(func() { f.onSwitched(resp, rwc) }) {
				_ = rwc.Close()
				return
			}
			f.readTunnel(d, rwc)
		case resp.StatusCode == http.StatusSwitchingProtocols:
			// 101 without Upgrade and Connection: upgrade: the codec
			// never enters upgrade mode. [UNVERIFIED] what Envoy sends
			// downstream; the sim fails the stream.
			_ = resp.Body.Close()
			d.post(func() {
				f.abortUpstream()
				f.s.sendLocalReply(http.StatusBadGateway, "upstream switched protocols without an Upgrade header", nil, "envoysim_upstream_protocol_error")
			})
		case websocket && resp.StatusCode < http.StatusBadRequest:
			_ = resp.Body.Close()
			d.post(func() { f.onHandshakeUnsuccessful(resp) })
		default:
			f.relayResponse(d, resp)
		}
	}()
}

// onSwitched: the upstream accepted the upgrade. The 101 goes downstream
// through the encoder filters, and the bytes held so far go upstream.
func (f *routerFilter) onSwitched(resp *http.Response, rwc io.ReadWriteCloser) {
	if f.finished || f.s.done {
		_ = rwc.Close()
		return
	}
	f.started = true
	f.timer.disable() // disableRouteTimeoutForWebsocketUpgrade
	h := f.responseHeaders(resp, true)
	if !f.cfg.suppressEnvoyHeaders {
		h.set("x-envoy-upstream-service-time", strconv.FormatInt(time.Since(f.sentAt).Milliseconds(), 10))
	}
	f.upgrade.out = newTunnelWriter(rwc, nil, func(err error) {
		f.cfg.sim.logf("http stream %d: writing to the upstream tunnel: %v", f.s.id, err)
	})
	for _, p := range f.upgrade.held {
		f.upgrade.out.write(p)
	}
	f.upgrade.held = nil
	f.s.details = "via_upstream"
	f.s.encodeHeaders(h, false)
}

// readTunnel runs on the request's goroutine: the upstream's bytes after the
// 101, posted in order, then its close.
func (f *routerFilter) readTunnel(d *dispatcher, rwc io.ReadWriteCloser) {
	buf := make([]byte, readChunkBytes)
	for {
		n, err := rwc.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			if !d.post(func() { f.onTunnelData(data) }) {
				_ = rwc.Close()
				return
			}
		}
		if err != nil {
			d.post(func() { f.onTunnelClosed(err) })
			return
		}
	}
}

func (f *routerFilter) onTunnelData(data []byte) {
	if f.finished || f.s.done {
		return
	}
	f.s.enc.onData(newBuffer(data), false)
}

// onTunnelClosed: the upstream closed (or broke) the upgraded connection.
// HTTP/1 has no end of stream for it: Envoy resets the stream, which closes
// the downstream connection after what it holds is written.
func (f *routerFilter) onTunnelClosed(err error) {
	if f.finished || f.s.done {
		return
	}
	if !errors.Is(err, io.EOF) {
		f.cfg.sim.logf("http stream %d: upstream tunnel: %v", f.s.id, err)
	}
	f.abortUpstream()
	f.s.resetStream("upstream_reset_after_response_started{connection_termination}")
}

// onHandshakeUnsuccessful: a WebSocket upgrade answered with a status below
// 400 other than 101. Envoy answers with that status and the upstream's
// headers, without its body.
func (f *routerFilter) onHandshakeUnsuccessful(resp *http.Response) {
	if f.finished || f.s.done {
		return
	}
	f.abortUpstream()
	h := f.responseHeaders(resp, false)
	f.s.sendLocalReply(resp.StatusCode, "", func(lh *headerMap) {
		for _, e := range h.entries {
			// The body is not sent, so neither is its framing
			// [UNVERIFIED: Envoy copies every header].
			if !isPseudo(e.key) && e.key != "content-length" {
				lh.add(e.key, e.value)
			}
		}
	}, "websocket_handshake_unsuccessful")
}
