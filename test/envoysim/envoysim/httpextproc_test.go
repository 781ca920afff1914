package envoysim

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// chunkedUpstream writes each part, flushed, then returns.
func chunkedUpstream(parts ...string) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, _ *http.Request, _ string) {
		w.Header().Set("Content-Type", "application/json")
		for _, p := range parts {
			_, _ = io.WriteString(w, p)
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// The full sluice chain [ext_authz, ext_proc, router] in sluice's modes:
// request headers, the whole request body in one message, response headers,
// then the response body chunk by chunk. Header values travel in raw_value,
// pseudo-headers included; the first message carries protocol_config; every
// message carries ext_authz's metadata (forwarding_namespaces).
func TestHTTPExtProcSluiceModesMessageOrder(t *testing.T) {
	_, authzAddr := startAuthorizer(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{},
			DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"target": structpb.NewStringValue("crm-api")}}}, nil
	})
	proc, procAddr := startHTTPProcessor(t, httpRespond(passThrough))
	up := startHTTPUpstream(t, nil, chunkedUpstream(`{"items":[`, `1]}`))
	hs := setupHTTP(t, up, authzAddr, procAddr, nil,
		authzHTTPFilter(t, authzHTTPConfig("authz")), procHTTPFilter(t, procHTTPConfig("processor")), routerHTTPFilter(t))
	req := newReq(t, http.MethodPost, hs.url("/v1/contacts?q=1"), `{"a":1}`)
	req.Header.Set("X-Api-Key", "k")
	resp, body := do(t, req)
	if resp.StatusCode != http.StatusOK || body != `{"items":[1]}` {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	if resp.ContentLength != -1 {
		t.Errorf("content-length %d: STREAMED response bodies lose it", resp.ContentLength)
	}
	if got := up.next(t); got.body != `{"a":1}` || got.header.Get("X-Api-Key") != "k" {
		t.Errorf("upstream saw %+v", got)
	}
	<-proc.ended
	var msgs []*extprocv3.ProcessingRequest
	for len(proc.reqs) > 0 {
		msgs = append(msgs, <-proc.reqs)
	}
	var kinds []string
	var respBody string
	for _, m := range msgs {
		kinds = append(kinds, kind(m))
		respBody += string(m.GetResponseBody().GetBody())
		if ns := m.GetMetadataContext().GetFilterMetadata()[httpExtAuthzNamespace]; ns.GetFields()["target"].GetStringValue() != "crm-api" {
			t.Errorf("%s: metadata_context %v", kind(m), m.GetMetadataContext())
		}
	}
	if len(kinds) < 4 || !slices.Equal(kinds[:3], []string{"request_headers", `request_body({"a":1}) eos`, "response_headers"}) ||
		!strings.HasSuffix(kinds[len(kinds)-1], " eos") || respBody != `{"items":[1]}` {
		t.Fatalf("processor saw %q", kinds)
	}
	for _, k := range kinds[3:] {
		if !strings.HasPrefix(k, "response_body(") {
			t.Errorf("processor saw %q", kinds)
		}
	}
	rh := msgs[0].GetRequestHeaders()
	pc := msgs[0].GetProtocolConfig()
	if pc.GetRequestBodyMode() != httpextprocv3.ProcessingMode_BUFFERED || pc.GetResponseBodyMode() != httpextprocv3.ProcessingMode_STREAMED || msgs[1].GetProtocolConfig() != nil {
		t.Errorf("protocol_config %v then %v", pc, msgs[1].GetProtocolConfig())
	}
	if rh.GetEndOfStream() {
		t.Error("request_headers end_of_stream with a body")
	}
	for k, want := range map[string]string{":method": "POST", ":path": "/v1/contacts?q=1", ":scheme": "http", "x-api-key": "k", "content-length": "7"} {
		if v, ok := headerOf(rh.GetHeaders(), k); !ok || v != want {
			t.Errorf("request_headers %s = %q, want %q", k, v, want)
		}
	}
	for _, h := range rh.GetHeaders().GetHeaders() {
		if h.GetValue() != "" || len(h.GetRawValue()) == 0 && h.GetKey() != "x-empty" {
			t.Errorf("header %s: value %q raw_value %q (Envoy sends raw_value only)", h.GetKey(), h.GetValue(), h.GetRawValue())
		}
	}
	if v, _ := headerOf(msgs[2].GetResponseHeaders().GetHeaders(), ":status"); v != "200" {
		t.Errorf("response_headers :status %q", v)
	}
	st := hs.sim.Stats()
	if st.Get("http.api.ext_proc.streams_started") != 1 || st.Get("http.api.ext_proc.stream_msgs_received") != int64(len(msgs)) {
		t.Errorf("ext_proc stats %v", st.Snapshot())
	}
	hs.sim.RequireNoViolations(t)
}

// STREAMED: each chunk is sent as it arrives without waiting for earlier
// answers, and forwarded only once its answer came back, answers matched
// FIFO. The processor answers nothing until it holds two chunks, so a sim
// that waited would deadlock.
func TestHTTPExtProcStreamedChunksWaitForTheirAnswers(t *testing.T) {
	haveTwo, answer, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	script := func(ctx context.Context, recv <-chan *extprocv3.ProcessingRequest, send func(*extprocv3.ProcessingResponse) error) error {
		var held []*extprocv3.ProcessingRequest
		for req := range recv {
			if req.GetResponseBody() == nil || req.GetResponseBody().GetEndOfStream() {
				if err := send(answerOf(req, &extprocv3.CommonResponse{})); err != nil {
					return err
				}
				continue
			}
			held = append(held, req)
			if len(held) < 2 {
				continue
			}
			close(haveTwo)
			<-answer
			for _, h := range held {
				body := "<" + string(h.GetResponseBody().GetBody()) + ">"
				if err := send(answerOf(h, &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(body)}}})); err != nil {
					return err
				}
			}
		}
		return nil
	}
	_, procAddr := startHTTPProcessor(t, script)
	up := startHTTPUpstream(t, nil, func(w http.ResponseWriter, _ *http.Request, _ string) {
		for _, p := range []string{"A", "B"} {
			_, _ = io.WriteString(w, p)
			w.(http.Flusher).Flush()
			time.Sleep(30 * time.Millisecond)
		}
		<-release
	})
	hs := setupHTTP(t, up, "", procAddr, nil, procHTTPFilter(t, procHTTPConfig("processor")), routerHTTPFilter(t))
	c := &http.Client{Timeout: testTimeout}
	resp, err := c.Get(hs.url("/watch"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make(chan string, 10)
	go func() {
		b := make([]byte, 100)
		for {
			n, err := resp.Body.Read(b)
			if n > 0 {
				got <- string(b[:n])
			}
			if err != nil {
				close(got)
				return
			}
		}
	}()
	select {
	case <-haveTwo:
	case <-time.After(testTimeout):
		t.Fatal("the second chunk was not sent before the first was answered")
	}
	select {
	case s := <-got:
		t.Fatalf("client received %q before the processor answered", s)
	case <-time.After(100 * time.Millisecond):
	}
	close(answer)
	var all string
	for len(all) < len("<A><B>") {
		select {
		case s := <-got:
			all += s
		case <-time.After(testTimeout):
			t.Fatalf("client got %q", all)
		}
	}
	if all != "<A><B>" {
		t.Fatalf("client got %q, want the answers in FIFO order", all)
	}
	close(release)
	for s := range got {
		all += s
	}
	if all != "<A><B>" {
		t.Errorf("client got %q", all)
	}
	hs.sim.RequireNoViolations(t)
}

// Header mutations: raw_value is the value; removals and sets apply; host,
// :authority, x-envoy-* changes and pseudo-header removals are ignored and
// counted; a value given only in `value` sets the header empty (flagged); a
// mutation with both value and raw_value fails the request with 500.
func TestHTTPExtProcHeaderMutations(t *testing.T) {
	bad := make(chan bool, 2)
	script := httpRespond(func(req *extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
		switch req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			m := &extprocv3.HeaderMutation{
				SetHeaders: []*corev3.HeaderValueOption{setHeader("x-added", "1"), setHeader("host", "evil"),
					setHeader(":authority", "evil"), setHeader("x-envoy-debug", "1"),
					{Header: &corev3.HeaderValue{Key: "x-value-only", Value: "lost"}}},
				RemoveHeaders: []string{"x-api-key", ":path"},
			}
			if <-bad {
				m.SetHeaders = append(m.SetHeaders, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-both", Value: "a", RawValue: []byte("a")}})
			}
			return []*extprocv3.ProcessingResponse{answerOf(req, &extprocv3.CommonResponse{HeaderMutation: m})}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			return []*extprocv3.ProcessingResponse{answerOf(req, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
				SetHeaders: []*corev3.HeaderValueOption{setHeader("x-resp", "2")}}})}
		}
		return passThrough(req)
	})
	_, procAddr := startHTTPProcessor(t, script)
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, "", procAddr, nil, procHTTPFilter(t, procHTTPConfig("processor")), routerHTTPFilter(t))
	bad <- false
	req := newReq(t, http.MethodGet, hs.url("/p"), "")
	req.Header.Set("X-Api-Key", "k")
	resp, _ := do(t, req)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Resp") != "2" {
		t.Fatalf("response %d %v", resp.StatusCode, resp.Header)
	}
	got := up.next(t)
	if got.header.Get("X-Added") != "1" || got.header.Get("X-Api-Key") != "" || got.host != "api.upstream.test" ||
		got.uri != "/p" || got.header.Get("X-Envoy-Debug") != "" {
		t.Errorf("upstream saw %+v", got)
	}
	if v, ok := got.header["X-Value-Only"]; !ok || v[0] != "" {
		t.Errorf("x-value-only %q: Envoy reads raw_value, so it is set empty", v)
	}
	if n := hs.sim.Stats().Get("http.api.ext_proc.rejected_header_mutations"); n != 4 {
		t.Errorf("rejected_header_mutations = %d, want 4", n)
	}
	if v := hs.sim.Violations()[ViolationIgnoredHeaderValues]; v != 1 {
		t.Errorf("ignored_header_values = %d", v)
	}
	bad <- true
	if resp, _ := do(t, newReq(t, http.MethodGet, hs.url("/p"), "")); resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("value and raw_value both set: %d, want 500", resp.StatusCode)
	}
}

// A BUFFERED body answer may change the headers and the body; the changed
// body goes upstream without the old content-length. A STREAMED chunk answer
// replaces the chunk.
func TestHTTPExtProcBodyMutations(t *testing.T) {
	script := httpRespond(func(req *extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
		switch {
		case req.GetRequestBody() != nil:
			return []*extprocv3.ProcessingResponse{answerOf(req, &extprocv3.CommonResponse{
				HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("x-checked", "yes")}},
				BodyMutation:   &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(`{"a":"masked-longer"}`)}},
			})}
		case req.GetResponseBody() != nil && len(req.GetResponseBody().GetBody()) > 0:
			return []*extprocv3.ProcessingResponse{answerOf(req, &extprocv3.CommonResponse{
				BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(`{"secret":"***"}`)}}})}
		}
		return passThrough(req)
	})
	_, procAddr := startHTTPProcessor(t, script)
	up := startHTTPUpstream(t, nil, okHandler(`{"secret":"hunter2"}`))
	hs := setupHTTP(t, up, "", procAddr, nil, procHTTPFilter(t, procHTTPConfig("processor")), routerHTTPFilter(t))
	resp, body := do(t, newReq(t, http.MethodPut, hs.url("/v1/x"), `{"a":1}`))
	if resp.StatusCode != http.StatusOK || body != `{"secret":"***"}` {
		t.Fatalf("response %d %q", resp.StatusCode, body)
	}
	got := up.next(t)
	if got.body != `{"a":"masked-longer"}` || got.header.Get("X-Checked") != "yes" {
		t.Errorf("upstream saw %+v", got)
	}
	hs.sim.RequireNoViolations(t)
}

// immediate_response: a local reply with the processor's status, headers and
// body; the upstream never sees the request.
func TestHTTPExtProcImmediateResponse(t *testing.T) {
	proc, procAddr := startHTTPProcessor(t, httpRespond(func(req *extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
		return []*extprocv3.ProcessingResponse{{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests},
			Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("x-reason", "grant required")}},
			Body:    []byte(`{"error":"needs approval"}`), Details: "sluice denied",
		}}}}
	}))
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	hs := setupHTTP(t, up, "", procAddr, nil, procHTTPFilter(t, procHTTPConfig("processor")), routerHTTPFilter(t))
	resp, body := do(t, newReq(t, http.MethodDelete, hs.url("/v1/x"), ""))
	if resp.StatusCode != http.StatusTooManyRequests || body != `{"error":"needs approval"}` || resp.Header.Get("X-Reason") != "grant required" {
		t.Errorf("response %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if l := hs.log(t); l.ResponseCodeDetails != "sluice_denied" {
		t.Errorf("details %q", l.ResponseCodeDetails)
	}
	<-proc.ended
	if len(up.reqs) != 0 || len(drainKinds(proc)) != 1 {
		t.Error("the request went on after an immediate response")
	}
	hs.sim.RequireNoViolations(t)
}

// failOpen sets failure_mode_allow on the sluice processor config.
func failOpen(on bool, timeout time.Duration) *httpextprocv3.ExternalProcessor {
	cfg := procHTTPConfig("processor")
	cfg.FailureModeAllow = on
	if timeout > 0 {
		cfg.MessageTimeout = ms(int(timeout.Milliseconds()))
	}
	return cfg
}

// Checklist 7 failures: a message timeout gives 504, a gRPC error 500
// (status_on_error), each forwarding unprocessed when fail-open; an OK close
// continues without the processor, fail-closed or not.
func TestHTTPExtProcFailures(t *testing.T) {
	silent := func(ctx context.Context, recv <-chan *extprocv3.ProcessingRequest, _ func(*extprocv3.ProcessingResponse) error) error {
		<-ctx.Done()
		return nil
	}
	grpcErr := func(ctx context.Context, recv <-chan *extprocv3.ProcessingRequest, _ func(*extprocv3.ProcessingResponse) error) error {
		<-recv
		return context.DeadlineExceeded // any non-OK status
	}
	okClose := func(ctx context.Context, recv <-chan *extprocv3.ProcessingRequest, _ func(*extprocv3.ProcessingResponse) error) error {
		<-recv
		return errOKClose
	}
	for _, tc := range []struct {
		name      string
		script    httpProcScript
		open      bool
		want      int
		stat      string
		violation string
	}{
		{"timeout fail-closed", silent, false, http.StatusGatewayTimeout, "message_timeouts", ViolationTimeouts},
		{"timeout fail-open", silent, true, http.StatusOK, "message_timeouts", ViolationTimeouts},
		{"gRPC error fail-closed", grpcErr, false, http.StatusInternalServerError, "streams_failed", ""},
		{"gRPC error fail-open", grpcErr, true, http.StatusOK, "streams_failed", ""},
		{"OK close", okClose, false, http.StatusOK, "streams_closed", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, procAddr := startHTTPProcessor(t, tc.script)
			up := startHTTPUpstream(t, nil, okHandler(`{"ok":1}`))
			hs := setupHTTP(t, up, "", procAddr, nil, procHTTPFilter(t, failOpen(tc.open, 100*time.Millisecond)), routerHTTPFilter(t))
			resp, body := do(t, newReq(t, http.MethodPost, hs.url("/"), "x"))
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, body, tc.want)
			}
			if tc.want == http.StatusOK && (body != `{"ok":1}` || up.next(t).body != "x") {
				t.Errorf("unprocessed pass-through: %q", body)
			}
			if n := hs.sim.Stats().Get("http.api.ext_proc." + tc.stat); n != 1 {
				t.Errorf("%s = %d", tc.stat, n)
			}
			if tc.open && hs.sim.Stats().Get("http.api.ext_proc.failure_mode_allowed") != 1 {
				t.Error("failure_mode_allowed not counted")
			}
			for k, v := range hs.sim.Violations() {
				if want := map[string]int64{tc.violation: 1}[k]; v != want {
					t.Errorf("violation %s = %d, want %d", k, v, want)
				}
			}
		})
	}
}

// Checklist 7, the strict state machine: a response of the wrong type
// (response_headers for request_headers, a body answer while headers are
// out) is spurious: 500 when fail-closed, the processor dropped when
// fail-open. Both are contract violations.
func TestHTTPExtProcSpuriousResponses(t *testing.T) {
	wrongType := func(req *extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
		if req.GetRequestHeaders() != nil {
			return []*extprocv3.ProcessingResponse{{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}}
		}
		return passThrough(req)
	}
	bodyEarly := func(req *extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
		if req.GetRequestHeaders() != nil {
			return []*extprocv3.ProcessingResponse{{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}}
		}
		return passThrough(req)
	}
	for _, tc := range []struct {
		name  string
		reply func(*extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse
		open  bool
		want  int
	}{
		{"response_headers for request_headers", wrongType, false, http.StatusInternalServerError},
		{"body answer while headers are out", bodyEarly, false, http.StatusInternalServerError},
		{"fail-open", wrongType, true, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, procAddr := startHTTPProcessor(t, httpRespond(tc.reply))
			up := startHTTPUpstream(t, nil, okHandler("{}"))
			hs := setupHTTP(t, up, "", procAddr, nil, procHTTPFilter(t, failOpen(tc.open, 0)), routerHTTPFilter(t))
			if resp, body := do(t, newReq(t, http.MethodPost, hs.url("/"), "x")); resp.StatusCode != tc.want {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, body, tc.want)
			}
			if hs.sim.Stats().Get("http.api.ext_proc.spurious_msgs_received") != 1 || hs.sim.Violations()[ViolationWrongTypeResponses] != 1 {
				t.Errorf("spurious %d, violation %d", hs.sim.Stats().Get("http.api.ext_proc.spurious_msgs_received"), hs.sim.Violations()[ViolationWrongTypeResponses])
			}
		})
	}
}

// Checklist 7: override_message_timeout restarts the timer (within
// max_message_timeout); the other fields of that message are ignored and
// flagged.
func TestHTTPExtProcOverrideMessageTimeout(t *testing.T) {
	withPayload := make(chan bool, 1)
	script := func(ctx context.Context, recv <-chan *extprocv3.ProcessingRequest, send func(*extprocv3.ProcessingResponse) error) error {
		for req := range recv {
			if req.GetRequestHeaders() != nil {
				ext := &extprocv3.ProcessingResponse{OverrideMessageTimeout: ms(600)}
				if <-withPayload {
					ext.Response = answerOf(req, &extprocv3.CommonResponse{}).Response
				}
				if err := send(ext); err != nil {
					return err
				}
				time.Sleep(250 * time.Millisecond) // past message_timeout, within the override
			}
			if err := send(answerOf(req, &extprocv3.CommonResponse{})); err != nil {
				return err
			}
		}
		return nil
	}
	_, procAddr := startHTTPProcessor(t, script)
	up := startHTTPUpstream(t, nil, okHandler("{}"))
	cfg := failOpen(false, 100*time.Millisecond)
	cfg.MaxMessageTimeout = ms(1000)
	hs := setupHTTP(t, up, "", procAddr, nil, procHTTPFilter(t, cfg), routerHTTPFilter(t))
	withPayload <- false
	if resp, _ := do(t, newReq(t, http.MethodGet, hs.url("/"), "")); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if hs.sim.Stats().Get("http.api.ext_proc.override_message_timeout_received") != 1 {
		t.Error("override not counted")
	}
	hs.sim.RequireNoViolations(t)
	withPayload <- true
	do(t, newReq(t, http.MethodGet, hs.url("/"), ""))
	if v := hs.sim.Violations()[ViolationIgnoredResponseFields]; v != 1 {
		t.Errorf("ignored_response_fields = %d", v)
	}
}

// A local reply of an earlier filter (an ext_authz denial) goes through every
// encoder filter (sendLocalReplyViaFilterChain), so the processor sees
// response_headers without having seen the request.
func TestHTTPExtProcSeesLocalReplyOfExtAuthz(t *testing.T) {
	_, authzAddr := startAuthorizer(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: 7}}, nil
	})
	proc, procAddr := startHTTPProcessor(t, httpRespond(passThrough))
	hs := setupHTTP(t, nil, authzAddr, procAddr, nil,
		authzHTTPFilter(t, authzHTTPConfig("authz")), procHTTPFilter(t, procHTTPConfig("processor")), routerHTTPFilter(t))
	if resp, _ := do(t, newReq(t, http.MethodGet, hs.url("/"), "")); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d", resp.StatusCode)
	}
	<-proc.ended
	if k := drainKinds(proc); !slices.Equal(k, []string{"response_headers"}) {
		t.Errorf("processor saw %q", k)
	}
	hs.sim.RequireNoViolations(t)
}
