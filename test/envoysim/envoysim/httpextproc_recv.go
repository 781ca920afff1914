package envoysim

import (
	"errors"

	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// onReceiveMessage is Filter::onReceiveMessage: the response oneof picks the
// direction and the handler, which accepts it only in the matching callback
// state (contract §4, "Matching rule"). A mismatch is spurious: counted in
// spurious_msgs_received and, since PR #39994 (1.35,
// runtime envoy.reloadable_features.ext_proc_fail_close_spurious_resp),
// answered with status_on_error (500) when fail-closed; fail-open drops the
// processor for the rest of the request.
func (f *httpExtProcFilter) onReceiveMessage(resp *extprocv3.ProcessingResponse) {
	if f.processingComplete {
		return
	}
	if d := resp.GetOverrideMessageTimeout(); d != nil {
		// The other fields of this message are ignored.
		if resp.GetResponse() != nil || resp.GetDynamicMetadata() != nil || resp.GetModeOverride() != nil {
			f.cfg.sim.violation(ViolationIgnoredResponseFields, 1)
		}
		f.onNewTimeout(d.AsDuration())
		return
	}
	if resp.GetModeOverride() != nil {
		f.cfg.sim.violation(ViolationIgnoredResponseFields, 1) // allow_mode_override is off
	}
	if len(resp.GetTypedDynamicMetadata()) > 0 || resp.GetRequestDrain() || resp.GetRequestDrainRequests() ||
		resp.GetRequestDrainResponses() || resp.GetServerWindowUpdate() != nil {
		f.cfg.sim.violation(ViolationUnsupportedResponses, 1)
	}
	var err error
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		f.receiveMetadata(resp)
		err = f.dec.handleHeadersResponse(r.RequestHeaders.GetResponse())
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		f.receiveMetadata(resp)
		err = f.enc.handleHeadersResponse(r.ResponseHeaders.GetResponse())
	case *extprocv3.ProcessingResponse_RequestBody:
		last := f.dec.lastBodyResponse()
		f.receiveMetadata(resp)
		err = f.dec.handleBodyResponse(r.RequestBody.GetResponse())
		f.closeIfLast(resp, last, err)
	case *extprocv3.ProcessingResponse_ResponseBody:
		last := f.enc.lastBodyResponse()
		f.receiveMetadata(resp)
		err = f.enc.handleBodyResponse(r.ResponseBody.GetResponse())
		f.closeIfLast(resp, last, err)
	case *extprocv3.ProcessingResponse_RequestTrailers, *extprocv3.ProcessingResponse_ResponseTrailers:
		err = errSpurious // trailers are never sent (trailer modes are SKIP)
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		if f.cfg.disableImmediateResponse {
			err = errSpurious
			break
		}
		f.receiveMetadata(resp)
		f.processingComplete = true
		f.finishCalls()
		f.closeStream()
		f.sendImmediateResponse(r.ImmediateResponse, 0)
		f.cfg.stats.streamMsgsReceived.Add(1)
		return
	default:
		if resp.GetStreamedImmediateResponse() != nil {
			f.cfg.sim.violation(ViolationUnsupportedResponses, 1)
		}
		err = errSpurious // "unhandled message"
	}
	switch {
	case err == nil:
		f.cfg.stats.streamMsgsReceived.Add(1)
	case errors.Is(err, errSpurious):
		f.cfg.stats.spuriousMsgsReceived.Add(1)
		f.cfg.sim.violation(ViolationWrongTypeResponses, 1)
		f.cfg.sim.logf("http stream %d: ext_proc: spurious response %T", f.s.id, resp.GetResponse())
		if f.cfg.failureModeAllow {
			f.cfg.stats.failureModeAllowed.Add(1)
			f.closeStream()
			f.processingComplete = true
			f.dec.clearAsyncState()
			f.enc.clearAsyncState()
			return
		}
		f.handleErrorResponse(err)
		return
	default:
		f.cfg.stats.streamMsgsReceived.Add(1)
		f.handleErrorResponse(err)
		return
	}
	f.closeIfDone(resp)
}

// handleErrorResponse answers status_on_error with the reason as details.
func (f *httpExtProcFilter) handleErrorResponse(err error) {
	f.processingComplete = true
	f.finishCalls()
	f.closeStream()
	f.sendImmediateResponse(&extprocv3.ImmediateResponse{Details: err.Error()}, f.cfg.statusOnError)
}

// receiveMetadata applies dynamic_metadata for the receiving namespaces; each
// value must be a Struct.
func (f *httpExtProcFilter) receiveMetadata(resp *extprocv3.ProcessingResponse) {
	for ns, v := range resp.GetDynamicMetadata().GetFields() {
		if f.cfg.recvUntyped[ns] && v.GetStructValue() != nil {
			f.s.setDynamicMetadata(ns, v.GetStructValue())
		}
	}
}

// lastBodyResponse is isLastBodyResponse: in STREAMED mode, whether the chunk
// this response answers ends the direction.
func (st *procState) lastBodyResponse() bool {
	return st.bodyMode == httpextprocv3.ProcessingMode_STREAMED && st.cb == cbStreamedBody &&
		len(st.queue) > 0 && st.queue[0].endStream
}

func (f *httpExtProcFilter) closeIfLast(resp *extprocv3.ProcessingResponse, last bool, err error) {
	if err != nil || !last {
		return
	}
	if _, req := resp.GetResponse().(*extprocv3.ProcessingResponse_RequestBody); req && !f.enc.noExternalProcess() {
		return
	}
	f.closeStreamMaybeGraceful()
}

// closeIfDone is closeGrpcStreamIfLastRespReceived (PR #41425, runtime
// envoy.reloadable_features.ext_proc_stream_close_optimization): the side
// stream closes as soon as nothing more will be sent on it.
func (f *httpExtProcFilter) closeIfDone(resp *extprocv3.ProcessingResponse) {
	if f.stream == nil {
		return
	}
	switch resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		if (f.dec.noBody || f.dec.bodyMode == httpextprocv3.ProcessingMode_NONE) && f.enc.noExternalProcess() {
			f.closeStreamMaybeGraceful()
		}
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		if f.enc.noBody || f.enc.bodyMode == httpextprocv3.ProcessingMode_NONE {
			f.closeStreamMaybeGraceful()
		}
	}
}
