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
	endStream := s.req.Body == nil || s.req.Body == http.NoBody || s.req.ContentLength == 0
	s.createFilterChain()
	if isUpgrade(h) {
		// No upgrade_configs (the sim rejects them): the filter chain has no
		// upgrade, so HCM refuses the request (upgrade_rejected).
		hc.stats.wsOnNonWSRoute.Add(1)
		s.dec.hdrs = h
		s.sendLocalReply(http.StatusForbidden, "", nil, "upgrade_failed")
		return
	}
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
	if !endStream {
		s.reading = true
		go s.readBody()
		s.readToken <- struct{}{}
	}
	s.dec.onHeaders(h, endStream)
}

// isUpgrade is Utility::isUpgrade: a Connection header with the upgrade token
// and an Upgrade header (WebSocket, SPDY for Kubernetes exec and attach).
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

// createFilterChain instantiates the HCM's HTTP filters: decoders in order,
// encoders in reverse order.
func (s *httpStream) createFilterChain() {
	s.dec = filterDir{s: s, sinkHeaders: func(*headerMap, bool) {}, sinkData: func(*buffer, bool) {}}
	s.enc = filterDir{s: s, sinkHeaders: s.encodeDownstreamHeaders, sinkData: s.encodeDownstreamData}
	type pending struct {
		f        any
		dec, enc *activeFilter
	}
	var all []pending
	for _, fac := range s.hcm.filters {
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
