package envoysim

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Network ext_proc (envoy.filters.network.ext_proc), contract §1. Behaviour
// follows source/extensions/filters/network/ext_proc/ext_proc.cc (the v1.40 data
// path; process_new_connection is post-1.40 and not in the v1.40 proto).

type extProcFilter struct {
	cfg  *extProcConfig
	conn *conn
	rcb  *activeReadFilter
	wcb  *activeWriteFilter

	stream             *netProcStream
	processingComplete bool
	readPending        bool
	writePending       bool
	readTimer          *timer
	writeTimer         *timer
	// uint32 like the C++ counters: an unsolicited response decrements 0 to
	// 2^32-1, after which disableClose(false) is only issued by closeStream
	// (contract §1.4).
	disableCountRead  uint32
	disableCountWrite uint32

	// Sizes of the chunks not yet answered, per direction, for the violation
	// counters only (Envoy keeps no such record).
	outRead, outWrite []int
}

func (f *extProcFilter) initializeReadFilterCallbacks(cb *activeReadFilter) {
	f.rcb = cb
	f.conn.addConnectionCallbacks(func(ev connEvent) {
		if ev == evLocalClose || ev == evRemoteClose {
			f.closeStream()
		}
	})
	f.readTimer = f.conn.d.newTimer(func() { f.handleMessageTimeout(true) })
	f.writeTimer = f.conn.d.newTimer(func() { f.handleMessageTimeout(false) })
}

func (f *extProcFilter) initializeWriteFilterCallbacks(cb *activeWriteFilter) { f.wcb = cb }

// onNewConnection sends nothing in v1.40 (contract §1.1).
func (f *extProcFilter) onNewConnection() filterStatus { return continueIteration }

func (f *extProcFilter) onData(data *buffer, endStream bool) filterStatus {
	if !f.cfg.processRead {
		return continueIteration
	}
	return f.process(data, endStream, true)
}

func (f *extProcFilter) onWrite(data *buffer, endStream bool) filterStatus {
	if !f.cfg.processWrite {
		return continueIteration
	}
	return f.process(data, endStream, false)
}

func (f *extProcFilter) process(data *buffer, endStream, read bool) filterStatus {
	switch f.openStream() {
	case streamIgnoreError:
		return continueIteration
	case streamError:
		return f.handleStreamError()
	}
	f.sendRequest(data, endStream, read)
	return stopIteration
}

type streamOpenState int

const (
	streamOK streamOpenState = iota
	streamError
	streamIgnoreError
)

func (f *extProcFilter) openStream() streamOpenState {
	if f.processingComplete {
		return streamIgnoreError
	}
	if f.stream != nil {
		return streamOK
	}
	ps, err := startProcStream(f.cfg.sim, f.cfg.target, openNetProcess, procCallbacks[*netextprocv3.ProcessingRequest, *netextprocv3.ProcessingResponse]{
		d:         f.conn.d,
		onMessage: f.onStreamMessage,
		onClose:   f.onStreamClose,
	})
	if err != nil {
		f.cfg.sim.logf("conn %d: ext_proc: cannot start stream: %v", f.conn.id, err)
		f.cfg.stats.streamOpenFailures.Add(1)
		return streamError
	}
	f.stream = ps
	f.cfg.stats.streamsStarted.Add(1)
	return streamOK
}

func (f *extProcFilter) handleStreamError() filterStatus {
	f.processingComplete = true
	f.closeStream()
	if f.cfg.failureModeAllow {
		f.cfg.stats.failureModeAllowed.Add(1)
		return continueIteration
	}
	f.closeConnection("ext_proc_stream_error", closeFlushWrite)
	return stopIteration
}

func (f *extProcFilter) updateCloseCallbackStatus(enable, read bool) {
	count, disable := &f.disableCountWrite, f.wcb.disableClose
	if read {
		count, disable = &f.disableCountRead, f.rcb.disableClose
	}
	if enable {
		*count++
		disable(true)
		return
	}
	*count--
	if *count == 0 {
		disable(false)
	}
}

// sendRequest sends the whole chunk without waiting for earlier answers, drains
// it, and restarts the direction's timer (contract §1.3).
func (f *extProcFilter) sendRequest(data *buffer, endStream, read bool) {
	f.updateCloseCallbackStatus(true, read)
	req := &netextprocv3.ProcessingRequest{Metadata: f.forwardedMetadata()}
	d := &netextprocv3.Data{Data: append([]byte{}, data.Bytes()...), EndOfStream: endStream}
	if read {
		req.ReadData = d
		f.cfg.stats.readDataSent.Add(1)
		f.readPending = true
		f.outRead = append(f.outRead, data.Len())
		f.startTimer(f.readTimer)
	} else {
		req.WriteData = d
		f.cfg.stats.writeDataSent.Add(1)
		f.writePending = true
		f.outWrite = append(f.outWrite, data.Len())
		f.startTimer(f.writeTimer)
	}
	f.stream.send(req)
	f.cfg.stats.streamMsgsSent.Add(1)
	data.drain(data.Len())
}

func (f *extProcFilter) startTimer(t *timer) {
	if f.cfg.messageTimeout > 0 {
		t.enable(f.cfg.messageTimeout)
	}
}

func (f *extProcFilter) forwardedMetadata() *corev3.Metadata {
	if len(f.cfg.fwdUntyped) == 0 && len(f.cfg.fwdTyped) == 0 {
		return nil
	}
	src, out := f.conn.dynamicMetadata, &corev3.Metadata{}
	for _, ns := range f.cfg.fwdUntyped {
		if v, ok := src.GetFilterMetadata()[ns]; ok {
			if out.FilterMetadata == nil {
				out.FilterMetadata = map[string]*structpb.Struct{}
			}
			out.FilterMetadata[ns] = proto.Clone(v).(*structpb.Struct)
		}
	}
	for _, ns := range f.cfg.fwdTyped {
		if v, ok := src.GetTypedFilterMetadata()[ns]; ok {
			if out.TypedFilterMetadata == nil {
				out.TypedFilterMetadata = map[string]*anypb.Any{}
			}
			out.TypedFilterMetadata[ns] = proto.Clone(v).(*anypb.Any)
		}
	}
	if len(out.FilterMetadata) == 0 && len(out.TypedFilterMetadata) == 0 {
		return nil
	}
	return out
}

func (f *extProcFilter) onStreamMessage(ps *netProcStream, resp *netextprocv3.ProcessingResponse) {
	if ps != f.stream {
		return // closed: Envoy delivers nothing after close()
	}
	f.onReceiveMessage(resp)
}

// onReceiveMessage applies a response in the order of contract §1.4.
func (f *extProcFilter) onReceiveMessage(resp *netextprocv3.ProcessingResponse) {
	st := f.cfg.stats
	if f.processingComplete {
		st.spuriousMsgsReceived.Add(1)
		f.cfg.sim.violation(ViolationSpuriousResponses, 1)
		return
	}
	st.streamMsgsReceived.Add(1)
	f.handleConnectionStatus(resp)
	if f.processingComplete {
		return // CLOSE / CLOSE_RST: the response's data is not injected
	}
	for k, v := range resp.GetDynamicMetadata().GetFields() {
		if f.cfg.recvUntyped[k] && v.GetStructValue() != nil {
			f.conn.setDynamicMetadata(k, v.GetStructValue())
		}
	}
	switch {
	case resp.GetReadData() != nil:
		if resp.GetWriteData() != nil {
			f.cfg.sim.violation(ViolationWrongTypeResponses, 1) // write_data is dropped
		}
		if f.readPending {
			f.readTimer.disable()
		}
		f.readPending = false
		f.account(&f.outRead)
		f.rcb.injectReadDataToFilterChain(resp.GetReadData().GetData(), resp.GetReadData().GetEndOfStream())
		f.updateCloseCallbackStatus(false, true)
		st.readDataInjected.Add(1)
	case resp.GetWriteData() != nil:
		if f.writePending {
			f.writeTimer.disable()
		}
		f.writePending = false
		f.account(&f.outWrite)
		f.wcb.injectWriteDataToFilterChain(resp.GetWriteData().GetData(), resp.GetWriteData().GetEndOfStream())
		f.updateCloseCallbackStatus(false, false)
		st.writeDataInjected.Add(1)
	default:
		// Not an answer: nothing injected, counter and timer untouched.
		st.emptyResponseReceived.Add(1)
		f.cfg.sim.violation(ViolationEmptyResponses, 1)
	}
	if resp.GetCloseStreamToExtProcServer() {
		f.processingComplete = true
		f.closeStream()
	}
}

// account matches a response to the oldest outstanding chunk of its
// direction. Envoy has no correlation: an unsolicited response is injected all
// the same.
func (f *extProcFilter) account(out *[]int) {
	if len(*out) == 0 {
		f.cfg.sim.violation(ViolationUnsolicitedResponses, 1)
		return
	}
	*out = (*out)[1:]
}

func (f *extProcFilter) handleConnectionStatus(resp *netextprocv3.ProcessingResponse) {
	switch resp.GetConnectionStatus() {
	case netextprocv3.ProcessingResponse_CLOSE:
		f.closeConnection("ext_proc_close_requested", closeFlushWrite)
		f.processingComplete = true
	case netextprocv3.ProcessingResponse_CLOSE_RST:
		f.closeConnection("ext_proc_reset_requested", closeAbortReset)
		f.processingComplete = true
	}
}

func (f *extProcFilter) onStreamClose(ps *netProcStream, code codes.Code, msg string) {
	if ps != f.stream {
		return
	}
	if code == codes.OK {
		f.onGrpcClose()
		return
	}
	f.onGrpcError(code, msg)
}

// onGrpcError: the connection closes unless failure_mode_allow (contract §1.5).
func (f *extProcFilter) onGrpcError(code codes.Code, msg string) {
	f.cfg.sim.logf("conn %d: ext_proc: gRPC error %s: %s", f.conn.id, code, msg)
	f.processingComplete = true
	f.closeStream()
	f.cfg.stats.streamsGrpcError.Add(1)
	if !f.cfg.failureModeAllow {
		f.closeConnection("ext_proc_grpc_error", closeFlushWrite)
		return
	}
	f.cfg.stats.failureModeAllowed.Add(1)
}

// onGrpcClose: an OK close by the processor never closes the connection; later
// data passes through unprocessed.
func (f *extProcFilter) onGrpcClose() {
	f.processingComplete = true
	f.cfg.stats.streamsGrpcClose.Add(1)
	f.closeStream()
}

func (f *extProcFilter) handleMessageTimeout(read bool) {
	f.cfg.sim.logf("conn %d: ext_proc: message timeout (read=%v)", f.conn.id, read)
	f.cfg.stats.messageTimeouts.Add(1)
	f.cfg.sim.violation(ViolationTimeouts, 1)
	f.processingComplete = true
	f.readPending, f.writePending = false, false
	f.closeStream()
	if f.cfg.failureModeAllow {
		f.cfg.stats.failureModeAllowed.Add(1)
		return
	}
	f.closeConnection("ext_proc_message_timeout", closeFlushWrite)
}

// closeStream stops the timers, re-enables close for both directions, and
// half-closes then resets the gRPC stream.
func (f *extProcFilter) closeStream() {
	f.readTimer.disable()
	f.writeTimer.disable()
	f.readPending, f.writePending = false, false
	if f.disableCountRead > 0 {
		f.rcb.disableClose(false)
		f.disableCountRead = 0
	}
	if f.disableCountWrite > 0 {
		f.wcb.disableClose(false)
		f.disableCountWrite = 0
	}
	if f.stream == nil {
		return
	}
	f.stream.close()
	f.stream = nil
	f.cfg.stats.streamsClosed.Add(1)
	// A lost end_of_stream-only chunk loses no bytes (and a processor that never
	// answers one is caught by message_timeout), so only chunks with bytes count.
	lost := 0
	for _, n := range append(f.outRead, f.outWrite...) {
		if n > 0 {
			lost++
		}
	}
	f.cfg.sim.violation(ViolationUnansweredChunks, int64(lost))
	f.outRead, f.outWrite = nil, nil
}

func (f *extProcFilter) closeConnection(reason string, t closeType) {
	f.closeStream()
	f.conn.close(t, reason)
	if t == closeAbortReset {
		f.cfg.stats.connectionsReset.Add(1)
	}
	f.cfg.stats.connectionsClosed.Add(1)
}

func (f *extProcFilter) onDestroy() { f.closeStream() }
