package grants

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

// CreateRequest is the body of POST /v1/grants: operation classes or one
// statement on a target, for a duration ("30m"), with a reason.
type CreateRequest struct {
	Target    string   `json:"target"`
	Classes   []string `json:"classes,omitempty"`
	Statement string   `json:"statement,omitempty"`
	Duration  string   `json:"duration"`
	Reason    string   `json:"reason"`
}

// NoteRequest is the optional body of approve, deny and revoke.
type NoteRequest struct {
	Note string `json:"note,omitempty"`
}

// ListResponse is the body of GET /v1/grants.
type ListResponse struct {
	Grants []Grant `json:"grants"`
}

func (a *API) create(w http.ResponseWriter, r *http.Request, caller policies.Principal) error {
	var req CreateRequest
	if err := decodeBody(w, r, &req, false); err != nil {
		return err
	}
	in, err := a.grantFrom(a.opts.Config(), req, caller)
	if err != nil {
		return err
	}
	// The request is recorded before it exists: once created, approvers
	// are told of it (the webhook) and may approve it at once.
	in.ID = NewID()
	planned := in
	planned.State = StatePending
	ev := a.event(r.Context(), r, audit.KindGrantCreated, planned, policies.Principal{}, in.Reason)
	if err := a.recordFirst(r.Context(), ev, "the grant request was not opened"); err != nil {
		return err
	}
	g, err := a.opts.Store.Create(r.Context(), in)
	if err != nil {
		a.recordUnapplied(r.Context(), ev, err)
		return err
	}
	a.log.Info("grant requested", "grant_id", g.ID, "target", g.Target, "subject", g.Requester.Subject,
		"on_behalf_of", g.Requester.OnBehalfOf, "classes", g.Classes, "fingerprint", g.Fingerprint, "duration", g.Duration)
	w.Header().Set("Location", "/v1/grants/"+g.ID)
	writeJSON(w, http.StatusCreated, g)
	return nil
}

// grantFrom checks a request against the current config and makes it the
// Grant to store. Each refusal names what to change.
func (a *API) grantFrom(cfg *policies.Config, req CreateRequest, caller policies.Principal) (Grant, error) {
	bad := func(format string, args ...any) (Grant, error) {
		return Grant{}, errorf(http.StatusBadRequest, CodeInvalidRequest, format, args...)
	}
	if req.Target == "" {
		return bad("target is required")
	}
	t, ok := cfg.Target(req.Target)
	if !ok {
		return Grant{}, errorf(http.StatusNotFound, CodeUnknownTarget, "no target named %q in sluice's config", req.Target)
	}
	switch {
	case len(req.Classes) > 0 && req.Statement != "":
		return bad("ask for classes or for one statement, not both")
	case len(req.Classes) == 0 && strings.TrimSpace(req.Statement) == "":
		return bad("ask for classes (such as [\"write\"]) or for one statement")
	case strings.TrimSpace(req.Reason) == "":
		return bad("reason is required: approvers decide on it and the audit trail keeps it")
	case len(req.Reason) > maxTextLen:
		return bad("reason is %d bytes; at most %d", len(req.Reason), maxTextLen)
	case req.Duration == "":
		return bad("duration is required, such as \"30m\"")
	}
	d, err := time.ParseDuration(req.Duration)
	if err != nil || d <= 0 {
		return bad("duration %q: expected a positive duration such as \"30m\" or \"2h\"", req.Duration)
	}
	var classes Classes
	for _, name := range req.Classes {
		c, err := policies.ParseClass(name)
		if err != nil {
			return bad("classes: %v", err)
		}
		if !slices.Contains(classes, c) {
			classes = append(classes, c)
		}
	}

	matched := matchingPolicies(cfg, caller, t.Name)
	if len(matched) == 0 {
		return Grant{}, errorf(http.StatusForbidden, CodeDeniedByPolicy, "no policy on %s applies to %s, so no grant could help", t.Name, caller.Subject)
	}
	for _, c := range classes {
		hypothetical := []policies.Grant{{ID: "requested", Classes: []policies.OperationClass{c}}}
		dec := cfg.Decide(policies.Request{Principal: caller, Target: t.Name, Classes: []policies.OperationClass{c}}, hypothetical)
		if dec.Outcome == policies.Deny {
			return Grant{}, errorf(http.StatusForbidden, CodeDeniedByPolicy, "%s, and a grant cannot change that", dec.Reason)
		}
	}
	if limit, by := maxGrantDuration(cfg, matched); d > limit {
		e := errorf(http.StatusBadRequest, CodeDurationTooLong, "duration %s is longer than the maximum %s on %s (%s)", d, limit, t.Name, by)
		e.body.MaxDuration = limit.String()
		return Grant{}, e
	}

	g := Grant{Requester: IdentityOf(caller), Target: t.Name, Classes: classes, Duration: d, Reason: req.Reason}
	if req.Statement != "" {
		if a.opts.Fingerprint == nil {
			return Grant{}, errorf(http.StatusBadRequest, CodeStatementUnsupported, "statement grants need the SQL analyser, which this sluice does not have yet; ask for classes instead")
		}
		if t.Kind != policies.KindPostgres {
			return bad("statement grants are for postgres targets; %s is %s", t.Name, t.Kind)
		}
		fp, err := a.opts.Fingerprint(req.Statement)
		if err != nil {
			return bad("statement: %v", err)
		}
		g.Statement, g.Fingerprint = req.Statement, fp
	}
	return g, nil
}

// matchingPolicies returns the policies on target that apply to p. The
// decision itself says which policies matched, so the API and the gate
// can never disagree on it.
func matchingPolicies(cfg *policies.Config, p policies.Principal, target string) []*policies.Policy {
	names := cfg.Decide(policies.Request{Principal: p, Target: target, Classes: []policies.OperationClass{policies.ClassRead}}, nil).Policies
	var out []*policies.Policy
	for i := range cfg.Policies {
		pol := &cfg.Policies[i]
		if slices.Contains(names, pol.Name) && slices.Contains(pol.Targets, target) {
			out = append(out, pol)
		}
	}
	return out
}

// maxGrantDuration is the tightest of grants.max_duration and the
// max_grant_duration of the matching policies, and what set it.
func maxGrantDuration(cfg *policies.Config, matched []*policies.Policy) (time.Duration, string) {
	limit, by := cfg.Grants.MaxDuration, "grants.max_duration"
	if limit <= 0 {
		limit = policies.DefaultGrantMaxDuration
	}
	for _, p := range matched {
		if p.MaxGrantDuration > 0 && p.MaxGrantDuration < limit {
			limit, by = p.MaxGrantDuration, "max_grant_duration of policy "+p.Name
		}
	}
	return limit, by
}

// decodeBody reads one JSON object of at most MaxBodyBytes into v,
// refusing unknown fields and trailing data. An optional body may be
// empty.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if err = dec.Decode(&struct{}{}); errors.Is(err, io.EOF) {
			return nil
		} else if err == nil {
			err = errors.New("more than one JSON value")
		}
	} else if optional && errors.Is(err, io.EOF) {
		return nil
	}
	var (
		tooLarge  *http.MaxBytesError
		syntax    *json.SyntaxError
		wrongType *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &tooLarge):
		return errorf(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "the body is larger than %d bytes", MaxBodyBytes)
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "the body is empty; send a JSON object")
	case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "the body is not valid JSON: %v", err)
	case errors.As(err, &wrongType) && wrongType.Field == "":
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "the body must be a JSON object, not a JSON %s", wrongType.Value)
	case errors.As(err, &wrongType):
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "field %s: expected %s, got JSON %s", wrongType.Field, wrongType.Type, wrongType.Value)
	case strings.Contains(err.Error(), "unknown field"):
		return errorf(http.StatusBadRequest, CodeUnknownField, "%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return errorf(http.StatusBadRequest, CodeInvalidJSON, "the body is not one JSON object: %s", strings.TrimPrefix(err.Error(), "json: "))
}
