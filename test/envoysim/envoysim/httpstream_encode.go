package envoysim

import (
	"net/http"
	"strconv"
)

// The response side of a stream: the encoder chain's start and its codec end,
// local replies, completion and reset.

// encodeHeaders starts the response through the encoder filters.
func (s *httpStream) encodeHeaders(h *headerMap, endStream bool) {
	if s.done || s.respHeaders != nil {
		return
	}
	s.respHeaders = h
	s.enc.onHeaders(h, endStream)
}

// sendLocalReply is FilterManager::sendLocalReply: through every encoder
// filter when no response started, straight to the codec when one started
// but no headers left, a reset when headers were sent.
func (s *httpStream) sendLocalReply(code int, body string, mutate func(*headerMap), details string) {
	if s.done {
		return
	}
	s.details = details
	s.dec.aborted = true
	s.hcm.sim.logf("http stream %d: local reply %d (%s)", s.id, code, details)
	h := &headerMap{}
	h.add(":status", strconv.Itoa(code))
	if body != "" {
		h.add("content-length", strconv.Itoa(len(body)))
		h.add("content-type", "text/plain")
	}
	if mutate != nil {
		mutate(h)
	}
	headOnly := body == "" || s.req.Method == http.MethodHead
	switch {
	case s.respHeaders == nil:
		s.encodeHeaders(h, headOnly)
		if !headOnly {
			s.enc.onData(newBuffer([]byte(body)), true)
		}
	case !s.headersSent:
		s.enc.aborted = true
		s.respHeaders = h
		s.encodeDownstreamHeaders(h, headOnly)
		if !headOnly {
			s.encodeDownstreamData(newBuffer([]byte(body)), true)
		}
	default:
		s.resetStream(details)
	}
}

// encodeDownstreamHeaders is the codec end of the encoder chain.
func (s *httpStream) encodeDownstreamHeaders(h *headerMap, endStream bool) {
	if s.done || s.headersSent {
		return
	}
	s.headersSent = true
	code, _ := strconv.Atoi(h.value(":status"))
	if code < 100 || code > 999 {
		code = http.StatusBadGateway
	}
	// HCM's encodeHeaders: server header overwritten (server_header_transformation
	// OVERWRITE), connection-level headers dropped
	// (ConnectionManagerUtility::mutateResponseHeaders) except Connection
	// and Upgrade of a response that switches protocols for an upgrade
	// request.
	h.set("server", "envoy")
	switching := s.upgradeRequest && isUpgrade(h)
	for _, k := range []string{"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"} {
		if switching && (k == "connection" || k == "upgrade") {
			continue
		}
		h.remove(k)
	}
	if switching && code == http.StatusSwitchingProtocols {
		s.hcm.stats.rqCode(code)
		s.startTunnel(h)
		return
	}
	wh := s.w.Header()
	for _, e := range h.entries {
		if !isPseudo(e.key) {
			wh.Add(e.key, e.value)
		}
	}
	if _, ok := wh["Content-Type"]; !ok {
		wh["Content-Type"] = nil // no sniffing: Envoy adds no content type
	}
	if s.upgradeRequest {
		// The request's upgrade payload never completes, so HCM drains the
		// HTTP/1 connection (remoteDecodeComplete is false; after a refused
		// upgrade, saw_connection_close_): "Connection: close", and
		// nothing after this response is read as a request.
		wh.Set("Connection", "close")
	}
	s.hcm.stats.rqCode(code)
	s.w.WriteHeader(code)
	if endStream {
		s.complete()
		return
	}
	_ = s.rc.Flush()
}

func (s *httpStream) encodeDownstreamData(b *buffer, endStream bool) {
	if s.done || !s.headersSent {
		return
	}
	if s.tunnel != nil {
		s.tunnel.write(b.take())
		if endStream {
			s.complete()
		}
		return
	}
	if b.Len() > 0 {
		if _, err := s.w.Write(b.take()); err != nil {
			s.resetStream("downstream_remote_disconnect")
			return
		}
		_ = s.rc.Flush()
	}
	if endStream {
		s.complete()
	}
}

// complete ends the stream after the whole response was encoded.
func (s *httpStream) complete() {
	s.hcm.stats.rqCompleted.Add(1)
	s.finish()
}

// resetStream aborts the stream: the downstream sees a reset (HTTP/2) or a
// closed connection (HTTP/1), the filters are destroyed.
func (s *httpStream) resetStream(reason string) {
	if s.done {
		return
	}
	s.hcm.sim.logf("http stream %d: reset: %s", s.id, reason)
	if s.details == "" {
		s.details = reason
	}
	s.reset = true
	if reason == "downstream_remote_disconnect" {
		s.hcm.stats.rqRxReset.Add(1)
	} else {
		s.hcm.stats.rqTxReset.Add(1)
	}
	s.finish()
}

func (s *httpStream) finish() {
	s.done = true
	close(s.readToken) // a reader waiting for a token ends; one in Read is unblocked by serveStream
	s.hcm.stats.rqActive.Add(-1)
	if s.upgradeType != "" {
		s.hcm.stats.upgradesActive.Add(-1)
	}
	if s.tunnel != nil {
		// Envoy closes the HTTP/1 connection of an ended tunnel after
		// flushing what it holds (FlushWriteAndDelay).
		s.tunnel.close()
	}
	for _, d := range s.destroyers {
		d.onDestroy()
	}
	if s.hcm.sim.opts.streamLog != nil {
		s.hcm.sim.opts.streamLog(s.info())
	}
	s.d.stop()
}
