package envoysim

import (
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// httpStream is HCM's ActiveStream plus its FilterManager: one HTTP request
// and its response. Owner: the request's handler goroutine, which runs the
// stream's dispatcher; every filter callback, side-stream message, upstream
// event and timer of the stream runs there. net/http's ResponseWriter is used
// only from that goroutine.
type httpStream struct {
	hcm   *hcmConfig
	dc    *downstreamConn
	d     *dispatcher
	w     http.ResponseWriter
	rc    *http.ResponseController
	req   *http.Request
	id    uint64
	start time.Time

	dec, enc        filterDir
	route           *routeEntry
	routeCached     bool
	dynamicMetadata *corev3.Metadata
	destroyers      []interface{ onDestroy() }

	respHeaders *headerMap // response_headers_: a response started encoding
	headersSent bool       // non_100_response_headers_encoded_
	done        bool       // complete or reset: the dispatcher stops
	reset       bool       // the downstream stream must be aborted
	reading     bool       // the body reader goroutine is running
	readToken   chan struct{}
	readerDone  chan struct{}
	details     string // response code details, e.g. ext_authz_denied

	// upgradeRequest: the request asks for an HTTP/1 upgrade (Connection:
	// upgrade and Upgrade), accepted or not. Its payload is not HTTP, so a
	// response that does not switch protocols closes the connection.
	upgradeRequest bool
	// upgradeType is the Upgrade value of an upgrade HCM accepted
	// (hcm_upgrade.go); tunnel is set once the 101 went downstream
	// (httpstream_upgrade.go).
	upgradeType string
	tunnel      *downstreamTunnel
}

// protocol is the value of CheckRequest's request.http.protocol.
func (s *httpStream) protocol() string {
	switch s.req.ProtoMajor {
	case 2:
		return "HTTP/2"
	case 3:
		return "HTTP/3"
	}
	if s.req.ProtoMinor == 0 {
		return "HTTP/1.0"
	}
	return "HTTP/1.1"
}

// serveStream runs one request on the handler goroutine until it completes.
func (hc *hcmConfig) serveStream(dc *downstreamConn, w http.ResponseWriter, r *http.Request) {
	if !hc.sim.trackStream() {
		panic(http.ErrAbortHandler)
	}
	defer hc.sim.wg.Done()
	s := &httpStream{
		hcm: hc, dc: dc, d: newDispatcher(), w: w, rc: http.NewResponseController(w), req: r,
		id: rand.Uint64(), start: time.Now(), readToken: make(chan struct{}, 1), readerDone: make(chan struct{}),
		dynamicMetadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}},
	}
	_ = s.rc.EnableFullDuplex() // HTTP/1: read the body while the response streams, as Envoy does
	finished := make(chan struct{})
	go func() {
		select {
		case <-r.Context().Done():
			s.d.post(func() { s.resetStream("downstream_remote_disconnect") })
		case <-finished:
		}
	}()
	s.d.post(s.begin)
	s.d.run()
	close(finished)
	if s.tunnel != nil {
		// The connection is hijacked: net/http no longer owns it.
		s.tunnel.wait()
		return
	}
	if s.reading {
		// Unblock a pending body read; the reader then finds the dispatcher gone.
		_ = s.rc.SetReadDeadline(time.Now())
		<-s.readerDone
	}
	if s.reset {
		panic(http.ErrAbortHandler) // HTTP/1: close the connection; HTTP/2: RST_STREAM
	}
}

// begin is ConnectionManagerImpl::ActiveStream::decodeHeaders.
func (s *httpStream) begin() {
	hc := s.hcm
	hc.stats.rqTotal.Add(1)
	hc.stats.rqActive.Add(1)
	if s.req.ProtoMajor == 2 {
		hc.stats.rqHTTP2.Add(1)
	} else {
		hc.stats.rqHTTP1.Add(1)
	}
	h := requestHeaders(s.req, s.dc.tls != nil)
	upgradeType := ""
	if s.req.ProtoMajor == 1 {
		stripH2CUpgrade(h)
		if isUpgrade(h) {
			// The HTTP/1 codec enters upgrade mode: the payload after the
			// headers is the stream's body, so the headers do not end it.
			s.upgradeRequest = true
			upgradeType = h.value("upgrade")
		}
	}
	endStream := !s.upgradeRequest && (s.req.Body == nil || s.req.Body == http.NoBody || s.req.ContentLength == 0)
	upgradeRejected := s.createFilterChain(upgradeType)
	if strings.EqualFold(h.value("expect"), "100-continue") {
		// Without proxy_100_continue HCM answers 100 Continue itself (net/http
		// does, at the first body read) and drops the header.
		h.remove("expect")
	}
	s.mutateRequestHeaders(h)
	if err := hc.normalizePath(h); err != nil {
		hc.stats.failedPathNormalization.Add(1)
		s.dec.hdrs = h
		s.sendLocalReply(http.StatusBadRequest, "", nil, "path_normalization_failed")
		return
	}
	s.dec.hdrs = h
	if upgradeRejected && s.routeEntry() != nil {
		// An upgrade type HCM does not accept: 403 through the default
		// filter chain, and the connection closes (saw_connection_close_)
		// so that no upgrade payload is read as a request.
		hc.stats.wsOnNonWSRoute.Add(1)
		s.sendLocalReply(http.StatusForbidden, "", nil, "upgrade_failed")
		return
	}
	if !endStream && !s.upgradeRequest {
		s.reading = true
		go s.readBody()
		s.readToken <- struct{}{}
	}
	s.dec.onHeaders(h, endStream)
}

// isUpgrade is Utility::isUpgrade: an Upgrade header and a Connection header
// with the upgrade token (WebSocket; SPDY/3.1 for Kubernetes exec, attach and
// port-forward).
func isUpgrade(h *headerMap) bool {
	if !h.has("upgrade") {
		return false
	}
	for _, v := range h.values("connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// stripH2CUpgrade is what the HTTP/1 codec does to an h2c upgrade, which
// Envoy does not support: the Upgrade and HTTP2-Settings headers go, and the
// upgrade and http2-settings tokens leave Connection, so the request is an
// ordinary one (onHeadersCompleteImpl in source/common/http/http1/codec_impl.cc).
func stripH2CUpgrade(h *headerMap) {
	if !isUpgrade(h) || !strings.EqualFold(h.value("upgrade"), "h2c") {
		return
	}
	h.remove("upgrade")
	h.remove("http2-settings")
	var keep []string
	for _, v := range h.values("connection") {
		for _, tok := range strings.Split(v, ",") {
			tok = strings.TrimSpace(tok)
			if tok != "" && !strings.EqualFold(tok, "upgrade") && !strings.EqualFold(tok, "http2-settings") {
				keep = append(keep, tok)
			}
		}
	}
	h.remove("connection")
	if len(keep) > 0 {
		h.add("connection", strings.Join(keep, ","))
	}
}

// requestHeaders is what Envoy's codecs produce: pseudo-headers, then the
// request's headers with lower-case keys. Go does not keep the order of
// header lines, so regular headers come sorted by key.
func requestHeaders(r *http.Request, secure bool) *headerMap {
	h := &headerMap{}
	path, authority := r.RequestURI, r.Host
	if strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
		// An absolute-form target (allow_absolute_url, Envoy's default).
		path, authority = r.URL.RequestURI(), r.URL.Host
	}
	scheme := "http"
	if secure {
		scheme = "https"
	}
	h.add(":authority", authority)
	h.add(":path", path)
	h.add(":method", r.Method)
	h.add(":scheme", scheme)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		lk := strings.ToLower(k)
		if lk == "host" || strings.HasPrefix(lk, ":") {
			continue
		}
		for _, v := range r.Header[k] {
			h.add(lk, v)
		}
	}
	return h
}

// createFilterChain instantiates the HCM's HTTP filters, decoders in order
// and encoders in reverse order: an accepted upgrade's chain, or http_filters.
// It reports an upgrade HCM refuses (FilterManager::createFilterChain
// returning false).
func (s *httpStream) createFilterChain(upgradeType string) (upgradeRejected bool) {
	factories := s.hcm.filters
	if upgradeType != "" {
		fs, ok := s.hcm.upgradeFilters(upgradeType, nil)
		factories, upgradeRejected = fs, !ok
		if ok {
			s.upgradeType = upgradeType
			s.hcm.stats.upgradesTotal.Add(1)
			s.hcm.stats.upgradesActive.Add(1)
		}
	}
	s.dec = filterDir{s: s, sinkHeaders: func(*headerMap, bool) {}, sinkData: func(*buffer, bool) {}}
	s.enc = filterDir{s: s, sinkHeaders: s.encodeDownstreamHeaders, sinkData: s.encodeDownstreamData}
	type pending struct {
		f        any
		dec, enc *activeFilter
	}
	var all []pending
	for _, fac := range factories {
		p := pending{f: fac.create(s, fac.name)}
		if df, ok := p.f.(decoderFilter); ok {
			p.dec = &activeFilter{headers: df.decodeHeaders, data: df.decodeData}
			s.dec.filters = append(s.dec.filters, p.dec)
		}
		if ef, ok := p.f.(encoderFilter); ok {
			p.enc = &activeFilter{headers: ef.encodeHeaders, data: ef.encodeData}
			s.enc.filters = append([]*activeFilter{p.enc}, s.enc.filters...)
		}
		if d, ok := p.f.(interface{ onDestroy() }); ok {
			s.destroyers = append(s.destroyers, d)
		}
		all = append(all, p)
	}
	for _, p := range all {
		var dh, eh *filterHandle
		if p.dec != nil {
			dh = s.dec.handle(p.dec)
		}
		if p.enc != nil {
			eh = s.enc.handle(p.enc)
		}
		if in, ok := p.f.(interface{ init(dec, enc *filterHandle) }); ok {
			in.init(dh, eh)
		}
	}
	return upgradeRejected
}

func (s *httpStream) readBody() {
	defer close(s.readerDone)
	buf := make([]byte, readChunkBytes)
	for range s.readToken {
		n, err := s.req.Body.Read(buf)
		data := append([]byte(nil), buf[:n]...)
		if !s.d.post(func() { s.onBody(data, err) }) || err != nil {
			return
		}
	}
}

func (s *httpStream) onBody(data []byte, err error) {
	if s.done {
		return
	}
	switch {
	case err == io.EOF:
		s.reading = false
		s.dec.onData(newBuffer(data), true)
	case err != nil:
		s.reading = false
		s.hcm.sim.logf("http stream %d: reading the request body: %v", s.id, err)
		s.resetStream("downstream_remote_disconnect")
	default:
		if len(data) > 0 {
			s.dec.onData(newBuffer(data), false)
		}
		if !s.done && !s.dec.aborted {
			s.readToken <- struct{}{}
		}
	}
}

// routeEntry is the cached route (refreshCachedRoute); nil when none matches.
func (s *httpStream) routeEntry() *routeEntry {
	if !s.routeCached {
		s.routeCached = true
		s.route = s.hcm.sim.matchRoute(s.hcm, s.dec.hdrs)
	}
	return s.route
}

// clearRouteCache makes the next routeEntry() match again.
func (s *httpStream) clearRouteCache() { s.routeCached = false }

// setDynamicMetadata merges fields into the stream's namespace.
func (s *httpStream) setDynamicMetadata(ns string, st *structpb.Struct) {
	cur := s.dynamicMetadata.FilterMetadata[ns]
	if cur == nil {
		cur = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		s.dynamicMetadata.FilterMetadata[ns] = cur
	}
	for k, v := range st.GetFields() {
		cur.Fields[k] = v
	}
}
