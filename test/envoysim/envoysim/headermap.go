package envoysim

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// headerMap is Envoy's Http::HeaderMap: ordered entries with lower-case keys,
// pseudo-headers (":method", ":path", ...) before all others, and duplicate
// keys kept as separate entries.
type headerMap struct {
	entries []headerEntry
}

type headerEntry struct{ key, value string }

func isPseudo(key string) bool { return strings.HasPrefix(key, ":") }

// get returns the first value of key.
func (h *headerMap) get(key string) (string, bool) {
	for _, e := range h.entries {
		if e.key == key {
			return e.value, true
		}
	}
	return "", false
}

// value is get without the presence flag.
func (h *headerMap) value(key string) string {
	v, _ := h.get(key)
	return v
}

// values returns every value of key in order.
func (h *headerMap) values(key string) []string {
	var out []string
	for _, e := range h.entries {
		if e.key == key {
			out = append(out, e.value)
		}
	}
	return out
}

func (h *headerMap) has(key string) bool {
	_, ok := h.get(key)
	return ok
}

// add is addCopy: a new entry, even if the key exists. Pseudo-headers go
// after the existing pseudo-headers, as in HeaderMapImpl.
func (h *headerMap) add(key, value string) {
	key = strings.ToLower(key)
	e := headerEntry{key, value}
	if !isPseudo(key) {
		h.entries = append(h.entries, e)
		return
	}
	i := 0
	for i < len(h.entries) && isPseudo(h.entries[i].key) {
		i++
	}
	h.entries = append(h.entries[:i], append([]headerEntry{e}, h.entries[i:]...)...)
}

// set is setCopy: the first entry of key gets value and the others go; an
// absent key is added.
func (h *headerMap) set(key, value string) {
	key = strings.ToLower(key)
	found := false
	out := h.entries[:0]
	for _, e := range h.entries {
		if e.key == key {
			if found {
				continue
			}
			found = true
			e.value = value
		}
		out = append(out, e)
	}
	h.entries = out
	if !found {
		h.add(key, value)
	}
}

// appendValue is appendCopy: the value is joined with "," to the first entry
// of key; an absent key is added.
func (h *headerMap) appendValue(key, value string) {
	key = strings.ToLower(key)
	for i, e := range h.entries {
		if e.key == key {
			if e.value == "" {
				h.entries[i].value = value
			} else {
				h.entries[i].value = e.value + "," + value
			}
			return
		}
	}
	h.add(key, value)
}

// remove deletes every entry of key.
func (h *headerMap) remove(key string) {
	key = strings.ToLower(key)
	out := h.entries[:0]
	for _, e := range h.entries {
		if e.key != key {
			out = append(out, e)
		}
	}
	h.entries = out
}

// removePrefix deletes every entry whose key starts with prefix.
func (h *headerMap) removePrefix(prefix string) {
	out := h.entries[:0]
	for _, e := range h.entries {
		if !strings.HasPrefix(e.key, prefix) {
			out = append(out, e)
		}
	}
	h.entries = out
}

func (h *headerMap) clone() *headerMap {
	return &headerMap{entries: append([]headerEntry(nil), h.entries...)}
}

// joined returns the map CheckRequest.attributes.request.http.headers carries:
// duplicate keys merged with "," (contract §3).
func (h *headerMap) joined() map[string]string {
	out := map[string]string{}
	for _, e := range h.entries {
		if v, ok := out[e.key]; ok {
			out[e.key] = v + "," + sanitizeUTF8(e.value)
			continue
		}
		out[e.key] = sanitizeUTF8(e.value)
	}
	return out
}

// proto is MutationUtils::headersToProto with send_header_raw_value on (its
// default): one HeaderValue per entry, the value in raw_value (contract §4).
func (h *headerMap) proto() *corev3.HeaderMap {
	out := &corev3.HeaderMap{}
	for _, e := range h.entries {
		out.Headers = append(out.Headers, &corev3.HeaderValue{Key: e.key, RawValue: []byte(e.value)})
	}
	return out
}

// validHeaderName is HeaderUtility::headerNameIsValid: an RFC 7230 token,
// optionally after the ':' of a pseudo-header.
func validHeaderName(name string) bool {
	name = strings.TrimPrefix(name, ":")
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validHeaderValue is HeaderUtility::headerValueIsValid: no NUL, CR or LF.
func validHeaderValue(v string) bool { return !strings.ContainsAny(v, "\x00\r\n") }
