package grants

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

// listParams are the query parameters GET /v1/grants takes.
var listParams = []string{"target", "subject", "state", "limit"}

func (a *API) list(w http.ResponseWriter, r *http.Request, caller policies.Principal) error {
	q := r.URL.Query()
	for k := range q {
		if !slices.Contains(listParams, k) {
			return errorf(http.StatusBadRequest, CodeInvalidRequest, "unknown query parameter %q (expected %s)", k, strings.Join(listParams, ", "))
		}
	}
	f := Filter{Target: q.Get("target"), Subject: q.Get("subject")}
	if s := q.Get("state"); s != "" {
		st, err := ParseState(s)
		if err != nil {
			return errorf(http.StatusBadRequest, CodeInvalidRequest, "state: %v", err)
		}
		f.State = st
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxListLimit {
			return errorf(http.StatusBadRequest, CodeInvalidRequest, "limit %q: expected a number from 1 to %d", s, MaxListLimit)
		}
		f.Limit = n
	}
	approver := isApprover(a.opts.Config(), caller)
	if !approver {
		if f.Subject != "" && f.Subject != caller.Subject {
			return errorf(http.StatusForbidden, CodeForbidden, "only approvers may list other principals' grants; leave subject out to list yours")
		}
		f.Subject = caller.Subject
	}
	found, err := a.opts.Store.List(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]Grant, 0, len(found))
	for _, g := range found {
		// The store filters by subject alone; the same subject from
		// another issuer is someone else.
		if approver || g.Requester.Issuer == caller.Issuer {
			out = append(out, g)
		}
	}
	writeJSON(w, http.StatusOK, ListResponse{Grants: out})
	return nil
}

func (a *API) get(w http.ResponseWriter, r *http.Request, caller policies.Principal) error {
	g, err := a.opts.Store.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	if !isApprover(a.opts.Config(), caller) && !isOwner(g, caller) {
		return errorf(http.StatusForbidden, CodeForbidden, "grant %s is not yours; only approvers see other principals' grants", g.ID)
	}
	writeJSON(w, http.StatusOK, g)
	return nil
}

// decide approves or denies a pending request: approvers only, and never
// their own (the store refuses that, whoever asks).
func (a *API) decide(to State) handlerFunc {
	kind := audit.KindGrantApproved
	if to == StateDenied {
		kind = audit.KindGrantDenied
	}
	return func(w http.ResponseWriter, r *http.Request, caller policies.Principal) error {
		id := r.PathValue("id")
		note, err := readNote(w, r)
		if err != nil {
			return err
		}
		cfg := a.opts.Config()
		if !isApprover(cfg, caller) {
			if len(cfg.Approvers.Groups) == 0 {
				return errorf(http.StatusForbidden, CodeForbidden, "no approver groups are configured (approvers.groups), so no one may %s grants", verb(to))
			}
			return errorf(http.StatusForbidden, CodeForbidden, "only members of %s may %s grants, and %s is not one",
				strings.Join(cfg.Approvers.Groups, " or "), verb(to), caller.Subject)
		}
		g, err := a.opts.Store.Get(r.Context(), id)
		if err != nil {
			return err
		}
		store := a.opts.Store.Deny
		if to == StateApproved {
			store = a.opts.Store.Approve
		}
		g, err = a.transition(r, g, to, kind, caller, note, store)
		if err != nil {
			return err
		}
		a.log.Info("grant "+to.String(), "grant_id", g.ID, "target", g.Target, "subject", g.Requester.Subject,
			"by", caller.Subject, "expires_at", g.ExpiresAt)
		writeJSON(w, http.StatusOK, g)
		return nil
	}
}

// transition moves g into to, audit first: it works out the transition
// (the same apply the store runs), appends its event, and only then asks
// the store to make it, at the same instant. If the append fails nothing
// changes; if the store then refuses (the grant changed meanwhile, or the
// store is down) the event is followed by one saying it was not applied.
func (a *API) transition(r *http.Request, g Grant, to State, kind audit.Kind, caller policies.Principal, note string,
	store func(ctx context.Context, id string, by policies.Principal, note string, now time.Time) (Grant, error),
) (Grant, error) {
	ctx := r.Context()
	now := a.opts.Now()
	next, _, err := apply(g, to, caller, note, now)
	if err != nil {
		// Refused as it stands (self-approval, not pending, expired): the
		// store is not asked, so nothing can change unrecorded.
		return Grant{}, a.transitionError(ctx, g.ID, err)
	}
	ev := a.event(ctx, r, kind, next, caller, note)
	if err := a.recordFirst(ctx, ev, fmt.Sprintf("grant %s was not %s", g.ID, to)); err != nil {
		return Grant{}, err
	}
	out, err := store(ctx, g.ID, caller, note, now)
	if err != nil {
		a.recordUnapplied(ctx, ev, err)
		return Grant{}, a.transitionError(ctx, g.ID, err)
	}
	return out, nil
}

// revoke ends an approved grant: approvers, and the requester (or the
// human it acts for), may always give access back.
func (a *API) revoke(w http.ResponseWriter, r *http.Request, caller policies.Principal) error {
	id := r.PathValue("id")
	note, err := readNote(w, r)
	if err != nil {
		return err
	}
	g, err := a.opts.Store.Get(r.Context(), id)
	if err != nil {
		return err
	}
	if !isApprover(a.opts.Config(), caller) && !isOwner(g, caller) {
		return errorf(http.StatusForbidden, CodeForbidden, "only approvers and the requester may revoke grant %s", id)
	}
	g, err = a.transition(r, g, StateRevoked, audit.KindGrantRevoked, caller, note, a.opts.Store.Revoke)
	if err != nil {
		return err
	}
	a.log.Info("grant revoked", "grant_id", g.ID, "target", g.Target, "subject", g.Requester.Subject, "by", caller.Subject)
	writeJSON(w, http.StatusOK, g)
	return nil
}

func readNote(w http.ResponseWriter, r *http.Request) (string, error) {
	var req NoteRequest
	if err := decodeBody(w, r, &req, true); err != nil {
		return "", err
	}
	if len(req.Note) > maxTextLen {
		return "", errorf(http.StatusBadRequest, CodeInvalidRequest, "note is %d bytes; at most %d", len(req.Note), maxTextLen)
	}
	return req.Note, nil
}

// transitionError translates a refused transition; a conflict carries the
// grant's current state, so the caller need not ask.
func (a *API) transitionError(ctx context.Context, id string, err error) error {
	e := a.asAPIError(err)
	if e.status == http.StatusConflict && e.body.State == "" {
		if g, gerr := a.opts.Store.Get(ctx, id); gerr == nil {
			e.body.State = g.State.String()
		}
	}
	return e
}
