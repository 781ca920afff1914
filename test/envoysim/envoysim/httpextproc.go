package envoysim

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// HTTP ext_proc (envoy.filters.http.ext_proc), contract §4, following
// source/extensions/filters/http/ext_proc/ext_proc.cc (2025-26 snapshot):
// one gRPC stream per HTTP request, opened at the first message; request
// headers, body, then response headers and body, each answered before that
// direction moves on (STREAMED chunks are pipelined and answered FIFO). The
// per-direction logic is in httpextproc_state.go.

type httpExtProcFilter struct {
	cfg                *httpExtProcConfig
	s                  *httpStream
	dec, enc           *procState
	stream             *httpProcStream
	processingComplete bool
	protocolConfigSent bool
	sentImmediate      bool
}

func newHTTPExtProcFilter(cfg *httpExtProcConfig, s *httpStream) *httpExtProcFilter {
	f := &httpExtProcFilter{cfg: cfg, s: s}
	f.dec = &procState{f: f, request: true, sendHeaders: cfg.mode.GetRequestHeaderMode() == httpextprocv3.ProcessingMode_SEND,
		bodyMode: cfg.mode.GetRequestBodyMode()}
	f.enc = &procState{f: f, sendHeaders: cfg.mode.GetResponseHeaderMode() == httpextprocv3.ProcessingMode_SEND,
		bodyMode: cfg.mode.GetResponseBodyMode()}
	for _, st := range []*procState{f.dec, f.enc} {
		st.timer = s.d.newTimer(f.onMessageTimeout)
	}
	return f
}

func (f *httpExtProcFilter) init(dec, enc *filterHandle) { f.dec.h, f.enc.h = dec, enc }

type openResult int

const (
	openOK openResult = iota
	openError
	openIgnore
)

// openStream opens the side stream at the first message.
func (f *httpExtProcFilter) openStream() openResult {
	if f.processingComplete {
		return openIgnore
	}
	if f.stream != nil {
		return openOK
	}
	ps, err := startProcStream(f.cfg.sim, f.cfg.target, openHTTPProcess, procCallbacks[*extprocv3.ProcessingRequest, *extprocv3.ProcessingResponse]{
		d: f.s.d, onMessage: f.onStreamMessage, onClose: f.onStreamClose,
	})
	if err != nil {
		// Envoy's async client reports a failed start as a gRPC error at once.
		f.onGrpcError(codes.Unavailable, err.Error())
		if f.sentImmediate {
			return openError
		}
		return openIgnore
	}
	f.stream = ps
	f.cfg.stats.streamsStarted.Add(1)
	return openOK
}

func (f *httpExtProcFilter) decodeHeaders(h *headerMap, endStream bool) headersStatus {
	return f.onHeaders(f.dec, h, endStream)
}

func (f *httpExtProcFilter) encodeHeaders(h *headerMap, endStream bool) headersStatus {
	st := f.onHeaders(f.enc, h, endStream)
	if f.enc.noExternalProcess() {
		f.closeStreamMaybeGraceful()
	}
	return st
}

func (f *httpExtProcFilter) onHeaders(st *procState, h *headerMap, endStream bool) headersStatus {
	if endStream {
		st.completeBody = true
	}
	status := headersContinue
	if !f.processingComplete && st.sendHeaders {
		switch f.openStream() {
		case openError:
			return headersStopIteration
		case openIgnore:
			return headersContinue
		}
		st.headers, st.noBody = h, endStream
		req := f.newRequest()
		hh := &extprocv3.HttpHeaders{Headers: h.proto(), EndOfStream: endStream}
		if st.request {
			req.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: hh}
		} else {
			req.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: hh}
		}
		st.startCall(cbHeaders)
		f.send(req)
		st.paused = true
		status = headersStopIteration
	}
	if !f.processingComplete && st.shouldRemoveContentLength() {
		h.remove("content-length")
	}
	return status
}

func (f *httpExtProcFilter) decodeData(b *buffer, endStream bool) dataStatus {
	return f.onData(f.dec, b, endStream)
}

func (f *httpExtProcFilter) encodeData(b *buffer, endStream bool) dataStatus {
	return f.onData(f.enc, b, endStream)
}

// onData is Filter::onData for the NONE, BUFFERED and STREAMED modes.
func (f *httpExtProcFilter) onData(st *procState, b *buffer, endStream bool) dataStatus {
	if endStream {
		st.completeBody = true
	}
	if st.bodyReplaced {
		b.take() // CONTINUE_AND_REPLACE: the rest of the body is dropped
		return dataContinue
	}
	if f.processingComplete {
		return dataContinue
	}
	if st.cb == cbHeaders {
		// Held until the headers response (StopIterationAndBuffer in BUFFERED
		// mode, StopIterationAndWatermark otherwise).
		st.paused = true
		return dataStopAndBuffer
	}
	switch st.bodyMode {
	case httpextprocv3.ProcessingMode_BUFFERED:
		if !endStream {
			st.paused = true
			return dataStopAndBuffer
		}
		switch f.openStream() {
		case openError:
			return dataStopNoBuffer
		case openIgnore:
			return dataContinue
		}
		st.h.addBufferedData(b.take())
		f.sendBody(st, st.bufferedCopy(), true, cbBufferedBody)
		st.paused = true
		return dataStopNoBuffer
	case httpextprocv3.ProcessingMode_STREAMED:
		switch f.openStream() {
		case openError:
			return dataStopNoBuffer
		case openIgnore:
			return dataContinue
		}
		data := b.take()
		f.sendBody(st, data, endStream, cbStreamedBody)
		st.queue = append(st.queue, &streamedChunk{data: data, endStream: endStream})
		if endStream {
			st.paused = true
			return dataStopNoBuffer
		}
		return dataContinue // with the bytes moved to the queue
	}
	return dataContinue
}

// newRequest carries what every message carries: the forwarded metadata and,
// once per stream, the protocol configuration.
func (f *httpExtProcFilter) newRequest() *extprocv3.ProcessingRequest {
	req := &extprocv3.ProcessingRequest{MetadataContext: f.forwardedMetadata()}
	if !f.protocolConfigSent {
		f.protocolConfigSent = true
		req.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode: f.dec.bodyMode, ResponseBodyMode: f.enc.bodyMode,
		}
	}
	return req
}

// forwardedMetadata is addDynamicMetadata: the stream's value of each
// forwarded namespace (it wins over the connection's, which HTTP listeners in
// the sim never have).
func (f *httpExtProcFilter) forwardedMetadata() *corev3.Metadata {
	out := &corev3.Metadata{}
	md := f.s.dynamicMetadata
	for _, ns := range f.cfg.fwdUntyped {
		if v, ok := md.GetFilterMetadata()[ns]; ok {
			if out.FilterMetadata == nil {
				out.FilterMetadata = map[string]*structpb.Struct{}
			}
			out.FilterMetadata[ns] = proto.Clone(v).(*structpb.Struct)
		}
	}
	for _, ns := range f.cfg.fwdTyped {
		if v, ok := md.GetTypedFilterMetadata()[ns]; ok {
			if out.TypedFilterMetadata == nil {
				out.TypedFilterMetadata = map[string]*anypb.Any{}
			}
			out.TypedFilterMetadata[ns] = proto.Clone(v).(*anypb.Any)
		}
	}
	return out
}

func (f *httpExtProcFilter) sendBody(st *procState, data []byte, endStream bool, cb callbackState) {
	req := f.newRequest()
	hb := &extprocv3.HttpBody{Body: append([]byte{}, data...), EndOfStream: endStream}
	if st.request {
		req.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: hb}
	} else {
		req.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: hb}
	}
	st.startCall(cb)
	f.send(req)
}

func (f *httpExtProcFilter) send(req *extprocv3.ProcessingRequest) {
	f.stream.send(req)
	f.cfg.stats.streamMsgsSent.Add(1)
}

func (f *httpExtProcFilter) applyMutation(m *extprocv3.HeaderMutation, h *headerMap, replacing bool) error {
	rawOnly := 0
	err := applyHeaderMutation(m, h, replacing, false, f.cfg.stats.rejectedHeaderMutations, &rawOnly)
	f.cfg.sim.violation(ViolationIgnoredHeaderValues, int64(rawOnly))
	return err
}

func (f *httpExtProcFilter) onStreamMessage(ps *httpProcStream, resp *extprocv3.ProcessingResponse) {
	if ps != f.stream || f.s.done {
		return // closed: Envoy delivers nothing after close()
	}
	f.onReceiveMessage(resp)
}

// closeStreamMaybeGraceful ends processing and closes the side stream (a
// reset: runtime ext_proc_graceful_grpc_close is off by default).
func (f *httpExtProcFilter) closeStreamMaybeGraceful() {
	f.processingComplete = true
	f.closeStream()
}

func (f *httpExtProcFilter) onDestroy() {
	f.dec.timer.disable()
	f.enc.timer.disable()
	f.closeStreamMaybeGraceful()
}
