package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/sluicehq/sluice/authz/grants"
)

// maxReasonColumn shortens reasons in tables; "get" shows them whole.
const maxReasonColumn = 40

func printGrantsJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printGrantTable lists grants, one a line.
func printGrantTable(w io.Writer, gs []grants.Grant) error {
	if len(gs) == 0 {
		_, err := fmt.Fprintln(w, "No grants.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tTARGET\tREQUESTER\tACCESS\tDURATION\tCREATED\tUNTIL\tREASON")
	for _, g := range gs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", safeText(g.ID), g.State, safeText(g.Target), grantRequester(g), grantAccess(g),
			g.Duration, grantTime(g.CreatedAt), grantUntil(g), shortText(safeText(g.Reason), maxReasonColumn))
	}
	return tw.Flush()
}

// printGrant shows one grant, field by field.
func printGrant(w io.Writer, g grants.Grant) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" && v != "-" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("ID", safeText(g.ID))
	row("State", g.State.String())
	row("Target", safeText(g.Target))
	row("Requester", grantRequester(g))
	row("Client", safeText(g.Requester.Client))
	row("Access", grantAccess(g))
	row("Statement", safeText(g.Statement))
	row("Duration", g.Duration.String())
	row("Reason", safeText(g.Reason))
	row("Created", grantTime(g.CreatedAt))
	if g.State == grants.StatePending {
		row("Decide before", grantTime(g.PendingExpiresAt))
	}
	if !g.DecidedAt.IsZero() {
		row("Decided", grantTime(g.DecidedAt)+" by "+safeText(g.DecidedBy.Subject))
		row("Note", safeText(g.DecisionNote))
	}
	row("Expires", grantTime(g.ExpiresAt))
	if !g.RevokedAt.IsZero() {
		row("Revoked", grantTime(g.RevokedAt)+" by "+safeText(g.RevokedBy.Subject))
		row("Revoke note", safeText(g.RevokeNote))
	}
	return tw.Flush()
}

func grantRequester(g grants.Grant) string {
	s := safeText(g.Requester.Subject)
	if g.Requester.OnBehalfOf != "" {
		s += " (for " + safeText(g.Requester.OnBehalfOf) + ")"
	}
	return s
}

func grantAccess(g grants.Grant) string {
	if g.Fingerprint != "" {
		return "one statement"
	}
	names := make([]string, len(g.Classes))
	for i, c := range g.Classes {
		names[i] = c.String()
	}
	return strings.Join(names, ",")
}

// grantUntil is when the grant's current state ends: the decision deadline of
// a request, the expiry of an approved grant.
func grantUntil(g grants.Grant) string {
	switch g.State {
	case grants.StatePending:
		return grantTime(g.PendingExpiresAt)
	case grants.StateApproved:
		return grantTime(g.ExpiresAt)
	}
	return "-"
}

func grantTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// safeText makes text that other people wrote (a reason, a subject) safe for
// a terminal: control characters, escape sequences among them, become
// spaces, so a reason cannot rewrite the screen or break the table.
func safeText(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return ' '
		}
		return r
	}, s)
}

func shortText(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
