package extproc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

// The default chain's modes (xds/translate_http.go): request bodies
// buffered; response bodies streamed where a policy masks, else not sent.
var (
	modesMasked   = [2]httpextprocv3.ProcessingMode_BodySendMode{httpextprocv3.ProcessingMode_BUFFERED, httpextprocv3.ProcessingMode_STREAMED}
	modesUnmasked = [2]httpextprocv3.ProcessingMode_BodySendMode{httpextprocv3.ProcessingMode_BUFFERED, httpextprocv3.ProcessingMode_NONE}
)

// chainHeaders is a request's first message as Envoy sends it on the
// default chain: its headers and the chain's protocol_config.
func chainHeaders(md *corev3.Metadata, eos bool, modes [2]httpextprocv3.ProcessingMode_BodySendMode, kv ...string) *extprocv3.ProcessingRequest {
	r := reqHeaders(md, kv...)
	r.GetRequestHeaders().EndOfStream = eos
	r.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: modes[0], ResponseBodyMode: modes[1]}
	return r
}

func reqBody(body string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: eos}}}
}

// heldSink holds each Append until released, so a test can see what the
// processor answers (nothing, it must be) while an event is not durable.
type heldSink struct {
	sink
	appending chan audit.Event
	release   chan struct{}
}

func (s *heldSink) Append(ctx context.Context, e audit.Event) error {
	s.appending <- e
	<-s.release
	return s.sink.Append(ctx, e)
}

// httpStream serves an HTTPServer over gRPC and opens one Process stream,
// as Envoy does per HTTP request.
func httpStream(t *testing.T, rec audit.Sink) extprocv3.ExternalProcessor_ProcessClient {
	t.Helper()
	cfg, err := policies.Load("t.yaml", []byte(httpTestConfig))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewHTTPServer(HTTPOptions{Config: cfg, Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	cc, ctx := dialServer(t, srv.Register)
	st, err := extprocv3.NewExternalProcessorClient(cc).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Envoy holds a buffered request, headers included, until its body is
// answered; sluice answers only once the request's event, with the body's
// digest, is durable. While the append is pending, no answer comes.
func TestHTTPRecordsRequestBeforeItIsForwarded(t *testing.T) {
	rec := &heldSink{appending: make(chan audit.Event, 1), release: make(chan struct{})}
	st := httpStream(t, rec)
	md := decisionMD("allow")
	if err := st.Send(chainHeaders(md, false, modesUnmasked, ":method", "POST", ":path", "/v1/people")); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil || r.GetRequestHeaders() == nil {
		t.Fatalf("request headers answered %v, %v; want a continue", r, err)
	}
	select {
	case e := <-rec.appending:
		t.Fatalf("recorded %+v before the body was seen", e)
	default:
	}

	body := `{"name":"Ann","role":"admin"}`
	if err := st.Send(reqBody(body, true)); err != nil {
		t.Fatal(err)
	}
	var ev audit.Event
	select {
	case ev = <-rec.appending:
	case <-time.After(5 * time.Second):
		t.Fatal("the request body was not recorded")
	}
	answered := make(chan *extprocv3.ProcessingResponse, 1)
	go func() {
		r, _ := st.Recv()
		answered <- r
	}()
	select {
	case r := <-answered:
		t.Fatalf("the request was answered %v while its event was not durable", r)
	case <-time.After(200 * time.Millisecond):
	}
	close(rec.release)
	select {
	case r = <-answered:
	case <-time.After(5 * time.Second):
		t.Fatal("no answer to the request body")
	}
	if r.GetRequestBody() == nil {
		t.Fatalf("request body answered %v, want a continue", r)
	}
	sum := sha256.Sum256([]byte(body))
	if ev.Kind != audit.KindHTTPRequest || ev.Request != "POST /v1/people" || ev.Digest != "sha256:"+hex.EncodeToString(sum[:]) ||
		ev.Bytes != int64(len(body)) || ev.HTTPStatus != 0 || ev.RequestID == "" || ev.Decision != "allow" {
		t.Errorf("request event %+v", ev)
	}
}

// Fail closed: when the request's event cannot be appended, the request
// phase is answered with a 503 ImmediateResponse (Envoy replies locally and
// forwards nothing), with a body that says why, and nothing is recorded
// of a response that never came.
func TestHTTPRefusesUnauditedRequest(t *testing.T) {
	ctx := context.Background()
	md := decisionMD("allow")
	refused := func(what string, r *extprocv3.ProcessingResponse) {
		t.Helper()
		ir := r.GetImmediateResponse()
		if ir.GetStatus().GetCode() != 503 || !strings.Contains(string(ir.GetBody()), "audit store is unavailable") {
			t.Errorf("%s: %v, want a 503 that names the audit store", what, r)
		}
	}

	// No body: the headers are the request's last message.
	down := &sink{fail: true}
	x := httpExchange(t, down)
	refused("bodiless request", x.handle(ctx, chainHeaders(md, true, modesUnmasked, ":method", "DELETE", ":path", "/v1/people/1")))
	x.finish()

	// A body: the headers wait for it; the body is refused.
	x = httpExchange(t, down)
	if r := x.handle(ctx, chainHeaders(md, false, modesUnmasked, ":method", "POST", ":path", "/v1/people")); r.GetRequestHeaders() == nil {
		t.Fatalf("headers of a buffered request: %v, want a continue (Envoy holds them for the body)", r)
	}
	refused("request body", x.handle(ctx, reqBody(`{"name":"Ann"}`, true)))
	x.finish()

	// Over the stream: the refusal ends it.
	st := httpStream(t, down)
	if err := st.Send(chainHeaders(md, false, modesMasked, ":method", "POST", ":path", "/v1/people")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(reqBody(`{}`, true)); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	refused("stream", r)
	time.Sleep(50 * time.Millisecond)
	down.mu.Lock()
	defer down.mu.Unlock()
	if len(down.events) != 0 {
		t.Errorf("recorded %+v", down.events)
	}
}

// waitEvents waits for n events (http.response is appended after the
// stream ends, asynchronously).
func waitEvents(t *testing.T, rec *sink, n int) []audit.Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.kinds()) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.events) != n {
		t.Fatalf("events %+v, want %d", rec.events, n)
	}
	return append([]audit.Event(nil), rec.events...)
}

// Where no policy masks, the response body flows past sluice (response
// body mode NONE): its record says the status, the size Content-Length
// declared (or none: unknown), no digest, and no error, since sluice has
// no way to know whether the body completed.
func TestHTTPResponseBodyNotSeen(t *testing.T) {
	ctx := context.Background()
	md := decisionMD("allow")
	for _, tc := range []struct {
		name   string
		method string
		hdr    []string
		bytes  int64
	}{
		{"content-length", "GET", []string{"content-length", "42"}, 42},
		{"chunked", "GET", nil, 0},
		{"head", "HEAD", []string{"content-length", "42"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &sink{}
			x := httpExchange(t, rec)
			if r := x.handle(ctx, chainHeaders(md, true, modesUnmasked, ":method", tc.method, ":path", "/v1/people")); r.GetRequestHeaders() == nil {
				t.Fatalf("request headers: %v", r)
			}
			r := x.handle(ctx, respHeaders(md, false, append([]string{":status", "200", "content-type", "application/json"}, tc.hdr...)...))
			if r.GetResponseHeaders() == nil || r.GetResponseHeaders().GetResponse().GetHeaderMutation() != nil {
				t.Fatalf("response headers: %v, want an unchanged continue", r)
			}
			x.finish()
			evs := waitEvents(t, rec, 2)
			resp := evs[1]
			if resp.Kind != audit.KindHTTPResponse || resp.HTTPStatus != 200 || resp.Bytes != tc.bytes || resp.Digest != "" ||
				resp.Error != "" || resp.RequestID != evs[0].RequestID {
				t.Errorf("response event %+v", resp)
			}
		})
	}

	// Where the body is seen, an exchange cut short still says so.
	rec := &sink{}
	x := httpExchange(t, rec)
	x.handle(ctx, chainHeaders(md, true, modesMasked, ":method", "GET", ":path", "/v1/people"))
	x.handle(ctx, respHeaders(md, false, ":status", "200", "content-length", "42"))
	x.handle(ctx, respBody(`{"a":`, false))
	x.finish()
	if resp := waitEvents(t, rec, 2)[1]; resp.Error != "the response did not complete" || resp.Bytes != 5 || resp.Digest == "" {
		t.Errorf("cut-short response event %+v", resp)
	}
}

// A decision that masks, on a chain that does not send response bodies
// (Envoy not yet running the configuration that masks them), is refused
// before the request is forwarded or recorded: the response would pass
// unmasked.
func TestHTTPRefusesMaskWithoutResponseBody(t *testing.T) {
	rec := &sink{}
	x := httpExchange(t, rec)
	r := x.handle(context.Background(), chainHeaders(decisionMD("allow", "pii"), true, modesUnmasked, ":method", "GET", ":path", "/v1/people/1"))
	if immediateStatus(r) != 503 {
		t.Errorf("masked request on an unmasking chain: %v, want 503", r)
	}
	if len(rec.kinds()) != 0 {
		t.Errorf("recorded %v", rec.kinds())
	}
}
