package grants

import (
	"context"
	_ "embed"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

// OpenAPI is the API's OpenAPI 3.1 document, served at GET /v1/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

// API limits, with why.
const (
	// MaxBodyBytes bounds a request body: a grant request is a few hundred
	// bytes; a statement is the only long field.
	MaxBodyBytes = 64 << 10
	// maxTextLen bounds a reason or a note: enough for a paragraph, short
	// enough for a chat message and an audit row.
	maxTextLen = 2000
)

// ErrAuthUnavailable is what an Authenticate func wraps when it could not
// decide for a reason that is not the caller's (the IdP is down); the API
// answers 503 instead of 401.
var ErrAuthUnavailable = errors.New("authentication is unavailable")

// APIOptions configures NewAPI. Store, Authenticate, Config and Audit are
// required.
type APIOptions struct {
	// Store keeps the grants. Wrap it with Notifying so that new requests
	// announce themselves.
	Store Store
	// Authenticate verifies the caller (an OIDC bearer token; see
	// BearerToken). Its error's message is shown to the caller, so it
	// must never contain the token. Wrap ErrAuthUnavailable for a 503.
	Authenticate func(r *http.Request) (policies.Principal, error)
	// Config returns the current config: targets, approver groups and
	// duration limits. It changes on hot reload.
	Config func() *policies.Config
	// Audit records every transition, before the store makes it. A
	// transition whose record fails is not made, and is answered 503.
	Audit audit.Sink
	// Fingerprint takes a statement's fingerprint for one-statement
	// grants. Without it, statement requests are refused.
	Fingerprint func(statement string) (string, error)
	// Now is the clock for transitions (default time.Now).
	Now func() time.Time
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// API is the grants HTTP API on the api address (design.md section 8):
// people and agents request grants, approvers decide, anyone with the
// right revokes. The routes are in routes; openapi.yaml describes them.
//
// Every caller is authenticated. Approve and deny need membership of
// approvers.groups, and the store refuses a decision on one's own
// request. Revoke is for approvers and the requester. Other callers see
// only their own requests. Every transition is appended to the audit sink
// before the store makes it; one the store then refuses is recorded as not
// applied.
type API struct {
	opts APIOptions
	log  *slog.Logger
	mux  *http.ServeMux
}

// NewAPI returns the API. It panics on a missing required option: that
// is a wiring bug, not a runtime condition.
func NewAPI(opts APIOptions) *API {
	if opts.Store == nil || opts.Authenticate == nil || opts.Config == nil || opts.Audit == nil {
		panic("grants.NewAPI: Store, Authenticate, Config and Audit are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	a := &API{opts: opts, log: opts.Logger}
	a.mux = http.NewServeMux()
	allowed := map[string][]string{}
	var paths []string
	for _, rt := range a.routes() {
		a.mux.HandleFunc(rt.method+" "+rt.path, rt.handler)
		if _, ok := allowed[rt.path]; !ok {
			paths = append(paths, rt.path)
		}
		allowed[rt.path] = append(allowed[rt.path], rt.method)
	}
	// The mux's own 404 and 405 are text; these answer in JSON.
	for _, p := range paths {
		allow := strings.Join(allowed[p], ", ")
		a.mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, errorf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "%s is not allowed on %s (allowed: %s)", r.Method, p, allow))
		})
	}
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorf(http.StatusNotFound, CodeNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return a
}

// Handler serves the API's routes. Mount it at /v1/grants, /v1/grants/
// and /v1/openapi.yaml.
func (a *API) Handler() http.Handler { return a.mux }

// route is one endpoint; the OpenAPI test checks openapi.yaml against
// this list.
type route struct {
	method, path string
	handler      http.HandlerFunc
}

func (a *API) routes() []route {
	return []route{
		{"POST", "/v1/grants", a.authed(a.create)},
		{"GET", "/v1/grants", a.authed(a.list)},
		{"GET", "/v1/grants/{id}", a.authed(a.get)},
		{"POST", "/v1/grants/{id}/approve", a.authed(a.decide(StateApproved))},
		{"POST", "/v1/grants/{id}/deny", a.authed(a.decide(StateDenied))},
		{"POST", "/v1/grants/{id}/revoke", a.authed(a.revoke)},
		{"GET", "/v1/openapi.yaml", a.openapi},
	}
}

func (a *API) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(OpenAPI)
}

// handlerFunc is an endpoint after authentication; an error it returns
// is written as the JSON error body (an *apiError keeps its status).
type handlerFunc func(w http.ResponseWriter, r *http.Request, caller policies.Principal) error

// authed authenticates the caller, then runs h and writes its error.
func (a *API) authed(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		caller, err := a.opts.Authenticate(r)
		switch {
		case errors.Is(err, ErrAuthUnavailable):
			a.log.Warn("grants API: cannot authenticate", "err", err)
			writeError(w, errorf(http.StatusServiceUnavailable, CodeUnavailable, "%v", err))
			return
		case err != nil:
			a.log.Info("grants API: caller refused", "err", err, "method", r.Method, "path", r.URL.Path)
			challenge := `Bearer realm="sluice"`
			if r.Header.Get("Authorization") != "" {
				challenge += `, error="invalid_token"`
			}
			w.Header().Set("WWW-Authenticate", challenge)
			writeError(w, errorf(http.StatusUnauthorized, CodeUnauthenticated, "%v", err))
			return
		case caller.Issuer == "" || caller.Subject == "":
			a.log.Error("grants API: Authenticate returned a principal without issuer or subject")
			writeError(w, errorf(http.StatusUnauthorized, CodeUnauthenticated, "the token names no subject"))
			return
		}
		if err := h(w, r, caller); err != nil {
			writeError(w, a.asAPIError(err))
		}
	}
}

// BearerToken returns the token of an "Authorization: Bearer" header, for
// an Authenticate func.
func BearerToken(r *http.Request) (string, bool) {
	const prefix = "bearer "
	h := r.Header.Get("Authorization")
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	tok := strings.TrimSpace(h[len(prefix):])
	return tok, tok != ""
}

// isApprover reports whether p is in one of approvers.groups.
func isApprover(cfg *policies.Config, p policies.Principal) bool {
	return slices.ContainsFunc(cfg.Approvers.Groups, func(g string) bool { return slices.Contains(p.Groups, g) })
}

// isOwner reports whether p requested g, or is the human the requester
// acts for (same issuer). Unlike the store's self-approval check, which
// refuses on any doubt, this grants rights, so it insists on the issuer.
func isOwner(g Grant, p policies.Principal) bool {
	if p.Issuer != g.Requester.Issuer {
		return false
	}
	return p.Subject == g.Requester.Subject || (g.Requester.OnBehalfOf != "" && p.Subject == g.Requester.OnBehalfOf)
}

// event is the audit event for a transition of g by by (the zero
// Principal for a request, which the requester makes), g being the grant
// as the transition leaves it.
func (a *API) event(ctx context.Context, r *http.Request, kind audit.Kind, g Grant, by policies.Principal, note string) audit.Event {
	ev := audit.Event{
		Time:      a.opts.Now().UTC(),
		Kind:      kind,
		Principal: g.Requester.Principal(),
		Target:    g.Target,
		Source:    r.RemoteAddr,
		Request:   g.Statement,
		Classes:   slices.Clone([]policies.OperationClass(g.Classes)),
		Decision:  g.State.String(),
		Reason:    note,
		GrantID:   g.ID,
	}
	if by.Subject != "" && !(by.Issuer == g.Requester.Issuer && by.Subject == g.Requester.Subject) {
		ev.Actor = by.Subject
	}
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		ev.TraceID = sc.TraceID().String()
	}
	return ev
}

// recordFirst appends the event of a transition that has not happened
// yet. Audit first: once a grant is approved, a statement waiting for it
// is woken at once (Redis pub/sub) and runs, and once a request exists the
// approvers are told; neither can be rolled back after a failed append. So
// a transition whose record fails is not made, and the caller is told so.
func (a *API) recordFirst(ctx context.Context, ev audit.Event, what string) error {
	// The API's requests have no deadline of their own: an audit store that
	// hangs must not hold the caller (and the grant) indefinitely.
	ctx, cancel := context.WithTimeout(ctx, unappliedRecordTimeout)
	defer cancel()
	if err := a.opts.Audit.Append(ctx, ev); err != nil {
		a.log.Error("AUDIT RECORD FAILED; the grant transition was not made",
			"kind", string(ev.Kind), "grant_id", ev.GrantID, "target", ev.Target, "subject", ev.Principal.Subject, "actor", ev.Actor, "err", err)
		return errorf(http.StatusServiceUnavailable, CodeAuditFailed,
			"%s: its audit record could not be written (%v); nothing changed, try again", what, err)
	}
	return nil
}

// unappliedRecordTimeout bounds each of the API's audit appends: the
// record that must precede a transition, and the best-effort record of a
// transition the store refused after its event was appended.
const unappliedRecordTimeout = 5 * time.Second

// recordUnapplied notes, best effort, that the transition ev recorded did
// not take effect (err says why), so the trail does not claim a change
// that never happened. Failing to record it changes nothing in the store,
// so it is logged, not returned.
func (a *API) recordUnapplied(ctx context.Context, ev audit.Event, err error) {
	ev.Time = a.opts.Now().UTC()
	ev.Decision = ""
	ev.Error = "not applied: " + err.Error()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unappliedRecordTimeout)
	defer cancel()
	if aerr := a.opts.Audit.Append(ctx, ev); aerr != nil {
		a.log.Error("AUDIT RECORD FAILED for a grant transition that was recorded but not made",
			"kind", string(ev.Kind), "grant_id", ev.GrantID, "err", aerr, "transition_err", err)
	}
}
