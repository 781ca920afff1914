package audit

import (
	"context"
	"encoding/base64"
	"fmt"
	"math"
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
	// Since is inclusive, Until exclusive; each within MinQueryTime to
	// MaxQueryTime, and Since before Until when both are set (Validate).
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
	// Skipped names the stored events of this page that could not be
	// decoded (a tampered body, or a schema version or value from a newer
	// sluice): they are left out of Records, instead of failing the whole
	// page, and still count towards the page's limit, so a page may hold
	// fewer records than the limit and still have a Next. `sluice audit
	// verify` says what is wrong with them.
	Skipped []SkippedRecord `json:"skipped,omitempty"`
	// Next is the cursor of the following page; "" on the last page.
	Next string `json:"next_cursor,omitempty"`
}

// SkippedRecord is a stored event Query could not decode.
type SkippedRecord struct {
	Writer string `json:"writer"`
	Seq    int64  `json:"seq"`
	Error  string `json:"error"`
}

// Times a query can name: the store keeps nanoseconds since 1970 in 64
// bits, which reach from 1677-09-21 to 2262-04-11.
var (
	MinQueryTime = time.Unix(0, math.MinInt64).UTC()
	MaxQueryTime = time.Unix(0, math.MaxInt64).UTC()
)

// MaxQueryText bounds Filter.Text: SQLite refuses a LIKE pattern over
// 50,000 bytes, and escaping can double the text.
const MaxQueryText = 10000

// checkTime fails for a time the store cannot compare with (see
// MinQueryTime); the zero time means no bound.
func checkTime(t time.Time) error {
	if t.IsZero() {
		return nil
	}
	return checkRange(t)
}

// checkRange fails for a time outside MinQueryTime–MaxQueryTime, the
// zero time included.
func checkRange(t time.Time) error {
	if !t.Before(MinQueryTime) && !t.After(MaxQueryTime) {
		return nil
	}
	return fmt.Errorf("%s is outside the times the store can represent (%s to %s)",
		t.Format(time.RFC3339), MinQueryTime.Format(time.RFC3339), MaxQueryTime.Format(time.RFC3339))
}

// Validate checks what Query would otherwise answer wrongly: text that is
// not UTF-8 or holds NUL (see columnText), a q over MaxQueryText, times
// out of the store's range, and a Since not before Until. The error names
// the field as the query parameter (q, since, until…).
func (f Filter) Validate() error {
	for _, p := range []struct{ name, v string }{{"principal", f.Principal}, {"target", f.Target}, {"kind", string(f.Kind)},
		{"decision", f.Decision}, {"grant_id", f.GrantID}, {"q", f.Text}} {
		if err := validText(p.v); err != nil {
			return &ParamError{Param: p.name, Err: err}
		}
	}
	if len(f.Text) > MaxQueryText {
		return &ParamError{Param: "q", Err: fmt.Errorf("is %d bytes; at most %d", len(f.Text), MaxQueryText)}
	}
	if err := checkTime(f.Since); err != nil {
		return &ParamError{Param: "since", Err: err}
	}
	if err := checkTime(f.Until); err != nil {
		return &ParamError{Param: "until", Err: err}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return &ParamError{Param: "until", Err: fmt.Errorf("%s is not after since (%s): the range is empty",
			f.Until.UTC().Format(time.RFC3339Nano), f.Since.UTC().Format(time.RFC3339Nano))}
	}
	return nil
}

// ParamError is a query parameter (or Filter field) that is not valid.
type ParamError struct {
	Param string // as GET /v1/audit names it: since, until, limit…
	Err   error
}

func (e *ParamError) Error() string { return e.Param + ": " + e.Err.Error() }
func (e *ParamError) Unwrap() error { return e.Err }

// cursor is the position of the last event of a page. Its text is
// "time_ns:writer:seq" in base64: the writer id may hold colons, so the
// seq is what follows the last one.
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
		ts, rest, ok1 := strings.Cut(string(b), ":")
		i := strings.LastIndexByte(rest, ':')
		if ok1 && i >= 0 {
			t, err1 := strconv.ParseInt(ts, 10, 64)
			n, err2 := strconv.ParseInt(rest[i+1:], 10, 64)
			if err1 == nil && err2 == nil && validText(rest[:i]) == nil {
				return cursor{t, rest[:i], n}, nil
			}
		}
	}
	return cursor{}, &ParamError{Param: "cursor", Err: fmt.Errorf("invalid cursor %q", s)}
}

// likeEscape makes s a literal inside a LIKE pattern with ESCAPE '\'.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// Query answers f (see Filter.Validate for what it refuses). An event
// whose stored body cannot be decoded does not fail the page: it is
// listed in Page.Skipped.
func (s *store) Query(ctx context.Context, f Filter) (Page, error) {
	if err := f.Validate(); err != nil {
		return Page{}, fmt.Errorf("audit query: %w", err)
	}
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
	n := 0 // rows taken: records and skipped
	for rs.Next() {
		var c cursor
		var hash []byte
		var body string
		if err := rs.Scan(&c.writer, &c.seq, &c.timeNS, &hash, &body); err != nil {
			return Page{}, err
		}
		if n == limit {
			page.Next = last.String()
			break
		}
		n++
		last = c
		r, err := storedEvent{seq: c.seq, hash: hash, body: body}.record()
		if err != nil {
			page.Skipped = append(page.Skipped, SkippedRecord{Writer: c.writer, Seq: c.seq,
				Error: fmt.Sprintf("cannot decode the stored event: %v (run sluice audit verify)", err)})
			continue
		}
		page.Records = append(page.Records, r)
	}
	return page, rs.Err()
}
