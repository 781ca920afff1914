package envoysim

import (
	"errors"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// Network ext_proc configuration (contract §1.1) and its stats, named as in
// source/extensions/filters/network/ext_proc/ext_proc.h
// (ALL_NETWORK_EXT_PROC_FILTER_STATS, prefix "network_ext_proc.<stat_prefix>.").

var extProcConfigName = (&extprocv3.NetworkExternalProcessor{}).ProtoReflect().Descriptor().FullName()

// extProcDefaultMessageTimeout is DefaultMessageTimeoutMs in config.h.
const extProcDefaultMessageTimeout = 200 * time.Millisecond

type extProcStats struct {
	streamsStarted, streamMsgsSent, streamMsgsReceived, readDataSent, writeDataSent,
	readDataInjected, writeDataInjected, emptyResponseReceived, spuriousMsgsReceived,
	streamsClosed, streamsGrpcError, streamsGrpcClose, connectionsClosed,
	failureModeAllowed, streamOpenFailures, connectionsReset, messageTimeouts *atomic.Int64
}

func newExtProcStats(st *Stats, prefix string) *extProcStats {
	p := "network_ext_proc." + prefix + "."
	c := func(n string) *atomic.Int64 { return st.counter(p + n) }
	return &extProcStats{
		streamsStarted: c("streams_started"), streamMsgsSent: c("stream_msgs_sent"),
		streamMsgsReceived: c("stream_msgs_received"), readDataSent: c("read_data_sent"),
		writeDataSent: c("write_data_sent"), readDataInjected: c("read_data_injected"),
		writeDataInjected: c("write_data_injected"), emptyResponseReceived: c("empty_response_received"),
		spuriousMsgsReceived: c("spurious_msgs_received"), streamsClosed: c("streams_closed"),
		streamsGrpcError: c("streams_grpc_error"), streamsGrpcClose: c("streams_grpc_close"),
		connectionsClosed: c("connections_closed"), failureModeAllowed: c("failure_mode_allowed"),
		streamOpenFailures: c("stream_open_failures"), connectionsReset: c("connections_reset"),
		messageTimeouts: c("message_timeouts"),
	}
}

type extProcConfig struct {
	sim              *Sim
	failureModeAllow bool
	processRead      bool
	processWrite     bool
	messageTimeout   time.Duration
	target           *grpcTarget
	fwdUntyped       []string
	fwdTyped         []string
	recvUntyped      map[string]bool
	stats            *extProcStats
}

func buildExtProc(cb *chainBuild, _ string, m proto.Message) (filterFactory, error) {
	pc := m.(*extprocv3.NetworkExternalProcessor)
	if len(pc.GetConnectionAttributes()) > 0 {
		return nil, errors.New("connection_attributes (CEL attributes in ProcessingRequest.attributes) is not implemented by envoysim")
	}
	if err := checkFields(pc, "grpc_service", "failure_mode_allow", "processing_mode", "message_timeout",
		"stat_prefix", "metadata_options"); err != nil {
		return nil, err
	}
	// verifyFilterConfig in config.cc (C++-only checks, contract §7).
	if pc.GetGrpcService() == nil {
		return nil, errors.New("A grpc_service must be configured")
	}
	mode := pc.GetProcessingMode()
	if mode.GetProcessRead() == extprocv3.ProcessingMode_SKIP && mode.GetProcessWrite() == extprocv3.ProcessingMode_SKIP {
		return nil, errors.New("both read and write paths are skipped, at least one must be enabled.")
	}
	target, err := parseGrpcService(pc.GetGrpcService())
	if err != nil {
		return nil, err
	}
	cfg := &extProcConfig{
		sim:              cb.sim,
		failureModeAllow: pc.GetFailureModeAllow(),
		processRead:      mode.GetProcessRead() == extprocv3.ProcessingMode_STREAMED,
		processWrite:     mode.GetProcessWrite() == extprocv3.ProcessingMode_STREAMED,
		messageTimeout:   extProcDefaultMessageTimeout,
		target:           target,
		fwdUntyped:       pc.GetMetadataOptions().GetForwardingNamespaces().GetUntyped(),
		fwdTyped:         pc.GetMetadataOptions().GetForwardingNamespaces().GetTyped(),
		recvUntyped:      map[string]bool{},
		stats:            newExtProcStats(cb.sim.stats, pc.GetStatPrefix()),
	}
	if pc.GetMessageTimeout() != nil {
		cfg.messageTimeout = pc.GetMessageTimeout().AsDuration()
	}
	for _, ns := range pc.GetMetadataOptions().GetReceivingNamespaces().GetUntyped() {
		cfg.recvUntyped[ns] = true
	}
	cb.readsNamespaces = append(cb.readsNamespaces, cfg.fwdUntyped...)
	cb.readsNamespaces = append(cb.readsNamespaces, cfg.fwdTyped...)
	return func(c *conn) { c.fm.addFilter(&extProcFilter{cfg: cfg, conn: c}) }, nil
}
