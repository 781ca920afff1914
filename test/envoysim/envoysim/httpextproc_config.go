package envoysim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// HTTP ext_proc configuration (contract §4) and its stats, named as in
// source/extensions/filters/http/ext_proc/ext_proc.h (ALL_EXT_PROC_FILTER_STATS,
// prefix "http.<hcm stat_prefix>.ext_proc.").

var httpExtProcConfigName = (&httpextprocv3.ExternalProcessor{}).ProtoReflect().Descriptor().FullName()

type httpProcStream = procStream[*extprocv3.ProcessingRequest, *extprocv3.ProcessingResponse]

func openHTTPProcess(ctx context.Context, cc *grpc.ClientConn) (bidiStream[*extprocv3.ProcessingRequest, *extprocv3.ProcessingResponse], error) {
	return extprocv3.NewExternalProcessorClient(cc).Process(ctx)
}

type httpExtProcStats struct {
	streamsStarted, streamMsgsSent, streamMsgsReceived, spuriousMsgsReceived, streamsClosed,
	streamsFailed, failureModeAllowed, messageTimeouts, rejectedHeaderMutations,
	overrideTimeoutReceived, overrideTimeoutIgnored, clearRouteCacheIgnored *atomic.Int64
}

func newHTTPExtProcStats(st *Stats, p string) *httpExtProcStats {
	c := func(n string) *atomic.Int64 { return st.counter(p + n) }
	return &httpExtProcStats{
		streamsStarted: c("streams_started"), streamMsgsSent: c("stream_msgs_sent"),
		streamMsgsReceived: c("stream_msgs_received"), spuriousMsgsReceived: c("spurious_msgs_received"),
		streamsClosed: c("streams_closed"), streamsFailed: c("streams_failed"),
		failureModeAllowed: c("failure_mode_allowed"), messageTimeouts: c("message_timeouts"),
		rejectedHeaderMutations: c("rejected_header_mutations"),
		overrideTimeoutReceived: c("override_message_timeout_received"),
		overrideTimeoutIgnored:  c("override_message_timeout_ignored"),
		clearRouteCacheIgnored:  c("clear_route_cache_ignored"),
	}
}

type httpExtProcConfig struct {
	sim                      *Sim
	target                   *grpcTarget
	failureModeAllow         bool
	mode                     *httpextprocv3.ProcessingMode
	messageTimeout           time.Duration
	maxMessageTimeout        time.Duration
	statusOnError            int
	disableImmediateResponse bool
	fwdUntyped, fwdTyped     []string
	recvUntyped              map[string]bool
	stats                    *httpExtProcStats
}

func buildHTTPExtProc(hc *hcmConfig, cb *chainBuild, m proto.Message) (func(*httpStream, string) any, error) {
	pc := m.(*httpextprocv3.ExternalProcessor)
	if err := checkFields(pc, "grpc_service", "failure_mode_allow", "processing_mode", "message_timeout",
		"stat_prefix", "metadata_options", "max_message_timeout", "status_on_error", "disable_immediate_response"); err != nil {
		return nil, err
	}
	// Checks of config.cc (C++ only, contract §7).
	if pc.GetGrpcService() == nil {
		return nil, errors.New("One and only one of grpc_service or http_service must be configured")
	}
	mode := pc.GetProcessingMode()
	if err := checkProcessingMode(mode); err != nil {
		return nil, err
	}
	if err := checkFields(pc.GetMetadataOptions(), "forwarding_namespaces", "receiving_namespaces"); err != nil {
		return nil, err
	}
	if err := checkFields(pc.GetMetadataOptions().GetReceivingNamespaces(), "untyped"); err != nil {
		return nil, err
	}
	target, err := parseGrpcService(pc.GetGrpcService())
	if err != nil {
		return nil, err
	}
	cfg := &httpExtProcConfig{
		sim: cb.sim, target: target, failureModeAllow: pc.GetFailureModeAllow(),
		mode: normalizedMode(mode), messageTimeout: extProcDefaultMessageTimeout,
		statusOnError: http.StatusInternalServerError, disableImmediateResponse: pc.GetDisableImmediateResponse(),
		fwdUntyped:  pc.GetMetadataOptions().GetForwardingNamespaces().GetUntyped(),
		fwdTyped:    pc.GetMetadataOptions().GetForwardingNamespaces().GetTyped(),
		recvUntyped: map[string]bool{},
	}
	if pc.GetMessageTimeout() != nil {
		cfg.messageTimeout = pc.GetMessageTimeout().AsDuration()
	}
	if pc.GetMaxMessageTimeout() != nil {
		cfg.maxMessageTimeout = pc.GetMaxMessageTimeout().AsDuration()
	}
	if c := pc.GetStatusOnError().GetCode(); c != 0 {
		cfg.statusOnError = int(c)
	}
	for _, ns := range pc.GetMetadataOptions().GetReceivingNamespaces().GetUntyped() {
		cfg.recvUntyped[ns] = true
	}
	p := hc.statPrefix + "ext_proc."
	if sp := pc.GetStatPrefix(); sp != "" {
		p += sp + "."
	}
	cfg.stats = newHTTPExtProcStats(cb.sim.stats, p)
	return func(s *httpStream, _ string) any { return newHTTPExtProcFilter(cfg, s) }, nil
}

// checkProcessingMode accepts the modes the sim implements: headers SEND or
// SKIP, bodies NONE, STREAMED or BUFFERED, trailers SKIP.
func checkProcessingMode(m *httpextprocv3.ProcessingMode) error {
	for _, b := range []httpextprocv3.ProcessingMode_BodySendMode{m.GetRequestBodyMode(), m.GetResponseBodyMode()} {
		switch b {
		case httpextprocv3.ProcessingMode_NONE, httpextprocv3.ProcessingMode_STREAMED, httpextprocv3.ProcessingMode_BUFFERED:
		default:
			return fmt.Errorf("processing_mode body mode %s is not implemented by envoysim", b)
		}
	}
	for _, t := range []httpextprocv3.ProcessingMode_HeaderSendMode{m.GetRequestTrailerMode(), m.GetResponseTrailerMode()} {
		if t == httpextprocv3.ProcessingMode_SEND {
			return errors.New("processing_mode trailer mode SEND is not implemented by envoysim")
		}
	}
	return nil
}

// normalizedMode resolves DEFAULT: headers SEND, trailers SKIP.
func normalizedMode(m *httpextprocv3.ProcessingMode) *httpextprocv3.ProcessingMode {
	out := &httpextprocv3.ProcessingMode{
		RequestHeaderMode: httpextprocv3.ProcessingMode_SEND, ResponseHeaderMode: httpextprocv3.ProcessingMode_SEND,
		RequestBodyMode: m.GetRequestBodyMode(), ResponseBodyMode: m.GetResponseBodyMode(),
	}
	if m.GetRequestHeaderMode() == httpextprocv3.ProcessingMode_SKIP {
		out.RequestHeaderMode = httpextprocv3.ProcessingMode_SKIP
	}
	if m.GetResponseHeaderMode() == httpextprocv3.ProcessingMode_SKIP {
		out.ResponseHeaderMode = httpextprocv3.ProcessingMode_SKIP
	}
	return out
}
