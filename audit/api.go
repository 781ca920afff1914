package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Querier is the part of a Store the query API needs.
type Querier interface {
	Query(ctx context.Context, f Filter) (Page, error)
}

// QueryAPIOptions configures NewQueryAPI.
type QueryAPIOptions struct {
	Store Querier
	// Authenticate verifies the request's bearer token (serve passes its
	// authz verifier) and returns the caller.
	Authenticate func(r *http.Request) (policies.Principal, error)
	// AuditorGroups returns auditors.groups of the config in force; it is
	// called per request, so a reload applies at once.
	AuditorGroups func() []string
	// Record, when set, receives an audit.query event for every
	// authenticated request, allowed or refused, before it is answered: who
	// read the audit trail is part of the trail. A request whose event
	// cannot be recorded is refused (503).
	Record Sink
	Log    *slog.Logger
	Now    func() time.Time
}

// NewQueryAPI serves GET /v1/audit: the events matching the query
// parameters principal, target, since, until, kind, class, decision,
// grant_id, q (text), newest first, limit per page, continued with cursor.
// since and until take the times ParseTime reads. An unknown or repeated
// parameter, or a value that is not valid, is answered 400 naming the
// parameter (see FilterFromQuery). Events that cannot be decoded are
// listed under "skipped" (Page.Skipped). Only an authenticated principal
// in an auditor group may read.
func NewQueryAPI(o QueryAPIOptions) http.Handler {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/audit", func(w http.ResponseWriter, r *http.Request) {
		if o.Authenticate == nil || o.AuditorGroups == nil {
			apiError(w, http.StatusServiceUnavailable, "unavailable", "the audit API is not configured")
			return
		}
		p, err := o.Authenticate(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sluice"`)
			apiError(w, http.StatusUnauthorized, "unauthenticated", err.Error())
			return
		}
		groups := o.AuditorGroups()
		if !slices.ContainsFunc(p.Groups, func(g string) bool { return slices.Contains(groups, g) }) {
			reason := fmt.Sprintf("%s is not in an auditor group (auditors.groups)", p.Subject)
			if o.record(r, p, "deny", reason) {
				apiError(w, http.StatusForbidden, "forbidden", reason)
			} else {
				apiError(w, http.StatusServiceUnavailable, "unavailable", "the audit store could not record this request")
			}
			return
		}
		f, err := FilterFromQuery(r.URL.Query(), o.Now())
		if err != nil {
			// A refused query is a read attempt like any other: recorded.
			if o.record(r, p, "deny", "invalid query: "+err.Error()) {
				apiError(w, http.StatusBadRequest, "bad_request", err.Error())
			} else {
				apiError(w, http.StatusServiceUnavailable, "unavailable", "the audit store could not record this request")
			}
			return
		}
		if !o.record(r, p, "allow", "") {
			apiError(w, http.StatusServiceUnavailable, "unavailable", "the audit store could not record this request")
			return
		}
		page, err := o.Store.Query(r.Context(), f)
		if err != nil {
			o.Log.Error("audit query failed", "err", err)
			apiError(w, http.StatusServiceUnavailable, "unavailable", "the audit store could not be read")
			return
		}
		if page.Records == nil {
			page.Records = []Record{}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(page)
	})
	return mux
}

// record appends the audit.query event of a request; false if it could
// not be recorded. Without a Record sink there is nothing to do.
func (o QueryAPIOptions) record(r *http.Request, p policies.Principal, decision, reason string) bool {
	if o.Record == nil {
		return true
	}
	req := r.Method + " " + r.URL.Path
	if r.URL.RawQuery != "" {
		req += "?" + r.URL.RawQuery
	}
	err := o.Record.Append(r.Context(), Event{Kind: KindAuditQuery, Principal: p, Source: r.RemoteAddr,
		Request: req, Decision: decision, Reason: reason})
	if err != nil {
		o.Log.Error("audit query not recorded; refused", "err", err)
		return false
	}
	return true
}

func apiError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "reason": msg})
}

// Kinds lists the event kinds this sluice writes and queries by.
var Kinds = []Kind{KindSessionStart, KindSessionEnd, KindAuthn, KindStatement, KindStatementResult, KindHTTPRequest,
	KindHTTPResponse, KindAuthzDecision, KindGrantCreated, KindGrantApproved, KindGrantDenied, KindGrantRevoked,
	KindGrantExpired, KindConfigReload, KindAuditQuery}

// Decisions lists the decision values events carry: a gate's outcome
// (allow, approval_required, deny) or, for grant events, the grant's
// state.
var Decisions = []string{"allow", "approval_required", "deny", "pending", "approved", "denied", "revoked", "expired"}

// queryParams are the parameters GET /v1/audit reads; any other is refused.
var queryParams = []string{"principal", "target", "since", "until", "kind", "class", "decision", "grant_id", "q", "limit", "cursor"}

// FilterFromQuery reads a Filter from GET /v1/audit's query parameters.
// It refuses a parameter it does not know or given twice, a kind, class
// or decision that is not one sluice writes, and what Filter.Validate
// refuses; every error is a *ParamError.
func FilterFromQuery(q map[string][]string, now time.Time) (Filter, error) {
	names := make([]string, 0, len(q))
	for k := range q {
		names = append(names, k)
	}
	slices.Sort(names) // name the same parameter whatever the map's order
	for _, k := range names {
		if !slices.Contains(queryParams, k) {
			return Filter{}, &ParamError{Param: k, Err: fmt.Errorf("unknown parameter (expected one of %s)", strings.Join(queryParams, ", "))}
		}
		if len(q[k]) > 1 {
			return Filter{}, &ParamError{Param: k, Err: errors.New("given more than once")}
		}
	}
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	f := Filter{Principal: get("principal"), Target: get("target"), Kind: Kind(get("kind")), Decision: get("decision"),
		GrantID: get("grant_id"), Text: get("q"), Cursor: get("cursor")}
	var err error
	if f.Since, err = ParseTime(get("since"), now); err != nil {
		return f, &ParamError{Param: "since", Err: err}
	}
	if f.Until, err = ParseTime(get("until"), now); err != nil {
		return f, &ParamError{Param: "until", Err: err}
	}
	if f.Kind != "" && !slices.Contains(Kinds, f.Kind) {
		return f, &ParamError{Param: "kind", Err: fmt.Errorf("unknown kind %q (expected one of %s)", f.Kind, joinKinds())}
	}
	if f.Decision != "" && !slices.Contains(Decisions, f.Decision) {
		return f, &ParamError{Param: "decision", Err: fmt.Errorf("unknown decision %q (expected one of %s)", f.Decision, strings.Join(Decisions, ", "))}
	}
	if c := get("class"); c != "" {
		if f.Class, err = policies.ParseClass(c); err != nil {
			return f, &ParamError{Param: "class", Err: err}
		}
	}
	if l := get("limit"); l != "" {
		if f.Limit, err = strconv.Atoi(l); err != nil || f.Limit < 1 || f.Limit > MaxQueryLimit {
			return f, &ParamError{Param: "limit", Err: fmt.Errorf("expected 1 to %d, got %q", MaxQueryLimit, l)}
		}
	}
	if f.Cursor != "" {
		if _, err := parseCursor(f.Cursor); err != nil {
			return f, err
		}
	}
	return f, f.Validate()
}

func joinKinds() string {
	s := make([]string, len(Kinds))
	for i, k := range Kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// timeLayouts are the RFC 3339 forms ParseTime reads: with or without
// seconds (and fractions of them), with a zone (Z or ±hh:mm) or without
// (UTC), with "T" or a space between date and time, or a date alone.
var timeLayouts = []string{
	time.RFC3339Nano, "2006-01-02T15:04Z07:00", "2006-01-02T15:04:05", "2006-01-02T15:04",
	"2006-01-02 15:04:05Z07:00", "2006-01-02 15:04Z07:00", "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02",
}

// ParseTime reads a query time: RFC 3339 with or without seconds or a
// zone (2025-01-31T02:00:00Z, 2025-01-31T02:00+02:00, "2025-01-31 02:00";
// no zone means UTC; a date alone is its midnight, UTC), "15:04" for
// today in UTC, or a duration back from now ("90m", "2h"). "" is the zero
// time (no bound). A time outside MinQueryTime–MaxQueryTime is refused:
// the store could not compare it.
func ParseTime(s string, now time.Time) (time.Time, error) {
	t, err := parseTime(s, now)
	if err != nil || s == "" {
		return t, err
	}
	if err := checkRange(t); err != nil {
		return time.Time{}, err
	}
	return t, nil
}

func parseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if t, err := time.Parse("15:04", s); err == nil {
		y, m, d := now.UTC().Date()
		return time.Date(y, m, d, t.Hour(), t.Minute(), 0, 0, time.UTC), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("expected an RFC 3339 time (2025-01-31T02:00:00Z), HH:MM (today, UTC) or a duration ago (15m), got %q", s)
}
