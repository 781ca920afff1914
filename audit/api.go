package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
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
// since and until take RFC 3339 times or a duration back from now ("15m").
// Only an authenticated principal in an auditor group may read.
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
			apiError(w, http.StatusBadRequest, "bad_request", err.Error())
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

// FilterFromQuery reads a Filter from GET /v1/audit's query parameters.
func FilterFromQuery(q map[string][]string, now time.Time) (Filter, error) {
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
		return f, fmt.Errorf("since: %w", err)
	}
	if f.Until, err = ParseTime(get("until"), now); err != nil {
		return f, fmt.Errorf("until: %w", err)
	}
	if c := get("class"); c != "" {
		if f.Class, err = policies.ParseClass(c); err != nil {
			return f, fmt.Errorf("class: %w", err)
		}
	}
	if l := get("limit"); l != "" {
		if f.Limit, err = strconv.Atoi(l); err != nil || f.Limit < 1 || f.Limit > MaxQueryLimit {
			return f, fmt.Errorf("limit: expected 1 to %d, got %q", MaxQueryLimit, l)
		}
	}
	if f.Cursor != "" {
		if _, err := parseCursor(f.Cursor); err != nil {
			return f, err
		}
	}
	return f, nil
}

// ParseTime reads a query time: RFC 3339 (with or without seconds or a
// zone; no zone means UTC), "15:04" for today in UTC, or a duration back
// from now ("90m", "2h"). "" is the zero time (no bound).
func ParseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"} {
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
