package httpapi

import (
	"bytes"
	"encoding/json"

	"github.com/sluicehq/sluice/internal/jsonstr"
)

// What a Kubernetes response means to masking: which objects are
// Secrets, which values are objects from which paths apply anew, and
// where kubectl keeps a copy of an object.

// role is what a value is to the Kubernetes API, as far as masking cares.
type role uint8

const (
	roleNone role = iota
	// roleObject is a Kubernetes object: the response, a List item, a
	// watch event's object, a Table row's object. Paths apply from it.
	roleObject
	roleItems       // a List's items: each element is a roleObject
	roleRows        // a Table's rows: each element is a roleRow
	roleRow         // a Table row: its "object" is a roleObject
	roleMeta        // an object's metadata
	roleAnnotations // an object's metadata.annotations
	roleLastApplied // an object's last-applied-configuration annotation
)

// object is what the walker knows about the object it is in.
type object struct {
	kind      []byte
	kindKnown bool
	counted   bool // already counted in Report.Secrets
}

// learnKind finds the object's kind before it matters: at the kind member
// itself, or, when a member whose meaning depends on the kind comes first
// (data before kind, or a List item that has no kind), by reading ahead.
func (w *walker) learnKind(obj *object, key []byte, i int) {
	if obj.kindKnown {
		return
	}
	switch string(key) {
	case "kind":
		if w.src[i] == '"' {
			obj.kind, obj.kindKnown = stringContent(w.src[i:stringEnd(w.src, i)]), true
		}
	case "data", "stringData", "metadata", "items", "object", "rows":
		obj.kind, obj.kindKnown = w.kindAhead(i), true
	}
}

// kindAhead returns the kind named by a member after the one whose value
// starts at src[i], or nil.
func (w *walker) kindAhead(i int) []byte {
	src := w.src
	i = valueEnd(src, i)
	for {
		i = skipSpace(src, i)
		if src[i] == '}' {
			return nil
		}
		i = skipSpace(src, i+1) // past ','
		ke := stringEnd(src, i)
		key := stringContent(src[i:ke])
		i = skipSpace(src, skipSpace(src, ke)+1)
		if string(key) == "kind" && src[i] == '"' {
			return stringContent(src[i:stringEnd(src, i)])
		}
		i = valueEnd(src, i)
	}
}

// kubeMember gives child its Kubernetes meaning: a Secret's data and
// stringData are masked whole; List items, watch event objects and Table
// row objects are objects from which paths apply anew.
func (w *walker) kubeMember(f frame, obj *object, key []byte, child *frame) {
	// string(obj.kind) in comparisons does not allocate; held in a
	// variable, it would, once per object.
	noKind := len(obj.kind) == 0
	secret := string(obj.kind) == "Secret" || (noKind && f.secrets && f.role == roleObject)
	switch {
	case secret && string(key) == "data":
		child.repl = quotedSecretData
		w.countSecret(obj)
	case secret && string(key) == "stringData":
		child.repl = quotedMasked
		w.countSecret(obj)
	case string(key) == "metadata" && (secret || !noKind || f.role == roleObject):
		child.role, child.secrets = roleMeta, secret
	case f.role == roleMeta && string(key) == "annotations":
		child.role, child.secrets = roleAnnotations, f.secrets
	case f.role == roleAnnotations && string(key) == lastAppliedAnnotation:
		child.role, child.secrets = roleLastApplied, f.secrets
	case f.role == roleObject && string(key) == "items" && (noKind || bytes.HasSuffix(obj.kind, []byte("List"))):
		child.role = roleItems
		child.secrets = string(obj.kind) == "SecretList" || (noKind && f.secrets)
	case f.role == roleObject && string(key) == "object" && (noKind || string(obj.kind) == "WatchEvent"):
		w.kubeObject(child, f.secrets)
	case f.role == roleObject && string(key) == "rows" && string(obj.kind) == "Table":
		child.role, child.secrets = roleRows, f.secrets
	case f.role == roleRow && string(key) == "object":
		w.kubeObject(child, f.secrets)
	}
}

func (w *walker) countSecret(obj *object) {
	if !obj.counted {
		obj.counted = true
		w.rep.Secrets++
	}
}

// lastApplied masks an object's last-applied-configuration annotation:
// the object as kubectl apply last sent it, so for a Secret its data in
// clear, and for any object the values configured paths name. It is
// masked as an object of its own, so kubectl can still diff against it.
// A Secret's annotation that is not JSON becomes "[masked]"; another's is
// an ordinary string.
func (w *walker) lastApplied(i int, secret bool) int {
	end := stringEnd(w.src, i)
	if !secret && w.rules.Empty() {
		return end
	}
	text := stringContent(w.src[i:end])
	if !json.Valid(text) {
		if secret {
			w.replace(i, end, quotedMasked)
			w.notePath()
		} else {
			w.detect(i, end)
		}
		return end
	}
	if w.inner == nil {
		w.inner = &walker{}
	}
	in := w.inner
	in.reset(w.rules, JSONOptions{Kubernetes: true, Secrets: secret}, text, in.out[:0])
	in.quiet = true
	in.document()
	in.src = nil
	if !in.rep.Masked() {
		return end
	}
	w.buf = jsonstr.Append(w.buf[:0], in.out)
	w.replaceBytes(i, end, w.buf)
	w.rep.Values += in.rep.Values - 1
	for _, d := range in.rep.Detectors {
		w.noteDetector(d)
	}
	w.notePath()
	return end
}
