package envoysim

import (
	"errors"

	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// procState is one direction of an HTTP ext_proc filter: Envoy's
// DecodingProcessorState / EncodingProcessorState
// (source/extensions/filters/http/ext_proc/processor_state.cc). Its callback
// state is the strict per-direction state machine of contract §4: a headers
// response is accepted only in headersCallback, a body response only in a
// body callback; anything else is "spurious message".

type callbackState int

const (
	cbIdle callbackState = iota
	cbHeaders
	cbBufferedBody
	cbStreamedBody
)

// errSpurious is absl::FailedPreconditionError("spurious message").
var errSpurious = errors.New("spurious message")

type streamedChunk struct {
	data      []byte
	endStream bool
}

type procState struct {
	f            *httpExtProcFilter
	h            *filterHandle
	request      bool
	sendHeaders  bool
	bodyMode     httpextprocv3.ProcessingMode_BodySendMode
	cb           callbackState
	timer        *timer
	paused       bool
	headers      *headerMap // headers_: mutable until the direction continues
	noBody       bool
	completeBody bool
	bodyReplaced bool
	queue        []*streamedChunk // STREAMED chunks sent and not yet answered
}

func (st *procState) startCall(cb callbackState) {
	st.cb = cb
	st.timer.enable(st.f.cfg.messageTimeout)
}

// finishCall is onFinishProcessorCall: the timer stops, the state moves on.
func (st *procState) finishCall(next callbackState) {
	st.timer.disable()
	st.cb = next
}

func (st *procState) continueIfNecessary() {
	if st.paused {
		st.paused = false
		st.h.continueIteration()
	}
}

// clearAsyncState forgets the outstanding call, injects every queued chunk
// and continues (used after an OK close, a fail-open timeout or error).
func (st *procState) clearAsyncState() {
	st.finishCall(cbIdle)
	for len(st.queue) > 0 {
		c := st.queue[0]
		st.queue = st.queue[1:]
		if len(c.data) > 0 {
			st.h.injectData(c.data, false)
		}
	}
	st.continueIfNecessary()
}

// shouldRemoveContentLength: in STREAMED mode (or BUFFERED without headers)
// the processor may change the body after the headers left.
func (st *procState) shouldRemoveContentLength() bool {
	return st.bodyMode == httpextprocv3.ProcessingMode_STREAMED ||
		st.bodyMode == httpextprocv3.ProcessingMode_BUFFERED && !st.sendHeaders
}

func (st *procState) noExternalProcess() bool {
	return !st.sendHeaders && st.bodyMode == httpextprocv3.ProcessingMode_NONE
}

// handleHeadersResponse is ProcessorState::handleHeadersResponse.
func (st *procState) handleHeadersResponse(common *extprocv3.CommonResponse) error {
	if st.cb != cbHeaders {
		return errSpurious
	}
	if m := common.GetHeaderMutation(); m != nil {
		if err := st.f.applyMutation(m, st.headers, common.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE); err != nil {
			return err
		}
	}
	st.clearRouteCache(common)
	st.finishCall(cbIdle)
	if common.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE {
		if bm := common.GetBodyMutation(); bm != nil {
			st.headers.remove("content-length")
			st.bodyReplaced = true
			if st.h.bufferedData() == nil {
				st.h.addBufferedData(nil)
			}
			applyBodyMutation(bm, st.h.bufferedData())
		}
		// Nothing more of this direction goes to the processor.
		st.bodyMode = httpextprocv3.ProcessingMode_NONE
	} else {
		switch {
		case st.noBody:
		case st.completeBody && st.bodyMode != httpextprocv3.ProcessingMode_NONE:
			// The whole body arrived while the headers were out: it goes as one
			// buffered message, whatever the mode.
			st.f.sendBody(st, st.bufferedCopy(), true, cbBufferedBody)
			return nil
		case st.bodyMode == httpextprocv3.ProcessingMode_BUFFERED:
			return nil // headers stay mutable until the body response
		case st.bodyMode == httpextprocv3.ProcessingMode_STREAMED:
			if b := st.h.bufferedData(); b != nil && b.Len() > 0 {
				data := b.take()
				st.f.sendBody(st, data, false, cbStreamedBody)
				st.queue = append(st.queue, &streamedChunk{data: data})
			}
			st.continueIfNecessary()
			return nil
		}
	}
	st.headers = nil
	st.continueIfNecessary()
	return nil
}

func (st *procState) bufferedCopy() []byte {
	if b := st.h.bufferedData(); b != nil {
		return append([]byte{}, b.Bytes()...)
	}
	return []byte{}
}

// handleBodyResponse is ProcessorState::handleBodyResponse.
func (st *procState) handleBodyResponse(common *extprocv3.CommonResponse) error {
	shouldContinue := false
	switch st.cb {
	case cbBufferedBody:
		if m := common.GetHeaderMutation(); m != nil && st.headers != nil {
			if err := st.f.applyMutation(m, st.headers, common.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE); err != nil {
				return err
			}
		}
		if bm := common.GetBodyMutation(); bm != nil {
			if st.headers != nil {
				st.headers.remove("content-length")
			}
			if st.h.bufferedData() == nil {
				st.h.addBufferedData(nil)
			}
			applyBodyMutation(bm, st.h.bufferedData())
		}
		st.finishCall(cbIdle)
		shouldContinue = true
	case cbStreamedBody:
		if common.GetHeaderMutation() != nil {
			// Header mutations in a body response apply only in BUFFERED mode.
			st.f.cfg.sim.violation(ViolationIgnoredResponseFields, 1)
		}
		c := st.queue[0]
		st.queue = st.queue[1:]
		b := newBuffer(c.data)
		if bm := common.GetBodyMutation(); bm != nil {
			applyBodyMutation(bm, b)
		}
		shouldContinue = c.endStream
		if b.Len() > 0 {
			st.h.injectData(b.take(), false)
		}
		if len(st.queue) == 0 {
			st.finishCall(cbIdle)
		} else {
			st.finishCall(cbStreamedBody) // the timer stops until the next chunk is sent
		}
	default:
		return errSpurious
	}
	st.clearRouteCache(common)
	st.headers = nil
	if shouldContinue {
		st.continueIfNecessary()
	}
	return nil
}

func (st *procState) clearRouteCache(common *extprocv3.CommonResponse) {
	if !common.GetClearRouteCache() {
		return
	}
	if !st.request {
		st.f.cfg.stats.clearRouteCacheIgnored.Add(1) // ignored on the response path
		return
	}
	st.f.s.clearRouteCache()
}
