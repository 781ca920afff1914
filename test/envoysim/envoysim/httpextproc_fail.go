package envoysim

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
)

// The failure paths of the HTTP ext_proc filter (contract §4, "Other
// errors"): gRPC errors, the processor's OK close, message timeouts and
// their override, and the local replies they produce.

func (f *httpExtProcFilter) onStreamClose(ps *httpProcStream, code codes.Code, msg string) {
	if ps != f.stream || f.s.done {
		return
	}
	if code == codes.OK {
		f.onGrpcClose()
		return
	}
	f.onGrpcError(code, msg)
}

// onGrpcError: status_on_error (500) unless failure_mode_allow (contract §4).
func (f *httpExtProcFilter) onGrpcError(code codes.Code, msg string) {
	f.cfg.sim.logf("http stream %d: ext_proc: gRPC error %s: %s", f.s.id, code, msg)
	f.cfg.stats.streamsFailed.Add(1)
	if f.processingComplete {
		return
	}
	if f.cfg.failureModeAllow {
		f.onGrpcClose()
		f.cfg.stats.failureModeAllowed.Add(1)
		return
	}
	f.processingComplete = true
	f.finishCalls()
	f.closeStream()
	f.sendImmediateResponse(&extprocv3.ImmediateResponse{
		Details: fmt.Sprintf("ext_proc_error_gRPC_error_%d{%s}", code, msg),
	}, f.cfg.statusOnError)
}

// onGrpcClose: an OK close by the processor; Envoy goes on without it.
func (f *httpExtProcFilter) onGrpcClose() {
	if f.processingComplete {
		return
	}
	f.processingComplete = true
	f.closeStream()
	f.dec.clearAsyncState()
	f.enc.clearAsyncState()
}

// onMessageTimeout: 504, or on without the processor when fail-open.
func (f *httpExtProcFilter) onMessageTimeout() {
	f.cfg.sim.logf("http stream %d: ext_proc: message timeout", f.s.id)
	f.cfg.stats.messageTimeouts.Add(1)
	f.cfg.sim.violation(ViolationTimeouts, 1)
	f.processingComplete = true
	f.closeStream()
	if f.cfg.failureModeAllow {
		f.cfg.stats.failureModeAllowed.Add(1)
		f.dec.clearAsyncState()
		f.enc.clearAsyncState()
		return
	}
	f.finishCalls()
	f.sendImmediateResponse(&extprocv3.ImmediateResponse{Details: "ext_proc_error_per-message_timeout_exceeded"}, http.StatusGatewayTimeout)
}

func (f *httpExtProcFilter) finishCalls() {
	f.dec.finishCall(cbIdle)
	f.enc.finishCall(cbIdle)
}

// sendImmediateResponse is a local reply; code overrides the message's status
// when non-zero. An invalid status (below 200) becomes 200.
func (f *httpExtProcFilter) sendImmediateResponse(ir *extprocv3.ImmediateResponse, code int) {
	if code == 0 {
		code = http.StatusOK
		if ir.GetStatus() != nil {
			code = int(ir.GetStatus().GetCode())
		}
		if code < 200 {
			code = http.StatusOK
		}
	}
	mutate := func(h *headerMap) {
		if m := ir.GetHeaders(); m != nil {
			rawOnly := 0
			if err := applyHeaderMutation(m, h, false, true, f.cfg.stats.rejectedHeaderMutations, &rawOnly); err != nil {
				f.cfg.sim.logf("http stream %d: ext_proc: immediate response mutations failed: %v", f.s.id, err)
			}
			f.cfg.sim.violation(ViolationIgnoredHeaderValues, int64(rawOnly))
		}
	}
	f.sentImmediate = true
	f.s.sendLocalReply(code, string(ir.GetBody()), mutate, strings.Join(strings.Fields(ir.GetDetails()), "_"))
}

// closeStream half-closes and resets the side stream.
func (f *httpExtProcFilter) closeStream() {
	if f.stream == nil {
		return
	}
	f.stream.close()
	f.stream = nil
	f.cfg.stats.streamsClosed.Add(1)
}

// onNewTimeout handles override_message_timeout: 1 ms ≤ value ≤
// max_message_timeout, and only while a call is outstanding.
func (f *httpExtProcFilter) onNewTimeout(d time.Duration) {
	if d < time.Millisecond || d > f.cfg.maxMessageTimeout {
		f.cfg.stats.overrideTimeoutIgnored.Add(1)
		return
	}
	restarted := false
	for _, st := range []*procState{f.dec, f.enc} {
		if st.timer.enabled() {
			st.timer.enable(d)
			restarted = true
		}
	}
	if !restarted {
		f.cfg.stats.overrideTimeoutIgnored.Add(1)
		return
	}
	f.cfg.stats.overrideTimeoutReceived.Add(1)
}
