package audit

import (
	"strconv"

	"github.com/sluicehq/sluice/internal/jsonstr"
)

// appendEventJSON appends the event's canonical JSON (eventJSON's fields in
// schema order, braces included) to dst without reflection.
//
// Every append encodes one event on the appending goroutine, and at the
// audit budget's rate encoding/json's reflection and allocations were a
// fifth of sluice's CPU. The output is byte for byte what
// json.Encoder(SetEscapeHTML(false)) writes for toJSON(e);
// FuzzEncodeEventMatchesEncodingJSON holds the two together. The stored
// body is what was hashed, so this encoder only has to agree with itself
// for verification; agreeing with encoding/json keeps records written
// before it identical to records written after.
func appendEventJSON(dst []byte, e Event) ([]byte, error) {
	dst = append(dst, `{"time":"`...)
	var err error
	// AppendText is the strict RFC 3339 encoding time.Time.MarshalJSON
	// writes, and fails where MarshalJSON fails (years outside 0-9999).
	if dst, err = e.Time.UTC().AppendText(dst); err != nil {
		return nil, err
	}
	dst = append(dst, `","kind":`...)
	dst = jsonstr.Append(dst, string(e.Kind))
	dst = appendStringField(dst, `,"session_id":`, e.SessionID)
	dst = appendStringField(dst, `,"request_id":`, e.RequestID)
	p := e.Principal
	dst = append(dst, `,"principal":{`...)
	mark := len(dst)
	dst = appendStringField(dst, `,"issuer":`, p.Issuer)
	dst = appendStringField(dst, `,"subject":`, p.Subject)
	dst = appendStringsField(dst, `,"groups":`, p.Groups)
	dst = appendStringField(dst, `,"client":`, p.Client)
	dst = appendStringField(dst, `,"on_behalf_of":`, p.OnBehalfOf)
	if len(dst) > mark { // drop the first member's leading comma
		dst = append(dst[:mark], dst[mark+1:]...)
	}
	dst = append(dst, '}')
	dst = appendStringField(dst, `,"actor":`, e.Actor)
	dst = appendStringField(dst, `,"target":`, e.Target)
	dst = appendStringField(dst, `,"source":`, e.Source)
	dst = appendStringField(dst, `,"request":`, e.Request)
	if len(e.Classes) > 0 {
		dst = append(dst, `,"classes":[`...)
		for i, c := range e.Classes {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = jsonstr.Append(dst, c.String())
		}
		dst = append(dst, ']')
	}
	dst = appendStringsField(dst, `,"tables":`, e.Tables)
	dst = appendStringField(dst, `,"decision":`, e.Decision)
	dst = appendStringField(dst, `,"reason":`, e.Reason)
	dst = appendStringsField(dst, `,"masked_columns":`, e.MaskedColumns)
	dst = appendIntField(dst, `,"rows":`, e.Rows)
	dst = appendIntField(dst, `,"bytes":`, e.Bytes)
	dst = appendIntField(dst, `,"duration_ns":`, int64(e.Duration))
	dst = appendStringField(dst, `,"error":`, e.Error)
	dst = appendStringField(dst, `,"sqlstate":`, e.SQLState)
	dst = appendStringField(dst, `,"grant_id":`, e.GrantID)
	dst = appendStringField(dst, `,"trace_id":`, e.TraceID)
	dst = appendIntField(dst, `,"http_status":`, int64(e.HTTPStatus))
	dst = appendStringField(dst, `,"digest":`, e.Digest)
	dst = appendStringField(dst, `,"fingerprint":`, e.Fingerprint)
	return append(dst, '}'), nil
}

// appendStringField appends `name` and s, or nothing when s is empty
// (the schema's omitempty).
func appendStringField(dst []byte, name, s string) []byte {
	if s == "" {
		return dst
	}
	return jsonstr.Append(append(dst, name...), s)
}

func appendStringsField(dst []byte, name string, ss []string) []byte {
	if len(ss) == 0 {
		return dst
	}
	dst = append(append(dst, name...), '[')
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = jsonstr.Append(dst, s)
	}
	return append(dst, ']')
}

func appendIntField(dst []byte, name string, n int64) []byte {
	if n == 0 {
		return dst
	}
	return strconv.AppendInt(append(dst, name...), n, 10)
}

// encodedSizeHint is a capacity that holds the event's encoding unless
// its strings need escaping: the field names and fixed parts are under
// 400 bytes.
func encodedSizeHint(e Event) int {
	n := 400 + len(e.Kind) + len(e.SessionID) + len(e.RequestID) + len(e.Actor) + len(e.Target) +
		len(e.Source) + len(e.Request) + len(e.Decision) + len(e.Reason) + len(e.Error) + len(e.SQLState) +
		len(e.GrantID) + len(e.TraceID) + len(e.Digest) + len(e.Fingerprint)
	p := e.Principal
	n += len(p.Issuer) + len(p.Subject) + len(p.Client) + len(p.OnBehalfOf)
	for _, l := range [][]string{p.Groups, e.Tables, e.MaskedColumns} {
		for _, s := range l {
			n += len(s) + 3
		}
	}
	return n
}
