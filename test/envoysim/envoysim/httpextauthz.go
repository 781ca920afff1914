package envoysim

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// HTTP ext_authz (envoy.filters.http.ext_authz) with a gRPC service, contract
// §3, following source/extensions/filters/http/ext_authz/ext_authz.cc and
// source/extensions/filters/common/ext_authz/ext_authz_grpc_impl.cc. The
// check runs in decodeHeaders, which returns StopAllIteration until the
// answer; request bodies are not sent (with_request_body is NACKed).

var httpExtAuthzConfigName = (&httpauthzv3.ExtAuthz{}).ProtoReflect().Descriptor().FullName()

// httpExtAuthzNamespace is where the filter writes dynamic metadata.
const httpExtAuthzNamespace = "envoy.filters.http.ext_authz"

type httpExtAuthzConfig struct {
	sim               *Sim
	target            *grpcTarget
	timeout           time.Duration
	failureModeAllow  bool
	failureHeaderAdd  bool
	statusOnError     int
	includePeerCert   bool
	includeTLSSession bool
	mdNamespaces      []string
	typedMdNamespaces []string
	ingestMetadata    bool

	ok, denied, errored, failureModeAllowed *atomic.Int64
}

func buildHTTPExtAuthz(hc *hcmConfig, cb *chainBuild, m proto.Message) (func(*httpStream, string) any, error) {
	pc := m.(*httpauthzv3.ExtAuthz)
	if err := checkFields(pc, "grpc_service", "transport_api_version", "failure_mode_allow",
		"failure_mode_allow_header_add", "status_on_error", "metadata_context_namespaces",
		"typed_metadata_context_namespaces", "include_peer_certificate", "include_tls_session",
		"stat_prefix", "enable_dynamic_metadata_ingestion"); err != nil {
		return nil, err
	}
	if v := pc.GetTransportApiVersion(); v != corev3.ApiVersion_AUTO && v != corev3.ApiVersion_V3 {
		return nil, fmt.Errorf("transport_api_version %s is not supported", v)
	}
	if pc.GetGrpcService() == nil {
		return nil, fmt.Errorf("ext_authz: only a grpc_service is implemented by envoysim")
	}
	target, err := parseGrpcService(pc.GetGrpcService())
	if err != nil {
		return nil, err
	}
	cfg := &httpExtAuthzConfig{
		sim: cb.sim, target: target, timeout: extAuthzDefaultTimeout,
		failureModeAllow: pc.GetFailureModeAllow(), failureHeaderAdd: pc.GetFailureModeAllowHeaderAdd(),
		statusOnError:   http.StatusForbidden,
		includePeerCert: pc.GetIncludePeerCertificate(), includeTLSSession: pc.GetIncludeTlsSession(),
		mdNamespaces: pc.GetMetadataContextNamespaces(), typedMdNamespaces: pc.GetTypedMetadataContextNamespaces(),
		ingestMetadata: pc.GetEnableDynamicMetadataIngestion() == nil || pc.GetEnableDynamicMetadataIngestion().GetValue(),
	}
	if target.timeout > 0 {
		cfg.timeout = target.timeout
	}
	if c := pc.GetStatusOnError().GetCode(); c != 0 {
		cfg.statusOnError = int(c)
	}
	p := hc.statPrefix + "ext_authz."
	if sp := pc.GetStatPrefix(); sp != "" {
		p += sp + "."
	}
	st := cb.sim.stats
	cfg.ok, cfg.denied, cfg.errored = st.counter(p+"ok"), st.counter(p+"denied"), st.counter(p+"error")
	cfg.failureModeAllowed = st.counter(p + "failure_mode_allowed")
	st.counter(p + "disabled") // filter_enabled is not implemented, so never incremented
	return func(s *httpStream, name string) any { return &httpExtAuthzFilter{cfg: cfg, s: s, name: name} }, nil
}

type httpExtAuthzFilter struct {
	cfg      *httpExtAuthzConfig
	s        *httpStream
	name     string
	dec      *filterHandle
	status   authzStatus
	cancel   context.CancelFunc
	start    time.Time
	cluster  string                      // the route's cluster when the call started
	respMuts []*corev3.HeaderValueOption // response_headers_to_add, applied in encodeHeaders
}

func (f *httpExtAuthzFilter) init(dec, _ *filterHandle) { f.dec = dec }

func (f *httpExtAuthzFilter) decodeHeaders(h *headerMap, _ bool) headersStatus {
	var ctxExt map[string]string
	if r := f.s.routeEntry(); r != nil {
		f.cluster = r.cluster
		if pr, ok := r.perFilter[f.name].(*httpauthzv3.ExtAuthzPerRoute); ok {
			if pr.GetDisabled() {
				return headersContinue
			}
			ctxExt = pr.GetCheckSettings().GetContextExtensions()
		}
	}
	req := f.checkRequest(h, ctxExt)
	f.start = time.Now()
	f.status = authzCalling
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), f.cfg.target.md.Copy()), f.cfg.timeout)
	f.cancel = cancel
	sim, d := f.cfg.sim, f.s.d
	go func() {
		defer cancel()
		var resp *authv3.CheckResponse
		cc, err := sim.grpcConn(f.cfg.target)
		if err == nil {
			resp, err = authv3.NewAuthorizationClient(cc).Check(ctx, req)
		}
		d.post(func() { f.onComplete(resp, err) })
	}()
	return headersStopAll
}

func (f *httpExtAuthzFilter) decodeData(*buffer, bool) dataStatus { return dataContinue }

// encodeHeaders applies the saved response_headers_to_add (OK responses).
func (f *httpExtAuthzFilter) encodeHeaders(h *headerMap, _ bool) headersStatus {
	applyResponseHeaderOptions(h, f.respMuts)
	return headersContinue
}

func (f *httpExtAuthzFilter) encodeData(*buffer, bool) dataStatus { return dataContinue }

func (f *httpExtAuthzFilter) onDestroy() {
	if f.status == authzCalling {
		f.status = authzComplete
		f.cancel()
	}
}

func (f *httpExtAuthzFilter) clusterStat(name string) {
	if f.cluster != "" {
		f.cfg.sim.stats.counter("cluster." + f.cluster + ".ext_authz." + name).Add(1)
	}
}

// onComplete is Filter::onComplete.
func (f *httpExtAuthzFilter) onComplete(resp *authv3.CheckResponse, err error) {
	if f.status != authzCalling || f.s.done {
		return
	}
	f.status = authzComplete
	res := checkError
	if err != nil {
		f.cfg.sim.logf("http stream %d: ext_authz: Check failed: %v", f.s.id, err)
	} else {
		res = classifyCheck(resp)
	}
	md := resp.GetDynamicMetadata()
	if ok := resp.GetOkResponse(); ok != nil && ok.GetDynamicMetadata() != nil {
		md = ok.GetDynamicMetadata() // the deprecated field overrides
	}
	if f.cfg.ingestMetadata && len(md.GetFields()) > 0 {
		fields := map[string]*structpb.Value{}
		for k, v := range md.GetFields() {
			fields[k] = v
		}
		if res == checkOK {
			fields["ext_authz_duration"] = structpb.NewNumberValue(float64(time.Since(f.start).Milliseconds()))
		}
		f.s.setDynamicMetadata(httpExtAuthzNamespace, &structpb.Struct{Fields: fields})
	}
	switch res {
	case checkOK:
		f.cfg.ok.Add(1)
		f.clusterStat("ok")
		ok := resp.GetOkResponse()
		f.cfg.sim.violation(ViolationVersionDependentMutations, int64(applyOkRequestMutations(f.dec.headers(), ok)))
		f.cfg.sim.violation(ViolationIgnoredHeaderValues, int64(countRawOnly(ok.GetHeaders())+countRawOnly(ok.GetResponseHeadersToAdd())))
		f.respMuts = ok.GetResponseHeadersToAdd()
		f.dec.continueIteration()
	case checkDenied:
		f.cfg.denied.Add(1)
		f.clusterStat("denied")
		dr := resp.GetDeniedResponse()
		code := int(dr.GetStatus().GetCode())
		if code == 0 {
			code = http.StatusForbidden
		}
		f.cfg.sim.violation(ViolationIgnoredHeaderValues, int64(countRawOnly(dr.GetHeaders())))
		f.s.sendLocalReply(code, dr.GetBody(), localReplyHeaders(dr.GetHeaders()), "ext_authz_denied")
	case checkError:
		f.cfg.errored.Add(1)
		f.clusterStat("error")
		if f.cfg.failureModeAllow {
			f.cfg.failureModeAllowed.Add(1)
			f.clusterStat("failure_mode_allowed")
			if f.cfg.failureHeaderAdd {
				f.dec.headers().set("x-envoy-auth-failure-mode-allowed", "true")
			}
			f.dec.continueIteration()
			return
		}
		code, body, hdrs := f.cfg.statusOnError, "", localReplyHeaders(nil)
		if er := resp.GetErrorResponse(); er != nil {
			if c := er.GetStatus().GetCode(); c != 0 {
				code = int(c)
			}
			body, hdrs = er.GetBody(), localReplyHeaders(er.GetHeaders())
		}
		f.s.sendLocalReply(code, body, hdrs, "ext_authz_error")
	}
}
