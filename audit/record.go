package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/policies"
)

// SchemaVersion is the version of the stored record ("v" in its JSON).
// Version 1 is the field set of Event; a later version only adds fields.
const SchemaVersion = 1

// Hash is a SHA-256 digest: an event's hash, or a chain head.
type Hash [sha256.Size]byte

// String returns the hash in lower-case hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is the zero hash, the "previous" of a chain's
// first event.
func (h Hash) IsZero() bool { return h == Hash{} }

// MarshalText encodes h as hex.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText decodes hex.
func (h *Hash) UnmarshalText(b []byte) error {
	if len(b) != 2*len(h) {
		return fmt.Errorf("hash: expected %d hex digits, got %d", 2*len(h), len(b))
	}
	_, err := hex.Decode(h[:], b)
	return err
}

func hashFrom(b []byte) (Hash, bool) {
	var h Hash
	if len(b) != len(h) {
		return h, false
	}
	copy(h[:], b)
	return h, true
}

// Record is an event as stored: its place in its writer's chain and the
// hashes that link it.
type Record struct {
	// Writer is the chain the event belongs to: one per writing process.
	Writer string
	// Seq numbers the chain's events from 1, without gaps.
	Seq int64
	// Prev is the hash of event Seq-1 of the chain (zero for Seq 1).
	Prev Hash
	// Hash is SHA-256 of the record's canonical encoding, which covers
	// Writer, Seq, Prev and every field of the event.
	Hash Hash
	Event
}

type principalJSON struct {
	Issuer     string   `json:"issuer,omitempty"`
	Subject    string   `json:"subject,omitempty"`
	Groups     []string `json:"groups,omitempty"`
	Client     string   `json:"client,omitempty"`
	OnBehalfOf string   `json:"on_behalf_of,omitempty"`
}

// eventJSON is the schema: field order here is the canonical order.
type eventJSON struct {
	Time          time.Time     `json:"time"`
	Kind          Kind          `json:"kind"`
	SessionID     string        `json:"session_id,omitempty"`
	RequestID     string        `json:"request_id,omitempty"`
	Principal     principalJSON `json:"principal"`
	Actor         string        `json:"actor,omitempty"`
	Target        string        `json:"target,omitempty"`
	Source        string        `json:"source,omitempty"`
	Request       string        `json:"request,omitempty"`
	Classes       []string      `json:"classes,omitempty"`
	Tables        []string      `json:"tables,omitempty"`
	Decision      string        `json:"decision,omitempty"`
	Reason        string        `json:"reason,omitempty"`
	MaskedColumns []string      `json:"masked_columns,omitempty"`
	Rows          int64         `json:"rows,omitempty"`
	Bytes         int64         `json:"bytes,omitempty"`
	DurationNS    int64         `json:"duration_ns,omitempty"`
	Error         string        `json:"error,omitempty"`
	SQLState      string        `json:"sqlstate,omitempty"`
	GrantID       string        `json:"grant_id,omitempty"`
	TraceID       string        `json:"trace_id,omitempty"`
	// Added after the first release of schema 1, at the end and omitted
	// when zero, so that earlier records encode exactly as before.
	HTTPStatus  int    `json:"http_status,omitempty"`
	Digest      string `json:"digest,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
}

func toJSON(e Event) eventJSON {
	p := e.Principal
	return eventJSON{
		Time: e.Time.UTC(), Kind: e.Kind, SessionID: e.SessionID, RequestID: e.RequestID,
		Principal: principalJSON{Issuer: p.Issuer, Subject: p.Subject, Groups: p.Groups, Client: p.Client, OnBehalfOf: p.OnBehalfOf},
		Actor:     e.Actor, Target: e.Target, Source: e.Source, Request: e.Request,
		Classes: classNames(e.Classes), Tables: e.Tables, Decision: e.Decision, Reason: e.Reason,
		MaskedColumns: e.MaskedColumns, Rows: e.Rows, Bytes: e.Bytes, DurationNS: int64(e.Duration),
		Error: e.Error, SQLState: e.SQLState, GrantID: e.GrantID, TraceID: e.TraceID,
		HTTPStatus: e.HTTPStatus, Digest: e.Digest, Fingerprint: e.Fingerprint,
	}
}

func (j eventJSON) event() (Event, error) {
	e := Event{
		Time: j.Time, Kind: j.Kind, SessionID: j.SessionID, RequestID: j.RequestID,
		Principal: policies.Principal{Issuer: j.Principal.Issuer, Subject: j.Principal.Subject, Groups: j.Principal.Groups,
			Client: j.Principal.Client, OnBehalfOf: j.Principal.OnBehalfOf},
		Actor: j.Actor, Target: j.Target, Source: j.Source, Request: j.Request, Tables: j.Tables,
		Decision: j.Decision, Reason: j.Reason, MaskedColumns: j.MaskedColumns, Rows: j.Rows, Bytes: j.Bytes,
		Duration: time.Duration(j.DurationNS), Error: j.Error, SQLState: j.SQLState, GrantID: j.GrantID, TraceID: j.TraceID,
		HTTPStatus: j.HTTPStatus, Digest: j.Digest, Fingerprint: j.Fingerprint,
	}
	for _, c := range j.Classes {
		oc, err := policies.ParseClass(c)
		if err != nil {
			return Event{}, err
		}
		e.Classes = append(e.Classes, oc)
	}
	return e, nil
}

// MarshalJSON encodes the event in the stored schema.
func (e Event) MarshalJSON() ([]byte, error) { return marshal(toJSON(e)) }

// UnmarshalJSON decodes the stored schema.
func (e *Event) UnmarshalJSON(b []byte) error {
	var j eventJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	ev, err := j.event()
	if err != nil {
		return err
	}
	*e = ev
	return nil
}

// bodyJSON is what is hashed: the chain position and the event.
type bodyJSON struct {
	V      int    `json:"v"`
	Writer string `json:"writer"`
	Seq    int64  `json:"seq"`
	Prev   Hash   `json:"prev"`
	eventJSON
}

// recordJSON is a Record as the API, the CLI and the exporters show it.
type recordJSON struct {
	V      int    `json:"v"`
	Writer string `json:"writer"`
	Seq    int64  `json:"seq"`
	Hash   Hash   `json:"hash"`
	Prev   Hash   `json:"prev"`
	eventJSON
}

// MarshalJSON encodes the record: chain fields, then the event's.
func (r Record) MarshalJSON() ([]byte, error) {
	return marshal(recordJSON{V: SchemaVersion, Writer: r.Writer, Seq: r.Seq, Hash: r.Hash, Prev: r.Prev, eventJSON: toJSON(r.Event)})
}

// UnmarshalJSON decodes what MarshalJSON wrote.
func (r *Record) UnmarshalJSON(b []byte) error {
	var j recordJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	ev, err := j.event()
	if err != nil {
		return err
	}
	*r = Record{Writer: j.Writer, Seq: j.Seq, Hash: j.Hash, Prev: j.Prev, Event: ev}
	return nil
}

// canonical is the encoding a record's hash covers: JSON with the
// fields in schema order, UTC times, no HTML escaping, no trailing newline.
// The store keeps these exact bytes, so verification hashes what was
// hashed, whatever a later Go version's encoder would produce.
func canonical(r Record) ([]byte, error) {
	return marshal(bodyJSON{V: SchemaVersion, Writer: r.Writer, Seq: r.Seq, Prev: r.Prev, eventJSON: toJSON(r.Event)})
}

// seal fills in r.Hash from its canonical encoding and returns that body.
func seal(r *Record) ([]byte, error) {
	body, err := canonical(*r)
	if err != nil {
		return nil, err
	}
	r.Hash = sha256.Sum256(body)
	return body, nil
}

// encodedEvent is the event's part of the canonical body, encoded by the
// appending goroutine so that the writer goroutine, which every append
// waits on, only splices and hashes.
type encodedEvent struct {
	json []byte // eventJSON, braces included
	ix   index
}

func encodeEvent(e Event) (encodedEvent, error) {
	if err := checkAppend(e); err != nil {
		return encodedEvent{}, err
	}
	j, err := appendEventJSON(make([]byte, 0, encodedSizeHint(e)), e)
	return encodedEvent{json: j, ix: indexOf(e)}, err
}

// maxIndexedText bounds the fields Postgres keeps in a btree index
// (target, grant id), whose entries hold at most 2,704 bytes: a longer
// one failed the COPY, and so every append of its batch.
const maxIndexedText = 1024

// checkAppend refuses, on the appending goroutine and for that append
// alone, an event the store would take but could not give back as
// written: a time outside the 64-bit nanoseconds of time_ns (it wrapped,
// and retention took the event for an old one and removed the events
// before it with it), a class that does not decode (verify then called
// the event altered), or an indexed field past maxIndexedText.
func checkAppend(e Event) error {
	if err := checkRange(e.Time); err != nil {
		return fmt.Errorf("time: %w", err)
	}
	for _, c := range e.Classes {
		if !slices.Contains(policies.AllClasses, c) {
			return fmt.Errorf("classes: %d is not an operation class", int(c))
		}
	}
	if len(e.Target) > maxIndexedText {
		return fmt.Errorf("target is %d bytes; at most %d", len(e.Target), maxIndexedText)
	}
	if len(e.GrantID) > maxIndexedText {
		return fmt.Errorf("grant id is %d bytes; at most %d", len(e.GrantID), maxIndexedText)
	}
	return nil
}

// sealEncoded is seal for a pre-encoded event: the same bytes as
// canonical, built as the chain fields followed by the event's fields.
func sealEncoded(r *Record, ee encodedEvent, writerJSON []byte) []byte {
	body := make([]byte, 0, len(ee.json)+len(writerJSON)+120)
	body = append(body, `{"v":`...)
	body = strconv.AppendInt(body, SchemaVersion, 10)
	body = append(body, `,"writer":`...)
	body = append(body, writerJSON...)
	body = append(body, `,"seq":`...)
	body = strconv.AppendInt(body, r.Seq, 10)
	body = append(body, `,"prev":"`...)
	body = hex.AppendEncode(body, r.Prev[:])
	body = append(body, `",`...)
	body = append(body, ee.json[1:]...)
	r.Hash = sha256.Sum256(body)
	return body
}

// decodeBody parses a stored body; the caller checks the hash.
func decodeBody(body []byte) (Record, error) {
	var j bodyJSON
	if err := json.Unmarshal(body, &j); err != nil {
		return Record{}, err
	}
	if j.V < 1 || j.V > SchemaVersion {
		return Record{}, fmt.Errorf("schema version %d is not one this sluice reads (1 to %d)", j.V, SchemaVersion)
	}
	ev, err := j.event()
	if err != nil {
		return Record{}, err
	}
	return Record{Writer: j.Writer, Seq: j.Seq, Prev: j.Prev, Event: ev}, nil
}

func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// index is the part of an event the store keeps in columns for queries.
// The columns are derived from the hashed body; verify checks they agree,
// so editing a column to hide an event from queries is detected too.
type index struct {
	TimeNS                                      int64
	Kind, Subject, Client, OnBehalfOf, Target   string
	Decision, Classes, GrantID, Request, Reason string
}

func indexOf(e Event) index { return indexWith(e, columnText) }

// rawIndexOf is the index as stores before columnText wrote it: SQLite
// kept a NUL in text as it is. Verify accepts such a column, which holds
// the hashed value byte for byte.
func rawIndexOf(e Event) index { return indexWith(e, func(s string) string { return s }) }

func indexWith(e Event, text func(string) string) index {
	classes := ""
	if len(e.Classes) > 0 {
		classes = "," + strings.Join(classNames(e.Classes), ",") + ","
	}
	return index{
		TimeNS: e.Time.UnixNano(), Kind: text(string(e.Kind)), Subject: text(e.Principal.Subject),
		Client: text(e.Principal.Client), OnBehalfOf: text(e.Principal.OnBehalfOf), Target: text(e.Target),
		Decision: text(e.Decision), Classes: classes, GrantID: text(e.GrantID),
		Request: text(e.Request), Reason: text(e.Reason),
	}
}

// columnText is s as an index column holds it: each byte that is not
// UTF-8, and each NUL, becomes U+FFFD. The body already writes the bytes
// that are not UTF-8 that way (as encoding/json does), so a column built
// from the event and one built from its decoded body agree, which verify
// checks; Postgres text holds neither such bytes nor NUL, and refused the
// whole batch they were in. Statement text, HTTP paths and Postgres
// startup parameters all come from the agent, so either can be in them.
func columnText(s string) string {
	if strings.IndexByte(s, 0) < 0 && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == 0 || (r == utf8.RuneError && n == 1) {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// validText fails for s that columnText would change: a query for it
// could match nothing as given, and Postgres would refuse it.
func validText(s string) error {
	switch {
	case strings.IndexByte(s, 0) >= 0:
		return errors.New("contains a NUL byte")
	case !utf8.ValidString(s):
		return errors.New("is not valid UTF-8 (stored events hold U+FFFD for such bytes)")
	}
	return nil
}

// indexColumns names the index columns in the order of index's fields.
const indexColumns = "time_ns, kind, subject, client, on_behalf_of, target, decision, classes, grant_id, request, reason"

func (ix *index) args() []any {
	return []any{ix.TimeNS, ix.Kind, ix.Subject, ix.Client, ix.OnBehalfOf, ix.Target, ix.Decision, ix.Classes, ix.GrantID, ix.Request, ix.Reason}
}

func (ix *index) dest() []any {
	return []any{&ix.TimeNS, &ix.Kind, &ix.Subject, &ix.Client, &ix.OnBehalfOf, &ix.Target, &ix.Decision, &ix.Classes, &ix.GrantID, &ix.Request, &ix.Reason}
}

// diff names the first column of got that differs from want.
func (ix index) diff(want index) string {
	g, w := ix.args(), want.args()
	names := strings.Split(indexColumns, ", ")
	for i := range g {
		if g[i] != w[i] {
			return names[i]
		}
	}
	return ""
}
