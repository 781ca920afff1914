package extproc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"mime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/filters/httpapi"
	"github.com/sluicehq/sluice/policies"
)

// HTTPOptions configure an HTTPServer.
type HTTPOptions struct {
	// Config is the initial configuration; Update replaces it. Until one is
	// set every request is refused.
	Config *policies.Config
	// Audit records each request before it reaches the upstream, and
	// its response once it has passed. Required.
	Audit  audit.Sink
	Logger *slog.Logger
	// Now is the clock of audit records; default time.Now.
	Now func() time.Time
	// MaxMaskedBody bounds a JSON response held whole to be masked
	// (default DefaultMaxMaskedBody). A larger one is refused, not passed.
	MaxMaskedBody int
	// MaxWatchEvent bounds one event of a watch stream being masked
	// (default DefaultMaxWatchEvent).
	MaxWatchEvent int
}

// Defaults of HTTPOptions.
const (
	DefaultMaxMaskedBody = 32 << 20
	DefaultMaxWatchEvent = 4 << 20
)

// HTTPServer is Envoy's HTTP external processor for HTTP targets
// (envoy.service.ext_proc.v3): one exchange per gRPC stream, that is, per
// HTTP request. It records the request (with its body's digest), durably,
// before Envoy may forward it to the upstream, and refuses it when that
// record cannot be made; masks JSON responses the decision asks to mask
// (whole documents, or watch streams event by event); and records the
// response (status, what the agent received as a digest, masked paths,
// duration) once it has passed. It is safe for concurrent use.
type HTTPServer struct {
	extprocv3.UnimplementedExternalProcessorServer

	opts  HTTPOptions
	log   *slog.Logger
	cfg   atomic.Pointer[policies.Config]
	rules perConfig[*httpapi.JSONRules]
	// background counts the http.response records in flight (Wait).
	background inFlight
}

// Wait returns once the http.response records made in the background are
// appended (or ctx ends): shutdown calls it after the servers have
// stopped, before the audit store closes.
func (s *HTTPServer) Wait(ctx context.Context) error { return s.background.wait(ctx) }

var _ extprocv3.ExternalProcessorServer = (*HTTPServer)(nil)

// NewHTTPServer builds the server.
func NewHTTPServer(opts HTTPOptions) (*HTTPServer, error) {
	if opts.Audit == nil {
		return nil, errors.New("extproc: an audit sink is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxMaskedBody <= 0 {
		opts.MaxMaskedBody = DefaultMaxMaskedBody
	}
	if opts.MaxWatchEvent <= 0 {
		opts.MaxWatchEvent = DefaultMaxWatchEvent
	}
	s := &HTTPServer{opts: opts, log: opts.Logger}
	if opts.Config != nil {
		if err := s.Update(opts.Config); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// checkMasking compiles every masking rule's JSON paths, so that a bad
// path stops the config from loading (or a reload from applying) instead
// of failing the first response it should mask.
func checkMasking(cfg *policies.Config) error {
	for _, m := range cfg.Masking {
		if len(m.JSONPaths) == 0 {
			continue
		}
		if _, err := httpapi.NewJSONRules(m.JSONPaths, m.Detectors); err != nil {
			return fmt.Errorf("masking rule %s: %w", m.Name, err)
		}
	}
	return nil
}

// Register adds the ExternalProcessor service to a gRPC server.
func (s *HTTPServer) Register(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, s) }

// Update swaps in a new config; requests in flight keep theirs. A config
// whose JSON paths do not compile is refused.
func (s *HTTPServer) Update(cfg *policies.Config) error {
	if cfg == nil {
		return errors.New("extproc: nil config")
	}
	if err := checkMasking(cfg); err != nil {
		return err
	}
	s.cfg.Store(cfg)
	return nil
}

// Process serves one HTTP request. Envoy sends request headers, the
// request body (buffered), response headers and the response body
// (streamed, where a policy masks), in that order (envoy-contract.md
// section 4); every message gets exactly one response of its own type, or
// an ImmediateResponse that ends the exchange.
//
// Envoy holds the request until its last request message is answered:
// the request headers when there is no body to buffer, else the buffered
// body. That answer waits for the http.request event to be durable; if
// it cannot be appended the answer is a 503 and the request never reaches
// the upstream. The http.response event follows the response.
func (s *HTTPServer) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	x := &exchange{srv: s, cfg: s.cfg.Load(), start: s.opts.Now()}
	defer x.finish()
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		resp := x.handle(ctx, req)
		if err := stream.Send(resp); err != nil {
			return err
		}
		if resp.GetImmediateResponse() != nil {
			return nil
		}
	}
}

// bodyMode is what happens to the response body.
type bodyMode uint8

const (
	bodyPass  bodyMode = iota // streamed through, digested
	bodyWhole                 // held whole, masked at the end
	bodyLines                 // a watch stream, masked event by event
)

// exchange is one request and its response.
type exchange struct {
	srv   *HTTPServer
	cfg   *policies.Config
	start time.Time

	decided   bool // the ext_authz decision was read
	target    policies.Target
	principal policies.Principal
	decision  string
	reason    string
	class     string
	grantID   string
	masks     []string

	method, path string
	kube         httpapi.KubeRequest
	isKube       bool
	requestID    string
	// upgrade is the Upgrade value of a request that switches protocols
	// (http_upgrade.go); empty for any other request.
	upgrade string

	reqHash  hash.Hash
	reqBytes int64
	// seesBody says the response body is sent here (the chain's response
	// body mode, from the stream's protocol_config, is not NONE).
	// bodyUnseen marks a response whose body flowed past sluice; declared
	// is then its Content-Length, -1 if it had none.
	seesBody   bool
	bodyUnseen bool
	declared   int64

	status   int
	mode     bodyMode
	rules    *httpapi.JSONRules
	opts     httpapi.JSONOptions
	held     []byte
	lines    *httpapi.LineMasker
	report   httpapi.Report
	respHash hash.Hash
	sent     int64
	recorded bool // the request's event is durable
	// localReply marks an exchange that is only Envoy's or sluice's own
	// local reply passing through.
	localReply bool
	done       bool // the response body ended
	failure    string
}

func (x *exchange) handle(ctx context.Context, req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	if x.localReply || (!x.decided && req.GetResponseHeaders() != nil) {
		// Response headers before any request headers: a local reply of an
		// earlier filter (ext_authz's refusal, which it recorded) or of the
		// connection manager, which Envoy encodes through every filter
		// (sendLocalReplyViaFilterChain). It carries nothing of the
		// upstream's: it passes as it is.
		x.localReply = true
		return passResponse(req)
	}
	if !x.decided {
		if msg := x.readDecision(req); msg != "" {
			return refusal(typev3.StatusCode_Forbidden, x.target.Name, msg)
		}
	}
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return x.requestHeaders(ctx, r.RequestHeaders, req.GetProtocolConfig())
	case *extprocv3.ProcessingRequest_RequestBody:
		return x.requestBody(ctx, r.RequestBody)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return x.responseHeaders(ctx, r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		return x.responseBody(r.ResponseBody)
	}
	// Trailers are not asked for (xds/translate_http.go): an unexpected
	// message is refused rather than answered with a guess.
	return refusal(typev3.StatusCode_InternalServerError, x.target.Name, "sluice: unexpected ext_proc message")
}

// readDecision takes the ext_authz decision Envoy forwards in the
// metadata context. Without one ext_authz did not allow this request, so
// nothing passes.
func (x *exchange) readDecision(req *extprocv3.ProcessingRequest) string {
	md := req.GetMetadataContext().GetFilterMetadata()[authz.MetadataNamespaceHTTP]
	if md == nil {
		return "sluice: no authorization decision reached the processor"
	}
	f := md.GetFields()
	str := func(k string) string { return f[k].GetStringValue() }
	x.decision, x.reason, x.class, x.grantID = str("decision"), str("reason"), str("class"), str("grant_id")
	if x.decision != policies.Allow.String() {
		return "sluice: the request was not allowed"
	}
	if x.cfg == nil {
		return "sluice: no configuration is loaded"
	}
	t, ok := x.cfg.Target(str("target"))
	if !ok || t.Kind != policies.KindHTTP {
		return fmt.Sprintf("sluice: unknown http target %q", str("target"))
	}
	x.target = *t
	x.principal = policies.Principal{Issuer: str("issuer"), Subject: str("subject"), Client: str("client"), OnBehalfOf: str("on_behalf_of")}
	for _, g := range f["groups"].GetListValue().GetValues() {
		x.principal.Groups = append(x.principal.Groups, g.GetStringValue())
	}
	for _, m := range f["masks"].GetListValue().GetValues() {
		x.masks = append(x.masks, m.GetStringValue())
	}
	x.decided = true
	x.requestID = newRequestID()
	return ""
}

// requestHeaders notes what is asked. When the response is to be masked,
// it asks the upstream for uncompressed JSON, the one form sluice can
// mask (a Kubernetes client may prefer protobuf, any client gzip). An
// upgrade is checked instead (http_upgrade.go): what follows it is not
// JSON.
//
// When no body follows for sluice to see (end_of_stream, or a request
// body mode other than BUFFERED: answering the headers lets Envoy forward
// them) the request is recorded here; otherwise with its body.
func (x *exchange) requestHeaders(ctx context.Context, h *extprocv3.HttpHeaders, pc *extprocv3.ProtocolConfiguration) *extprocv3.ProcessingResponse {
	hs := headerMap(h.GetHeaders())
	x.method, x.path = hs[":method"], hs[":path"]
	x.isKube = x.target.API == policies.APIKubernetes
	if x.isKube {
		x.kube, _ = httpapi.ParseKubernetes(x.method, x.path, hs)
	}
	// Envoy sends protocol_config with the stream's first message, these
	// headers. Without one, assume the body is seen, as sluice's
	// translation has it wherever a policy masks.
	x.seesBody = pc == nil || pc.GetResponseBodyMode() != httpextprocv3.ProcessingMode_NONE
	if httpapi.IsUpgrade(hs) {
		return x.upgradeRequest(ctx, hs, pc)
	}
	if len(x.masks) > 0 && !x.seesBody {
		// The decision masks, but this chain does not send response
		// bodies here (Envoy is not yet running the configuration that
		// masks them): the response would pass unmasked.
		x.srv.log.Warn("masked request reached an ext_proc filter that is not sent response bodies; refusing",
			"target", x.target.Name, "masks", x.masks)
		return refusal(typev3.StatusCode_ServiceUnavailable, x.target.Name,
			"sluice: this request's response must be masked, but Envoy does not yet send it to sluice; retry shortly")
	}
	if h.GetEndOfStream() || pc.GetRequestBodyMode() != httpextprocv3.ProcessingMode_BUFFERED {
		if r := x.recordRequest(ctx); r != nil {
			return r
		}
	}
	common := &extprocv3.CommonResponse{}
	if len(x.masks) > 0 {
		common.HeaderMutation = &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
			setHeader("accept-encoding", "identity"),
		}}
		if x.isKube {
			common.HeaderMutation.SetHeaders = append(common.HeaderMutation.SetHeaders, setHeader("accept", "application/json"))
		}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
		RequestHeaders: &extprocv3.HeadersResponse{Response: common}}}
}

// requestBody records the request with its body's digest, durably,
// before answering: in BUFFERED mode this is the whole body (one message,
// end_of_stream unless trailers follow), and Envoy forwards nothing of
// the request, headers included, until it has this answer. A request
// already recorded (its body mode is not BUFFERED) is only digested.
func (x *exchange) requestBody(ctx context.Context, b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if x.reqHash == nil {
		x.reqHash = sha256.New()
	}
	x.reqHash.Write(b.GetBody())
	x.reqBytes += int64(len(b.GetBody()))
	if r := x.recordRequest(ctx); r != nil {
		return r
	}
	return bodyResponse(true, nil)
}

// recordRequest appends the request's event unless it is recorded
// already. It returns nil once the event is durable, or the 503 that
// refuses the request when it cannot be: nothing passes unaudited.
func (x *exchange) recordRequest(ctx context.Context) *extprocv3.ProcessingResponse {
	// Bounded below Envoy's message timeout, as the Postgres gate's
	// records are, so that a store that hangs is a 503 in sluice's words
	// rather than Envoy's own error.
	ctx, cancel := budgeted(ctx, x.cfg, false)
	defer cancel()
	if err := x.record(ctx); err != nil {
		return refusal(typev3.StatusCode_ServiceUnavailable, x.target.Name, "sluice: the audit store is unavailable; nothing passes unaudited")
	}
	return nil
}

// responseHeaders decides how the body will be treated. The request was
// recorded before it was forwarded; a response to a request that was not
// (a local reply of Envoy's, such as a 413 for a body over the buffer
// limit) records it now, before the response moves on.
func (x *exchange) responseHeaders(ctx context.Context, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	hs := headerMap(h.GetHeaders())
	x.status, _ = strconv.Atoi(hs[":status"])
	if r := x.recordRequest(ctx); r != nil {
		return r
	}
	if x.upgrade != "" {
		return x.upgradeResponse(h)
	}
	common := &extprocv3.CommonResponse{}
	if len(x.masks) > 0 && !h.GetEndOfStream() {
		rules, err := x.srv.compiled(x.cfg, x.masks)
		if err != nil {
			return x.refuseResponse(typev3.StatusCode_InternalServerError, "sluice: "+err.Error())
		}
		ct, _, _ := mime.ParseMediaType(hs["content-type"])
		switch {
		case hs["content-encoding"] != "" && hs["content-encoding"] != "identity":
			return x.refuseResponse(typev3.StatusCode_BadGateway,
				fmt.Sprintf("sluice: the response is %s-encoded, which sluice cannot mask", hs["content-encoding"]))
		case ct != "" && ct != "application/json" && !strings.HasSuffix(ct, "+json"):
			return x.refuseResponse(typev3.StatusCode_BadGateway,
				fmt.Sprintf("sluice: the response is %s, which sluice cannot mask; ask for application/json", ct))
		}
		x.rules = rules
		x.opts = httpapi.JSONOptions{Kubernetes: x.isKube, Secrets: x.isKube && x.kube.Resource == "secrets"}
		x.mode = bodyWhole
		if x.kube.Verb == httpapi.VerbWatch || strings.Contains(hs["content-type"], "stream=watch") {
			x.mode = bodyLines
			x.lines = rules.NewLineMasker(x.opts, x.srv.opts.MaxWatchEvent)
		}
		// The masked body's length is not known yet: Envoy frames it
		// (chunked, or HTTP/2 frames) without the upstream's length.
		common.HeaderMutation = &extprocv3.HeaderMutation{RemoveHeaders: []string{"content-length"}}
	}
	switch {
	case h.GetEndOfStream():
		x.done = true
	case !x.seesBody:
		// The body flows past sluice (response body mode NONE): nothing
		// more of the exchange comes here, so sluice cannot count it,
		// digest it, or tell whether it completed. Its record says what
		// the upstream declared, if anything.
		x.done, x.bodyUnseen, x.declared = true, true, -1
		if n, err := strconv.ParseInt(hs["content-length"], 10, 64); err == nil && n >= 0 {
			x.declared = n
		}
		if x.method == "HEAD" {
			x.declared = 0
		}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
		ResponseHeaders: &extprocv3.HeadersResponse{Response: common}}}
}

// refuseResponse ends the exchange; its http.response event carries the
// refusal as its error.
func (x *exchange) refuseResponse(code typev3.StatusCode, msg string) *extprocv3.ProcessingResponse {
	x.failure = msg
	return refusal(code, x.target.Name, msg)
}

// responseBody passes, holds or masks one chunk. Envoy forwards each chunk
// only once it has its answer, in order (section 4, STREAMED).
func (x *exchange) responseBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	chunk, eos := b.GetBody(), b.GetEndOfStream()
	var out []byte
	var err error
	switch x.mode {
	case bodyPass:
		x.digest(chunk)
		if eos {
			x.done = true
		}
		return bodyResponse(false, nil)
	case bodyWhole:
		if len(x.held)+len(chunk) > x.srv.opts.MaxMaskedBody {
			return x.failBody(fmt.Sprintf("sluice: the response exceeds %d bytes, the most sluice holds to mask", x.srv.opts.MaxMaskedBody))
		}
		x.held = append(x.held, chunk...)
		out = []byte{}
		if eos {
			if len(x.held) > 0 {
				var rep httpapi.Report
				out, rep, err = x.rules.Mask(nil, x.held, x.opts)
				x.report = rep
			}
			x.held = nil
		}
	case bodyLines:
		out, err = x.lines.Write(nil, chunk)
		if err == nil && eos {
			out, err = x.lines.Close(out)
		}
		x.report = x.lines.Report()
	}
	if err != nil {
		return x.failBody("sluice: the response could not be masked: " + err.Error())
	}
	x.digest(out)
	if eos {
		x.done = true
	}
	if out == nil {
		out = []byte{}
	}
	return bodyResponse(false, out)
}

// failBody ends an exchange whose body cannot pass. The status line has
// gone to the agent already, so Envoy resets the stream: the agent sees
// a broken response, never an unmasked one.
func (x *exchange) failBody(msg string) *extprocv3.ProcessingResponse {
	x.failure = msg
	x.held = nil
	return refusal(typev3.StatusCode_BadGateway, x.target.Name, msg)
}

func (x *exchange) digest(b []byte) {
	if x.respHash == nil {
		x.respHash = sha256.New()
	}
	x.respHash.Write(b)
	x.sent += int64(len(b))
}

// event is an audit record of the exchange.
func (x *exchange) event(kind audit.Kind) audit.Event {
	ev := audit.Event{Time: x.srv.opts.Now(), Kind: kind, RequestID: x.requestID, Principal: x.principal, Target: x.target.Name,
		Request: x.method + " " + x.path, Decision: x.decision, Reason: x.reason, GrantID: x.grantID, HTTPStatus: x.status,
		Error: x.failure}
	if c, err := policies.ParseClass(x.class); err == nil {
		ev.Classes = []policies.OperationClass{c}
	}
	return ev
}

// record appends the request's http.request event (what was asked, the
// decision, the body's size and digest), durably: the gate on the request
// reaching the upstream. The response's status is in http.response.
func (x *exchange) record(ctx context.Context) error {
	if x.recorded {
		return nil
	}
	ev := x.event(audit.KindHTTPRequest)
	ev.HTTPStatus = 0 // the response's, in http.response
	if x.reqHash != nil {
		ev.Digest = "sha256:" + hex.EncodeToString(x.reqHash.Sum(nil))
		ev.Bytes = x.reqBytes
	}
	if err := x.srv.opts.Audit.Append(ctx, ev); err != nil {
		x.srv.log.Warn("http request not recorded; refusing it", "target", x.target.Name, "err", err)
		return err
	}
	x.recorded = true
	return nil
}

// finish records the response: its status, what the agent received
// (bytes and digest), the paths masked, the exchange's duration and any
// failure. The request's record was durable before the request moved, so
// this one waits for nothing.
//
// Where the body flowed past sluice (bodyUnseen) the record has no
// digest; Bytes is the upstream's Content-Length, not a count of what
// passed, and is left unset (unknown, not zero) without one; and Duration
// ends at the response headers when Envoy closes the stream then. No
// error is claimed for a body sluice never saw.
func (x *exchange) finish() {
	if !x.recorded {
		return
	}
	ev := x.event(audit.KindHTTPResponse)
	ev.Duration = x.srv.opts.Now().Sub(x.start)
	if x.bodyUnseen {
		if x.declared > 0 {
			ev.Bytes = x.declared
		}
	} else {
		ev.Bytes = x.sent
		if x.respHash != nil {
			ev.Digest = "sha256:" + hex.EncodeToString(x.respHash.Sum(nil))
		}
	}
	ev.MaskedColumns = x.report.Paths
	if !x.done && ev.Error == "" {
		ev.Error = "the response did not complete"
	}
	x.srv.background.run(func() {
		ctx, cancel := context.WithTimeout(context.Background(), resultRecordTimeout)
		defer cancel()
		_ = x.srv.opts.Audit.Append(ctx, ev)
	})
}

// compiled returns the JSON masking rules named, compiled once per config.
func (s *HTTPServer) compiled(cfg *policies.Config, names []string) (*httpapi.JSONRules, error) {
	return s.rules.get(cfg, names, func() (*httpapi.JSONRules, error) {
		return httpapi.CompileJSONRules(cfg.Masking, names)
	})
}

func headerMap(h *corev3.HeaderMap) map[string]string {
	out := make(map[string]string, len(h.GetHeaders()))
	for _, kv := range h.GetHeaders() {
		v := kv.GetValue()
		if len(kv.GetRawValue()) > 0 {
			v = string(kv.GetRawValue())
		}
		out[strings.ToLower(kv.GetKey())] = v
	}
	return out
}

// setHeader replaces a header (raw_value: Envoy reads it, not value, by
// default; setting both is an error, envoy-contract.md section 4).
func setHeader(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
}

// passResponse answers a message with an unchanged continue of its type.
func passResponse(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	common := &extprocv3.CommonResponse{}
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: common}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: common}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return bodyResponse(true, nil)
	case *extprocv3.ProcessingRequest_ResponseBody:
		return bodyResponse(false, nil)
	}
	return refusal(typev3.StatusCode_InternalServerError, "", "sluice: unexpected ext_proc message")
}

func bodyResponse(request bool, body []byte) *extprocv3.ProcessingResponse {
	common := &extprocv3.CommonResponse{}
	if body != nil {
		common.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}}
	}
	if request {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: common}}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: common}}}
}

// refusal ends the exchange with sluice's JSON refusal, the shape ext_authz
// uses (authz.Refusal), so an agent reads one format.
func refusal(code typev3.StatusCode, target, reason string) *extprocv3.ProcessingResponse {
	kind := "forbidden"
	if code == typev3.StatusCode_ServiceUnavailable {
		kind = "unavailable"
	}
	body, _ := json.Marshal(authz.Refusal{Error: kind, Target: target, Reason: reason})
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
		Status:  &typev3.HttpStatus{Code: code},
		Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("content-type", "application/json")}},
		Body:    body,
		Details: "sluice_" + strings.ToLower(code.String()),
	}}}
}
