package authz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/filters/httpapi"
	"github.com/sluicehq/sluice/policies"
)

// Refusal is the JSON body an agent receives when sluice refuses an HTTP
// request: enough to act on without reading sluice's logs.
type Refusal struct {
	// Error is a stable code: unauthenticated, forbidden,
	// approval_required or unavailable.
	Error  string `json:"error"`
	Reason string `json:"reason"`
	Target string `json:"target,omitempty"`
	Class  string `json:"class,omitempty"`
	// ApprovalRequestID names the grant request opened for this refusal.
	ApprovalRequestID string `json:"approval_request_id,omitempty"`
	// HowToApprove tells a person what to do with it.
	HowToApprove string `json:"how_to_approve,omitempty"`
}

// checkHTTP decides one HTTP request (design.md section 7). The route
// names its target in context_extensions; the agent's bearer token is
// verified; the request is classified and decided; on allow, the agent's
// credential is replaced by the target's.
//
// Every answer is audited. An allow, a policy refusal and a refusal that
// opens an approval request go out only once their event is durable; the
// refusals sluice makes before or without a decision are recorded best
// effort (recordRefusal), since they let nothing through.
func (c *check) checkHTTP(ctx context.Context, st *state, attrs *authv3.AttributeContext, req *authv3.AttributeContext_HttpRequest) (*authv3.CheckResponse, string) {
	now := c.opts.Now()
	request := req.GetMethod() + " " + req.GetPath()
	var source string
	src, srcOK := peerAddr(attrs.GetSource().GetAddress())
	if srcOK {
		source = src.String()
	}
	refuse := func(p policies.Principal, target string, code int, r Refusal, internal string) *authv3.CheckResponse {
		c.recordRefusal(ctx, refusalEvent(now, p, target, source, request, r.Reason, internal))
		return deny(code, r, nil)
	}

	name := attrs.GetContextExtensions()["target"]
	t, ok := st.cfg.Target(name)
	if !ok || t.Kind != policies.KindHTTP {
		c.log.Error("HTTP check for a route without a known http target", "target", name)
		return refuse(policies.Principal{}, name, http.StatusForbidden, Refusal{Error: "forbidden", Reason: fmt.Sprintf("this route names no http target sluice knows (%q)", name)}, ""), "deny"
	}
	if t.Disabled {
		return refuse(policies.Principal{}, t.Name, http.StatusForbidden, Refusal{Error: "forbidden", Target: t.Name, Reason: "target " + t.Name + " is disabled"}, ""), "deny"
	}
	if !srcOK || !sourceAllowed(t, src.Addr()) {
		return refuse(policies.Principal{}, t.Name, http.StatusForbidden, Refusal{Error: "forbidden", Target: t.Name, Reason: "your address may not reach " + t.Name}, ""), "deny"
	}

	raw, ok := bearer(req.GetHeaders()["authorization"])
	if !ok {
		reason := "send your OIDC access token as Authorization: Bearer <token>"
		c.recordRefusal(ctx, authnRefusalEvent(now, t.Name, source, request, "no bearer token: "+reason))
		return unauthenticated(t.Name, reason), "unauthenticated"
	}
	ver, err := st.verifier.Verify(ctx, raw)
	if err != nil {
		// TokenError messages never contain the token; TokenHash is the
		// form that may be logged.
		var te *TokenError
		if errors.As(err, &te) && te.Code == TokenIssuerUnavailable {
			c.log.Warn("token refused: issuer unavailable", "token_sha", TokenHash(raw), "err", te.Reason)
			c.recordRefusal(ctx, authnRefusalEvent(now, t.Name, source, request, te.Reason))
			return deny(http.StatusServiceUnavailable, Refusal{Error: "unavailable", Target: t.Name, Reason: te.Reason}, nil), "error"
		}
		c.log.Info("token refused", "token_sha", TokenHash(raw), "target", t.Name, "err", err)
		c.recordRefusal(ctx, authnRefusalEvent(now, t.Name, source, request, err.Error()))
		return unauthenticated(t.Name, err.Error()), "unauthenticated"
	}
	p := ver.Principal
	class := classify(t, req.GetMethod(), req.GetPath(), req.GetHeaders(), httpRules(st.cfg, t.Name))

	grants, err := c.opts.Grants.Active(ctx, p, t.Name, now)
	if err != nil {
		c.log.Error("grant store unavailable; refusing", "err", err)
		return refuse(p, t.Name, http.StatusServiceUnavailable, Refusal{Error: "unavailable", Target: t.Name, Reason: "the grant store is unavailable; try again"}, err.Error()), "error"
	}
	d := st.cfg.Decide(policies.Request{Principal: p, Target: t.Name, Classes: []policies.OperationClass{class}}, grants)
	md := decisionMetadata(p, t.Name, d, raw)

	ev := audit.Event{Time: now, Kind: audit.KindAuthzDecision, Principal: p, Target: t.Name, Source: source, Request: request,
		Classes: []policies.OperationClass{class}, Decision: d.Outcome.String(), Reason: d.Reason, GrantID: d.GrantID}
	// refused records a refusal that sluice, not the policy, caused.
	refused := func(r Refusal, err error) *authv3.CheckResponse {
		ev.Decision, ev.Reason, ev.Error = policies.Deny.String(), r.Reason, err.Error()
		c.recordRefusal(ctx, ev)
		return deny(http.StatusServiceUnavailable, r, md)
	}

	switch d.Outcome {
	case policies.Allow:
		headers, remove, err := credentialHeaders(t)
		if err != nil {
			c.log.Error("target credential unavailable; refusing", "target", t.Name, "err", err)
			return refused(Refusal{Error: "unavailable", Target: t.Name, Reason: "sluice cannot present its credential for " + t.Name}, err), "error"
		}
		if err := c.record(ctx, ev); err != nil {
			return auditDown(t.Name, md), "error"
		}
		return &authv3.CheckResponse{
			Status:          &status.Status{Code: int32(codes.OK)},
			DynamicMetadata: md,
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers: headers, HeadersToRemove: remove,
			}},
		}, "allow"
	case policies.ApprovalRequired:
		// The request's own grant.requested event is appended within the
		// same budget as the decision's.
		actx, cancel := c.auditCtx(ctx)
		id, err := c.opts.Grants.RequestApproval(actx, ApprovalRequest{Principal: p, Target: t.Name, Class: class,
			Reason: "refused " + request, Duration: ApprovalDuration(st.cfg, t.Name), Now: now})
		cancel()
		if errors.Is(err, ErrAuditUnavailable) {
			c.log.Error("AUDIT RECORD FAILED; approval request not opened", "target", t.Name, "subject", p.Subject, "err", err)
			return auditDown(t.Name, md), "error"
		}
		if err != nil {
			c.log.Error("grant store unavailable; refusing", "err", err)
			return refused(Refusal{Error: "unavailable", Target: t.Name, Reason: "the grant store is unavailable; try again"}, err), "error"
		}
		ev.GrantID = id
		if err := c.record(ctx, ev); err != nil {
			return auditDown(t.Name, md), "error"
		}
		md.Fields["approval_request_id"] = structpb.NewStringValue(id)
		return deny(http.StatusForbidden, Refusal{Error: "approval_required", Target: t.Name, Class: class.String(), Reason: d.Reason,
			ApprovalRequestID: id, HowToApprove: fmt.Sprintf("ask someone in %s to run: sluice grants approve %s", strings.Join(st.cfg.Approvers.Groups, " or "), id)}, md), "approval_required"
	default:
		// A policy refusal is recorded before it is answered, as before:
		// the agent learns nothing the trail does not hold.
		if err := c.record(ctx, ev); err != nil {
			return auditDown(t.Name, md), "error"
		}
		return deny(http.StatusForbidden, Refusal{Error: "forbidden", Target: t.Name, Class: class.String(), Reason: d.Reason}, md), "deny"
	}
}

// httpRules collects the method/path rules of the policies on a target, in
// file order.
func httpRules(cfg *policies.Config, target string) []policies.HTTPRule {
	var rules []policies.HTTPRule
	for _, p := range cfg.Policies {
		if slices.Contains(p.Targets, target) {
			rules = append(rules, p.HTTP...)
		}
	}
	return rules
}

// credentialHeaders builds the upstream credential with the portable recipe
// of envoy-contract.md section 3: set with OVERWRITE_IF_EXISTS_OR_ADD (old
// builds overwrite anyway), and never list authorization in
// headers_to_remove when it is set, since older builds apply removals after
// sets. With a custom header the agent's authorization is removed instead.
func credentialHeaders(t *policies.Target) ([]*corev3.HeaderValueOption, []string, error) {
	ref := t.Credentials.Bearer()
	if ref.IsZero() {
		// An upstream without credentials: still strip the agent's token.
		return nil, []string{"authorization"}, nil
	}
	secret, err := ref.Resolve()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", ref, err)
	}
	key, value, remove := "authorization", "Bearer "+secret, []string(nil)
	if t.Credentials.Header != "" {
		key, value, remove = strings.ToLower(t.Credentials.Header), secret, []string{"authorization"}
	}
	return []*corev3.HeaderValueOption{{
		Header:       &corev3.HeaderValue{Key: key, Value: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}}, remove, nil
}

// classify returns a request's class: a Kubernetes API target by its
// verb and resource (exec, attach, port-forward, proxy and RBAC are admin),
// any other HTTP target by method and path rules.
func classify(t *policies.Target, method, path string, headers map[string]string, rules []policies.HTTPRule) policies.OperationClass {
	if t.API == policies.APIKubernetes {
		class, _ := httpapi.ClassifyKubernetes(method, path, headers, rules)
		return class
	}
	return httpapi.Classify(method, path, headers, rules)
}

// decisionMetadata carries the decision to later filters (ext_proc reads
// it through its forwarding namespaces) and to Envoy's access log.
func decisionMetadata(p policies.Principal, target string, d policies.Decision, raw string) *structpb.Struct {
	groups := make([]any, len(p.Groups))
	for i, g := range p.Groups {
		groups[i] = g
	}
	masks := make([]any, len(d.Masks))
	for i, m := range d.Masks {
		masks[i] = m
	}
	md, _ := structpb.NewStruct(map[string]any{
		"target": target, "issuer": p.Issuer, "subject": p.Subject, "client": p.Client,
		"on_behalf_of": p.OnBehalfOf, "groups": groups, "decision": d.Outcome.String(),
		"reason": d.Reason, "class": d.Class.String(), "grant_id": d.GrantID, "masks": masks,
		"max_rows": float64(d.MaxRows), "max_bytes": float64(d.MaxBytes), "token_sha": TokenHash(raw),
	})
	return md
}

func bearer(h string) (string, bool) {
	const prefix = "bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	tok := strings.TrimSpace(h[len(prefix):])
	return tok, tok != ""
}

func unauthenticated(target, reason string) *authv3.CheckResponse {
	r := deny(http.StatusUnauthorized, Refusal{Error: "unauthenticated", Target: target, Reason: reason}, nil)
	r.GetDeniedResponse().Headers = append(r.GetDeniedResponse().Headers, &corev3.HeaderValueOption{
		Header: &corev3.HeaderValue{Key: "www-authenticate", Value: `Bearer realm="sluice", error="invalid_token"`},
	})
	return r
}

func auditDown(target string, md *structpb.Struct) *authv3.CheckResponse {
	return deny(http.StatusServiceUnavailable, Refusal{Error: "unavailable", Target: target, Reason: "the audit store is unavailable; sluice forwards nothing unaudited"}, md)
}

// deny builds a DeniedHttpResponse with a JSON body. The gRPC status is
// PERMISSION_DENIED (or UNAUTHENTICATED) so Envoy takes the Denied path and
// sends sluice's status and body, not its status_on_error.
func deny(code int, r Refusal, md *structpb.Struct) *authv3.CheckResponse {
	body, _ := json.Marshal(r)
	grpcCode := codes.PermissionDenied
	if code == http.StatusUnauthorized {
		grpcCode = codes.Unauthenticated
	}
	return &authv3.CheckResponse{
		Status:          &status.Status{Code: int32(grpcCode), Message: r.Reason},
		DynamicMetadata: md,
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(code)},
			Headers: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "content-type", Value: "application/json"},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
			Body: string(body),
		}},
	}
}
