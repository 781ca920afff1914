package envoysim

import (
	"encoding/pem"
	"net/url"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// checkRequest is CheckRequestUtils::createHttpCheck (contract §3).
func (f *httpExtAuthzFilter) checkRequest(h *headerMap, ctxExt map[string]string) *authv3.CheckRequest {
	dc := f.s.dc
	src := &authv3.AttributeContext_Peer{Address: socketAddress(dc.remote), Service: h.value("x-envoy-downstream-service-cluster")}
	dst := &authv3.AttributeContext_Peer{Address: socketAddress(dc.local)}
	if st := dc.tls; st != nil {
		if len(st.PeerCertificates) > 0 {
			src.Principal = principal(st.PeerCertificates[0])
			if f.cfg.includePeerCert {
				src.Certificate = url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: st.PeerCertificates[0].Raw})))
			}
		}
		if dc.localCert != nil {
			dst.Principal = principal(dc.localCert)
		}
	}
	attrs := &authv3.AttributeContext{
		Source: src, Destination: dst,
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(f.s.start),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: strconv.FormatUint(f.s.id, 10), Method: h.value(":method"), Headers: h.joined(),
				Path: h.value(":path"), Host: h.value(":authority"), Scheme: h.value(":scheme"),
				Protocol: f.s.protocol(),
			},
		},
		ContextExtensions: ctxExt,
		MetadataContext:   f.metadataContext(),
	}
	if f.cfg.includeTLSSession && dc.tls != nil {
		attrs.TlsSession = &authv3.AttributeContext_TLSSession{Sni: dc.sni}
		if dc.sni == "" {
			attrs.TlsSession.Sni = dc.tls.ServerName
		}
	}
	return &authv3.CheckRequest{Attributes: attrs}
}

// metadataContext copies the listed namespaces of the stream's dynamic
// metadata. The sim has no connection-level metadata on HTTP listeners (HCM
// is the chain's only network filter), so the request value is the value.
func (f *httpExtAuthzFilter) metadataContext() *corev3.Metadata {
	out := &corev3.Metadata{}
	md := f.s.dynamicMetadata
	for _, ns := range f.cfg.mdNamespaces {
		if v, ok := md.GetFilterMetadata()[ns]; ok {
			if out.FilterMetadata == nil {
				out.FilterMetadata = map[string]*structpb.Struct{}
			}
			out.FilterMetadata[ns] = proto.Clone(v).(*structpb.Struct)
		}
	}
	for _, ns := range f.cfg.typedMdNamespaces {
		if v, ok := md.GetTypedFilterMetadata()[ns]; ok {
			if out.TypedFilterMetadata == nil {
				out.TypedFilterMetadata = map[string]*anypb.Any{}
			}
			out.TypedFilterMetadata[ns] = proto.Clone(v).(*anypb.Any)
		}
	}
	return out
}

// applyOkRequestMutations applies OkHttpResponse.headers, headers_to_remove
// and the query parameter changes to the request, and returns how many
// mutations Envoy versions apply differently (contract §3). The sim applies
// the ≤1.36 semantics, which the 2026-02 revert (PR #43442) restored for the
// unset case: explicit append → append (comma-joined) or overwrite; anything
// else → overwrite; removals after. Counted as version-dependent:
//   - neither append nor append_action (indistinguishable, in proto3, from
//     APPEND_IF_EXISTS_OR_ADD): 1.37.0 (PR #42878) added a second entry, as
//     the stored source/extensions/filters/common/ext_authz/ext_authz_grpc_impl.cc
//     of that change maps it to HeaderMutationAction::Add;
//   - ADD_IF_ABSENT on a present header, OVERWRITE_IF_EXISTS on an absent one:
//     ≤1.36 overwrote or added, newer builds honour the action;
//   - append=true on an absent header: ≤1.36 dropped it (headers_to_append
//     only appends to an existing header), newer builds add it;
//   - a header both set and listed in headers_to_remove: ≤1.36 removes it
//     after the set, newer builds apply mutations in order.
//
// The portable recipe (OVERWRITE_IF_EXISTS_OR_ADD, no removal of a set
// header) counts nothing.
func applyOkRequestMutations(h *headerMap, ok *authv3.OkHttpResponse) int {
	versionDependent := 0
	set := map[string]bool{}
	for _, o := range ok.GetHeaders() {
		key, value := strings.ToLower(o.GetHeader().GetKey()), o.GetHeader().GetValue()
		present := h.has(key)
		set[key] = true
		switch {
		case o.GetAppend() != nil && o.GetAppend().GetValue():
			if !present {
				versionDependent++
			}
			h.appendValue(key, value)
		case o.GetAppend() != nil:
			h.set(key, value)
		default:
			switch o.GetAppendAction() {
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			case corev3.HeaderValueOption_ADD_IF_ABSENT, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
				if present == (o.GetAppendAction() == corev3.HeaderValueOption_ADD_IF_ABSENT) {
					versionDependent++
				}
			default: // APPEND_IF_EXISTS_OR_ADD, i.e. unset
				versionDependent++
			}
			h.set(key, value)
		}
	}
	for _, k := range ok.GetHeadersToRemove() {
		k = strings.ToLower(k)
		if strings.HasPrefix(k, ":") || k == "host" {
			continue // isRemovableHeader: never pseudo-headers or host
		}
		if set[k] {
			versionDependent++
		}
		h.remove(k)
	}
	applyQueryMutations(h, ok.GetQueryParametersToSet(), ok.GetQueryParametersToRemove())
	return versionDependent
}

// applyQueryMutations re-parses :path, as Utility::parseQueryString and
// replaceQueryString do (parameters come out sorted by key).
func applyQueryMutations(h *headerMap, set []*corev3.QueryParameter, remove []string) {
	if len(set) == 0 && len(remove) == 0 {
		return
	}
	path, query, _ := strings.Cut(h.value(":path"), "?")
	params := map[string]string{}
	for _, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		params[k] = v
	}
	for _, p := range set {
		params[p.GetKey()] = p.GetValue()
	}
	for _, k := range remove {
		delete(params, k)
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+params[k])
	}
	if len(parts) > 0 {
		path += "?" + strings.Join(parts, "&")
	}
	h.set(":path", path)
}

// applyResponseHeaderOptions applies OkHttpResponse.response_headers_to_add,
// whose semantics no version changed: an explicit append adds or overwrites;
// otherwise append_action is honoured, APPEND_IF_EXISTS_OR_ADD (and unset)
// adding an entry.
func applyResponseHeaderOptions(h *headerMap, opts []*corev3.HeaderValueOption) {
	for _, o := range opts {
		key, value := strings.ToLower(o.GetHeader().GetKey()), o.GetHeader().GetValue()
		switch {
		case o.GetAppend() != nil && o.GetAppend().GetValue():
			h.add(key, value)
		case o.GetAppend() != nil:
			h.set(key, value)
		default:
			switch o.GetAppendAction() {
			case corev3.HeaderValueOption_ADD_IF_ABSENT:
				if !h.has(key) {
					h.add(key, value)
				}
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
				if h.has(key) {
					h.set(key, value)
				}
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
				h.set(key, value)
			default:
				h.add(key, value)
			}
		}
	}
}

// localReplyHeaders returns the local reply mutation for Denied and error
// responses: every named header is removed, then each is added, so that a
// name may repeat (Set-Cookie).
func localReplyHeaders(opts []*corev3.HeaderValueOption) func(*headerMap) {
	return func(h *headerMap) {
		for _, o := range opts {
			h.remove(o.GetHeader().GetKey())
		}
		for _, o := range opts {
			h.add(o.GetHeader().GetKey(), o.GetHeader().GetValue())
		}
	}
}

// countRawOnly counts header values given only in raw_value, which ext_authz
// ignores (it reads HeaderValue.value): the header is set empty.
func countRawOnly(opts []*corev3.HeaderValueOption) int {
	n := 0
	for _, o := range opts {
		if o.GetHeader().GetValue() == "" && len(o.GetHeader().GetRawValue()) > 0 {
			n++
		}
	}
	return n
}
