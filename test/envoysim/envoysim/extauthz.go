package envoysim

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Network ext_authz (envoy.filters.network.ext_authz), contract §2, following
// source/extensions/filters/network/ext_authz/ext_authz.cc and
// source/extensions/filters/common/ext_authz/check_request_utils.cc
// (createTcpCheck).

var extAuthzConfigName = (&extauthzv3.ExtAuthz{}).ProtoReflect().Descriptor().FullName()

// extAuthzDefaultTimeout is the filter's default when grpc_service.timeout is
// unset (PROTOBUF_GET_MS_OR_DEFAULT(grpc_service, timeout, 200) in config.cc).
const extAuthzDefaultTimeout = 200 * time.Millisecond

// extAuthzNamespace is NetworkFilterNames::get().ExtAuthorization.
const extAuthzNamespace = "envoy.filters.network.ext_authz"

type extAuthzConfig struct {
	sim               *Sim
	target            *grpcTarget
	timeout           time.Duration
	failureModeAllow  bool
	includePeerCert   bool
	includeTLSSession bool
	labels            map[string]string
	mdNamespaces      []string
	typedMdNamespaces []string

	total, ok, denied, errored, failureModeAllowed, cxClosed, active *atomic.Int64
}

func buildExtAuthz(cb *chainBuild, _ string, m proto.Message) (filterFactory, error) {
	pc := m.(*extauthzv3.ExtAuthz)
	if err := checkFields(pc, "stat_prefix", "grpc_service", "failure_mode_allow", "include_peer_certificate",
		"transport_api_version", "bootstrap_metadata_labels_key", "include_tls_session",
		"metadata_context_namespaces", "typed_metadata_context_namespaces"); err != nil {
		return nil, err
	}
	if v := pc.GetTransportApiVersion(); v != corev3.ApiVersion_AUTO && v != corev3.ApiVersion_V3 {
		return nil, fmt.Errorf("transport_api_version %s is not supported", v)
	}
	target, err := parseGrpcService(pc.GetGrpcService())
	if err != nil {
		return nil, err
	}
	cfg := &extAuthzConfig{
		sim: cb.sim, target: target, timeout: extAuthzDefaultTimeout,
		failureModeAllow: pc.GetFailureModeAllow(), includePeerCert: pc.GetIncludePeerCertificate(),
		includeTLSSession: pc.GetIncludeTlsSession(),
		mdNamespaces:      pc.GetMetadataContextNamespaces(), typedMdNamespaces: pc.GetTypedMetadataContextNamespaces(),
	}
	if target.timeout > 0 {
		cfg.timeout = target.timeout
	}
	if key := pc.GetBootstrapMetadataLabelsKey(); key != "" {
		cfg.labels = map[string]string{}
		for k, v := range cb.sim.opts.node.GetMetadata().GetFields()[key].GetStructValue().GetFields() {
			if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
				cfg.labels[k] = s.StringValue
			}
		}
	}
	p := "ext_authz." + pc.GetStatPrefix() + "."
	st := cb.sim.stats
	cfg.total, cfg.ok, cfg.denied, cfg.errored = st.counter(p+"total"), st.counter(p+"ok"), st.counter(p+"denied"), st.counter(p+"error")
	cfg.failureModeAllowed, cfg.cxClosed = st.counter(p+"failure_mode_allowed"), st.counter(p+"cx_closed")
	cfg.active = st.gauge(p + "active")
	st.counter(p + "disabled") // filter_enabled_metadata is not implemented, so never incremented
	cb.readsNamespaces = append(cb.readsNamespaces, cfg.mdNamespaces...)
	cb.readsNamespaces = append(cb.readsNamespaces, cfg.typedMdNamespaces...)
	return func(c *conn) {
		f := &extAuthzFilter{cfg: cfg, conn: c}
		c.fm.addReadFilter(f)
	}, nil
}

type authzStatus int

const (
	authzNotStarted authzStatus = iota
	authzCalling
	authzComplete
)

type checkResult int

const (
	checkOK checkResult = iota
	checkDenied
	checkError
)

type extAuthzFilter struct {
	cfg    *extAuthzConfig
	conn   *conn
	cb     *activeReadFilter
	status authzStatus
	stop   bool // filter_return_ == Stop
	cancel context.CancelFunc
	start  time.Time
}

func (f *extAuthzFilter) initializeReadFilterCallbacks(cb *activeReadFilter) {
	f.cb = cb
	f.stop = true
	f.conn.addConnectionCallbacks(f.onEvent)
}

// onNewConnection waits for data: the Check is sent on the first onData.
func (f *extAuthzFilter) onNewConnection() filterStatus { return continueIteration }

// onData returns StopIteration without draining while the call is pending, so
// the bytes wait in the connection buffer.
func (f *extAuthzFilter) onData(*buffer, bool) filterStatus {
	if f.status == authzNotStarted {
		f.callCheck()
	}
	if f.stop {
		return stopIteration
	}
	return continueIteration
}

func (f *extAuthzFilter) callCheck() {
	req := f.checkRequest()
	f.start = time.Now()
	f.status = authzCalling
	f.cfg.active.Add(1)
	f.cfg.total.Add(1)
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), f.cfg.target.md.Copy()), f.cfg.timeout)
	f.cancel = cancel
	d := f.conn.d
	go func() {
		defer cancel()
		res, md := checkError, (*structpb.Struct)(nil)
		cc, err := f.cfg.sim.grpcConn(f.cfg.target)
		if err == nil {
			var resp *authv3.CheckResponse
			resp, err = authv3.NewAuthorizationClient(cc).Check(ctx, req)
			if err == nil {
				res, md = classifyCheck(resp), resp.GetDynamicMetadata()
			}
		}
		if err != nil {
			f.cfg.sim.logf("ext_authz: Check failed: %v", err)
		}
		d.post(func() { f.onComplete(res, md) })
	}()
}

// classifyCheck is GrpcClientImpl::onSuccess: code 0 is OK, a non-zero code
// with error_response is an error, any other non-zero code is a denial.
func classifyCheck(resp *authv3.CheckResponse) checkResult {
	switch {
	case resp.GetStatus().GetCode() == 0:
		return checkOK
	case resp.GetErrorResponse() != nil:
		return checkError
	}
	return checkDenied
}

func (f *extAuthzFilter) onComplete(res checkResult, md *structpb.Struct) {
	if f.status != authzCalling {
		return // cancelled by a close
	}
	f.status = authzComplete
	f.cfg.active.Add(-1)
	fields := map[string]*structpb.Value{}
	for k, v := range md.GetFields() {
		fields[k] = v
	}
	switch res {
	case checkOK:
		f.cfg.ok.Add(1)
		fields["ext_authz_duration"] = structpb.NewNumberValue(float64(time.Since(f.start).Milliseconds()))
	case checkError:
		f.cfg.errored.Add(1)
	case checkDenied:
		f.cfg.denied.Add(1)
	}
	// On OK the struct always has ext_authz_duration, so it is always set.
	if len(fields) > 0 {
		f.conn.setDynamicMetadata(extAuthzNamespace, &structpb.Struct{Fields: fields})
	}
	if res == checkDenied || res == checkError && !f.cfg.failureModeAllow {
		f.cfg.cxClosed.Add(1)
		f.conn.close(closeNoFlush, "ext_authz_close")
		return
	}
	f.stop = false
	if res == checkError {
		f.cfg.failureModeAllowed.Add(1)
	}
	f.cb.continueReading()
}

func (f *extAuthzFilter) onEvent(ev connEvent) {
	if (ev == evLocalClose || ev == evRemoteClose) && f.status == authzCalling {
		f.cancel()
		f.cfg.active.Add(-1)
		f.status = authzComplete
	}
}

// checkRequest is createTcpCheck: no request attributes, no context extensions.
func (f *extAuthzFilter) checkRequest() *authv3.CheckRequest {
	c := f.conn
	src := &authv3.AttributeContext_Peer{Address: socketAddress(c.raw.RemoteAddr())}
	dst := &authv3.AttributeContext_Peer{Address: socketAddress(c.raw.LocalAddr())}
	if st := c.ssl(); st != nil {
		if len(st.PeerCertificates) > 0 {
			src.Principal = principal(st.PeerCertificates[0])
			if f.cfg.includePeerCert {
				src.Certificate = url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: st.PeerCertificates[0].Raw})))
			}
		}
		if c.localCert != nil {
			dst.Principal = principal(c.localCert)
		}
	}
	dst.Service = sanitizeUTF8(c.requestedServerName)
	if len(f.cfg.labels) > 0 {
		dst.Labels = f.cfg.labels
	}
	attrs := &authv3.AttributeContext{Source: src, Destination: dst, MetadataContext: f.metadataContext()}
	if f.cfg.includeTLSSession {
		attrs.TlsSession = &authv3.AttributeContext_TLSSession{}
		if st := c.ssl(); st != nil && st.ServerName != "" {
			attrs.TlsSession.Sni = st.ServerName
		} else {
			attrs.TlsSession.Sni = c.requestedServerName
		}
	}
	return &authv3.CheckRequest{Attributes: attrs}
}

// metadataContext copies the listed namespaces of the connection's dynamic
// metadata (fillMetadataContext in the network filter; resolves contract §9's
// [UNVERIFIED] on metadata_context_namespaces for TCP).
func (f *extAuthzFilter) metadataContext() *corev3.Metadata {
	out := &corev3.Metadata{}
	for _, ns := range f.cfg.mdNamespaces {
		if v, ok := f.conn.dynamicMetadata.GetFilterMetadata()[ns]; ok {
			if out.FilterMetadata == nil {
				out.FilterMetadata = map[string]*structpb.Struct{}
			}
			out.FilterMetadata[ns] = proto.Clone(v).(*structpb.Struct)
		}
	}
	for _, ns := range f.cfg.typedMdNamespaces {
		if v, ok := f.conn.dynamicMetadata.GetTypedFilterMetadata()[ns]; ok {
			if out.TypedFilterMetadata == nil {
				out.TypedFilterMetadata = map[string]*anypb.Any{}
			}
			out.TypedFilterMetadata[ns] = proto.Clone(v).(*anypb.Any)
		}
	}
	return out
}

// principal is the URI SAN, else the DNS SAN, else the Subject (RFC 2253).
func principal(cert *x509.Certificate) string {
	switch {
	case len(cert.URIs) > 0:
		return sanitizeUTF8(cert.URIs[0].String())
	case len(cert.DNSNames) > 0:
		return sanitizeUTF8(cert.DNSNames[0])
	}
	return sanitizeUTF8(cert.Subject.String())
}

func sanitizeUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "!")
}

func socketAddress(a net.Addr) *corev3.Address {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return nil
	}
	var p uint32
	_, _ = fmt.Sscan(port, &p)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p},
	}}}
}
