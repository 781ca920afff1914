package audit

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Query limits.
const (
	DefaultQueryLimit = 100
	MaxQueryLimit     = 1000
)

// Filter selects events. Zero fields match everything; set fields must
// all match.
type Filter struct {
	// Principal matches the subject, the client or the human acted for.
	Principal string
	Target    string
	// Since is inclusive, Until exclusive.
	Since, Until time.Time
	Kind         Kind
	Class        policies.OperationClass
	Decision     string
	GrantID      string
	// Text matches, case-insensitively, a substring of the statement or
	// request, or of the reason.
	Text string
	// Limit is the page size (DefaultQueryLimit when 0, at most
	// MaxQueryLimit).
	Limit int
	// Cursor continues after the last event of a previous page
	// (Page.Next).
	Cursor string
}

// Page is one page of events, newest first.
type Page struct {
	Records []Record `json:"events"`
	// Next is the cursor of the following page; "" on the last page.
	Next string `json:"next_cursor,omitempty"`
}

type cursor struct {
	timeNS int64
	writer string
	seq    int64
}

func (c cursor) String() string {
	return base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("%d:%s:%d", c.timeNS, c.writer, c.seq)))
}

func parseCursor(s string) (cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		parts := strings.SplitN(string(b), ":", 3)
		if len(parts) == 3 {
			t, err1 := strconv.ParseInt(parts[0], 10, 64)
			n, err2 := strconv.ParseInt(parts[2], 10, 64)
			if err1 == nil && err2 == nil {
				return cursor{t, parts[1], n}, nil
			}
		}
	}
	return cursor{}, fmt.Errorf("invalid cursor %q", s)
}

// likeEscape makes s a literal inside a LIKE pattern with ESCAPE '\'.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

func (s *store) Query(ctx context.Context, f Filter) (Page, error) {
	limit := f.Limit
	switch {
	case limit <= 0:
		limit = DefaultQueryLimit
	case limit > MaxQueryLimit:
		limit = MaxQueryLimit
	}
	var where []string
	var args []any
	add := func(cond string, a ...any) { where = append(where, cond); args = append(args, a...) }
	if f.Principal != "" {
		add("(subject = ? OR client = ? OR on_behalf_of = ?)", f.Principal, f.Principal, f.Principal)
	}
	if f.Target != "" {
		add("target = ?", f.Target)
	}
	if !f.Since.IsZero() {
		add("time_ns >= ?", f.Since.UnixNano())
	}
	if !f.Until.IsZero() {
		add("time_ns < ?", f.Until.UnixNano())
	}
	if f.Kind != "" {
		add("kind = ?", string(f.Kind))
	}
	if f.Class != 0 {
		add("classes LIKE ?", "%,"+f.Class.String()+",%")
	}
	if f.Decision != "" {
		add("decision = ?", f.Decision)
	}
	if f.GrantID != "" {
		add("grant_id = ?", f.GrantID)
	}
	if f.Text != "" {
		like := s.db.ilike()
		pat := "%" + likeEscape(f.Text) + "%"
		add("(request "+like+" ? ESCAPE '\\' OR reason "+like+" ? ESCAPE '\\')", pat, pat)
	}
	if f.Cursor != "" {
		c, err := parseCursor(f.Cursor)
		if err != nil {
			return Page{}, err
		}
		add("(time_ns, writer, seq) < (?, ?, ?)", c.timeNS, c.writer, c.seq)
	}
	q := "SELECT writer, seq, time_ns, hash, body FROM audit_events"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY time_ns DESC, writer DESC, seq DESC LIMIT ?"
	args = append(args, limit+1)
	rs, err := s.db.query(ctx, q, args...)
	if err != nil {
		return Page{}, fmt.Errorf("audit query: %w", err)
	}
	defer rs.Close()
	var page Page
	var last cursor
	for rs.Next() {
		var c cursor
		var hash []byte
		var body string
		if err := rs.Scan(&c.writer, &c.seq, &c.timeNS, &hash, &body); err != nil {
			return Page{}, err
		}
		if len(page.Records) == limit {
			page.Next = last.String()
			break
		}
		r, err := storedEvent{seq: c.seq, hash: hash, body: body}.record()
		if err != nil {
			return Page{}, fmt.Errorf("audit query: chain %s seq %d: %w (run sluice audit verify)", c.writer, c.seq, err)
		}
		page.Records = append(page.Records, r)
		last = c
	}
	return page, rs.Err()
}
