package extproc

import (
	"context"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/policies"
)

const httpTestConfig = `
identity:
  issuers: [{ issuer: "https://idp.example.com", audiences: [sluice] }]
targets:
  - name: api
    kind: http
    port: 18080
    upstream: http://127.0.0.1:8080
    credentials: { bearer_env: API_TOKEN }
policies:
  - { name: p, targets: [api], principals: { groups: [agents] }, allow: [read], mask: [pii] }
masking:
  - { name: pii, json_paths: ["$.ssn"], detectors: [email] }
`

func httpExchange(t *testing.T, rec *sink, opts ...func(*HTTPOptions)) *exchange {
	t.Helper()
	cfg, err := policies.Load("t.yaml", []byte(httpTestConfig))
	if err != nil {
		t.Fatal(err)
	}
	o := HTTPOptions{Config: cfg, Audit: rec}
	for _, f := range opts {
		f(&o)
	}
	s, err := NewHTTPServer(o)
	if err != nil {
		t.Fatal(err)
	}
	return &exchange{srv: s, cfg: cfg, start: s.opts.Now()}
}

func decisionMD(decision string, masks ...string) *corev3.Metadata {
	ms := make([]any, len(masks))
	for i, m := range masks {
		ms[i] = m
	}
	st, _ := structpb.NewStruct(map[string]any{"target": "api", "subject": "agent-1", "decision": decision, "class": "read",
		"masks": ms, "groups": []any{"agents"}})
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{authz.MetadataNamespaceHTTP: st}}
}

func headers(eos bool, kv ...string) *extprocv3.HttpHeaders {
	h := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Headers = append(h.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return &extprocv3.HttpHeaders{Headers: h, EndOfStream: eos}
}

func reqHeaders(md *corev3.Metadata, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{MetadataContext: md, Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: headers(true, kv...)}}
}

func respHeaders(md *corev3.Metadata, eos bool, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{MetadataContext: md, Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: headers(eos, kv...)}}
}

func respBody(body string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: eos}}}
}

// TestHTTPMasksWholeJSONAcrossChunks: a JSON response is held until its
// end and sent masked in the last chunk's answer; earlier chunks are
// answered empty; Content-Length is removed; the request is recorded
// before its headers (its last message: no body) are answered.
func TestHTTPMasksWholeJSONAcrossChunks(t *testing.T) {
	rec := &sink{}
	x := httpExchange(t, rec)
	ctx := context.Background()
	md := decisionMD("allow", "pii")
	x.handle(ctx, reqHeaders(md, ":method", "GET", ":path", "/v1/people/1"))
	if k := rec.kinds(); len(k) != 1 || k[0] != audit.KindHTTPRequest {
		t.Fatalf("recorded %v once the request headers were answered, want the request", k)
	}
	r := x.handle(ctx, respHeaders(md, false, ":status", "200", "content-type", "application/json", "content-length", "60"))
	if got := r.GetResponseHeaders().GetResponse().GetHeaderMutation().GetRemoveHeaders(); len(got) != 1 || got[0] != "content-length" {
		t.Errorf("header mutation %v, want content-length removed", got)
	}
	if k := rec.kinds(); len(k) != 1 || k[0] != audit.KindHTTPRequest {
		t.Fatalf("recorded %v before the body, want the request alone", k)
	}
	doc := `{"name":"Ann","ssn":"536-22-8726","note":"mail ann@example.com"}`
	r1 := x.handle(ctx, respBody(doc[:20], false))
	r2 := x.handle(ctx, respBody(doc[20:], true))
	if b := r1.GetResponseBody().GetResponse().GetBodyMutation().GetBody(); len(b) != 0 {
		t.Errorf("first chunk passed %q before the document was complete", b)
	}
	out := string(r2.GetResponseBody().GetResponse().GetBodyMutation().GetBody())
	if strings.Contains(out, "536-22-8726") || strings.Contains(out, "ann@example.com") || !strings.Contains(out, `"Ann"`) {
		t.Errorf("masked body %s", out)
	}
}

// TestHTTPRefusals: what sluice cannot do safely, it refuses: no decision,
// an unmaskable body (gzip, protobuf, too large, not JSON), an audit store
// that is down. A local reply of an earlier filter passes untouched.
func TestHTTPRefusals(t *testing.T) {
	ctx := context.Background()
	md := decisionMD("allow", "pii")
	status := func(r *extprocv3.ProcessingResponse) int32 {
		return int32(r.GetImmediateResponse().GetStatus().GetCode())
	}

	if r := httpExchange(t, &sink{}).handle(ctx, reqHeaders(nil, ":method", "GET", ":path", "/")); status(r) != 403 {
		t.Errorf("no decision: %v", r)
	}
	if r := httpExchange(t, &sink{}).handle(ctx, respHeaders(decisionMD("deny"), true, ":status", "403")); r.GetResponseHeaders() == nil {
		t.Errorf("ext_authz's local reply: %v, want it passed", r)
	}
	for _, hdr := range [][]string{
		{"content-type", "application/json", "content-encoding", "gzip"},
		{"content-type", "application/vnd.kubernetes.protobuf"},
		{"content-type", "text/html"},
	} {
		x := httpExchange(t, &sink{})
		x.handle(ctx, reqHeaders(md, ":method", "GET", ":path", "/"))
		if r := x.handle(ctx, respHeaders(md, false, append([]string{":status", "200"}, hdr...)...)); status(r) != 502 {
			t.Errorf("%v: %v, want 502", hdr, r)
		}
	}
	x := httpExchange(t, &sink{}, func(o *HTTPOptions) { o.MaxMaskedBody = 10 })
	x.handle(ctx, reqHeaders(md, ":method", "GET", ":path", "/"))
	x.handle(ctx, respHeaders(md, false, ":status", "200", "content-type", "application/json"))
	if r := x.handle(ctx, respBody(`{"ssn":"536-22-8726"}`, true)); status(r) != 502 {
		t.Errorf("too large: %v", r)
	}
	x = httpExchange(t, &sink{})
	x.handle(ctx, reqHeaders(md, ":method", "GET", ":path", "/"))
	x.handle(ctx, respHeaders(md, false, ":status", "200", "content-type", "application/json"))
	if r := x.handle(ctx, respBody(`{"ssn": 536-22`, true)); status(r) != 502 {
		t.Errorf("invalid JSON: %v", r)
	}
	// The audit store down: the request is refused before it is
	// forwarded (http_audit_test.go has the detail).
	if r := httpExchange(t, &sink{fail: true}).handle(ctx, reqHeaders(md, ":method", "GET", ":path", "/")); status(r) != 503 {
		t.Errorf("audit down: %v, want 503", r)
	}
}

// TestHTTPRefusesBadJSONPaths: a masking path that does not compile stops
// the server from starting (and a reload from applying).
func TestHTTPRefusesBadJSONPaths(t *testing.T) {
	cfg, err := policies.Load("t.yaml", []byte(strings.Replace(httpTestConfig, `["$.ssn"]`, `["$..ssn"]`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewHTTPServer(HTTPOptions{Config: cfg, Audit: &sink{}}); err == nil || !strings.Contains(err.Error(), "masking rule pii") {
		t.Fatalf("err = %v, want the rule named", err)
	}
}
