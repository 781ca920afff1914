package httpapi

import (
	"bytes"
	"slices"

	"github.com/sluicehq/sluice/filters/mask"
	"github.com/sluicehq/sluice/internal/jsonstr"
)

// Replacements as JSON literals.
const (
	quotedMasked     = `"` + MaskedString + `"`
	quotedSecretData = `"` + MaskedSecretData + `"`
)

// frame is what the walker knows about the value it is about to visit.
type frame struct {
	lo, hi  int // the live path states, w.states[lo:hi]
	matched int // a path that selects this whole value, or -1
	role    role
	// secrets: objects this value is or carries that name no kind are
	// Secrets (a request for secrets, or a SecretList's items). For
	// roleMeta, roleAnnotations and roleLastApplied: the object is a Secret.
	secrets bool
	// repl, when set, masks the whole value, strings becoming repl.
	repl string
}

// state is a path partly matched: steps[:step] selected an ancestor.
type state struct{ path, step int }

// pathSeg is one step from the document to the current value.
type pathSeg struct {
	key   []byte
	index bool // an array element, written [*]
}

// walker masks one validated document in a single pass. Output is the
// source with replacements spliced in: out holds src[:last] with every
// replacement so far, and src[last:] is copied as is when the walk ends.
type walker struct {
	rules   *JSONRules
	kube    bool
	src     []byte
	out     []byte
	last    int
	states  []state
	path    []pathSeg
	rep     Report
	buf     []byte // a replacement being built
	scratch []byte // text being redacted before it is quoted
	pbuf    []byte // a path being written for the report
	// secrets is JSONOptions.Secrets, for the document's frame.
	secrets bool
	// inner masks the documents annotations hold (lastApplied), reused
	// from one to the next; quiet is set on it: its paths mean nothing
	// in the response's report.
	inner *walker
	quiet bool
}

func (w *walker) reset(r *JSONRules, opt JSONOptions, src, dst []byte) {
	if r == nil {
		r = &JSONRules{}
	}
	*w = walker{rules: r, kube: opt.Kubernetes, secrets: opt.Secrets, src: src, out: dst,
		states: w.states[:0], path: w.path[:0], buf: w.buf[:0], scratch: w.scratch[:0], pbuf: w.pbuf[:0], inner: w.inner}
}

// document walks the whole source and copies what is left.
func (w *walker) document() {
	f := frame{matched: -1}
	if w.kube {
		f.role, f.secrets = roleObject, w.secrets
	}
	w.rootStates(&f)
	f.hi = len(w.states)
	w.value(skipSpace(w.src, 0), f)
	w.out = append(w.out, w.src[w.last:]...)
}

// rootStates starts every path at the value f describes.
func (w *walker) rootStates(f *frame) {
	for p := range w.rules.paths {
		if len(w.rules.paths[p].steps) == 0 {
			f.matched = p
			continue
		}
		w.states = append(w.states, state{path: p})
	}
}

// value visits the value at src[i] and returns the index past it.
func (w *walker) value(i int, f frame) int {
	switch {
	case f.repl != "":
		return w.maskAt(i, f.repl)
	case f.matched >= 0:
		return w.maskAt(i, quotedMasked)
	case f.role == roleLastApplied && w.src[i] == '"':
		return w.lastApplied(i, f.secrets)
	case f.role == roleLastApplied && f.secrets:
		return w.maskAt(i, quotedMasked)
	}
	switch w.src[i] {
	case '{':
		return w.object(i, f)
	case '[':
		return w.array(i, f)
	case '"':
		end := stringEnd(w.src, i)
		w.detect(i, end)
		return end
	}
	return literalEnd(w.src, i)
}

func (w *walker) object(i int, f frame) int {
	var obj object
	src := w.src
	i++
	for {
		i = skipSpace(src, i)
		switch src[i] {
		case '}':
			return i + 1
		case ',':
			i = skipSpace(src, i+1)
		}
		ke := stringEnd(src, i)
		key := stringContent(src[i:ke])
		i = skipSpace(src, skipSpace(src, ke)+1) // past ':'
		if w.kube {
			w.learnKind(&obj, key, i)
		}
		child := w.member(f, &obj, key)
		w.path = append(w.path, pathSeg{key: key})
		i = w.value(i, child)
		w.path = w.path[:len(w.path)-1]
		w.states = w.states[:child.lo]
	}
}

func (w *walker) array(i int, f frame) int {
	src := w.src
	i++
	for n := 0; ; n++ {
		i = skipSpace(src, i)
		switch src[i] {
		case ']':
			return i + 1
		case ',':
			i = skipSpace(src, i+1)
		}
		child := w.element(f, n)
		w.path = append(w.path, pathSeg{index: true})
		i = w.value(i, child)
		w.path = w.path[:len(w.path)-1]
		w.states = w.states[:child.lo]
	}
}

// member is the frame of the object member key.
func (w *walker) member(f frame, obj *object, key []byte) frame {
	child := frame{lo: len(w.states), matched: -1}
	for _, s := range w.states[f.lo:f.hi] {
		if w.rules.paths[s.path].steps[s.step].matchesKey(key) {
			w.advance(&child, s)
		}
	}
	if w.kube {
		w.kubeMember(f, obj, key, &child)
	}
	child.hi = len(w.states)
	return child
}

// element is the frame of the array element n.
func (w *walker) element(f frame, n int) frame {
	child := frame{lo: len(w.states), matched: -1}
	for _, s := range w.states[f.lo:f.hi] {
		if w.rules.paths[s.path].steps[s.step].matchesIndex(n) {
			w.advance(&child, s)
		}
	}
	switch f.role {
	case roleItems:
		w.kubeObject(&child, f.secrets)
	case roleRows:
		child.role, child.secrets = roleRow, f.secrets
	}
	child.hi = len(w.states)
	return child
}

// advance moves s one step into child: a path with no steps left selects
// the child whole.
func (w *walker) advance(child *frame, s state) {
	if s.step+1 == len(w.rules.paths[s.path].steps) {
		child.matched = s.path
		return
	}
	w.states = append(w.states, state{path: s.path, step: s.step + 1})
}

// kubeObject makes child a Kubernetes object, from which every path
// applies anew.
func (w *walker) kubeObject(child *frame, secrets bool) {
	child.role, child.secrets = roleObject, secrets
	w.rootStates(child)
}

// maskAt masks the value at src[i] whole and records where.
func (w *walker) maskAt(i int, repl string) int {
	before := w.rep.Values
	end := w.maskValue(i, repl)
	if w.rep.Values > before {
		w.notePath()
	}
	return end
}

// maskValue replaces every scalar in the value at src[i], keeping object
// keys and array lengths so the value keeps its shape: strings become
// repl, numbers 0, booleans false; null stays null.
func (w *walker) maskValue(i int, repl string) int {
	src := w.src
	switch src[i] {
	case '"':
		end := stringEnd(src, i)
		w.replace(i, end, repl)
		return end
	case 'n':
		return literalEnd(src, i)
	case 't', 'f':
		end := literalEnd(src, i)
		w.replace(i, end, maskedBool)
		return end
	case '{', '[':
		isObject := src[i] == '{'
		i++
		for {
			i = skipSpace(src, i)
			switch src[i] {
			case '}', ']':
				return i + 1
			case ',':
				i = skipSpace(src, i+1)
			}
			if isObject {
				i = skipSpace(src, skipSpace(src, stringEnd(src, i))+1)
			}
			i = w.maskValue(i, repl)
		}
	}
	end := literalEnd(src, i)
	w.replace(i, end, maskedNumber)
	return end
}

// replace splices repl in for src[start:end] and counts a masked value.
func (w *walker) replace(start, end int, repl string) {
	w.splice(start, end)
	w.out = append(w.out, repl...)
}

// replaceBytes is replace for a replacement built in a buffer.
func (w *walker) replaceBytes(start, end int, repl []byte) {
	w.splice(start, end)
	w.out = append(w.out, repl...)
}

// splice copies the source up to start and skips it to end.
func (w *walker) splice(start, end int) {
	w.out = append(w.out, w.src[w.last:start]...)
	w.last = end
	w.rep.Values++
}

// detect redacts detector hits in the string src[i:end]. Strings are
// scanned as the client will read them: escapes are decoded first.
func (w *walker) detect(i, end int) {
	if w.rules.detectors.Empty() {
		return
	}
	raw := w.src[i:end]
	text := stringContent(raw)
	spans := w.rules.detectors.Find(text)
	if len(spans) == 0 {
		return
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		// Shape keeps no quote, backslash or control character that was
		// not there, so the redacted text is a literal as it stands.
		w.buf = append(w.buf[:0], '"')
		w.buf = mask.Redact(w.buf, text, spans)
		w.buf = append(w.buf, '"')
	} else {
		w.scratch = mask.Redact(w.scratch[:0], text, spans)
		w.buf = jsonstr.Append(w.buf[:0], w.scratch)
	}
	w.replaceBytes(i, end, w.buf)
	for _, s := range spans {
		w.noteDetector(s.Kind)
	}
	w.notePath()
}

func (w *walker) noteDetector(kind string) {
	if !slices.Contains(w.rep.Detectors, kind) {
		w.rep.Detectors = append(w.rep.Detectors, kind)
	}
}

// notePath records the current path in the report.
func (w *walker) notePath() {
	if w.quiet {
		return
	}
	b := append(w.pbuf[:0], '$')
	for _, s := range w.path {
		if s.index {
			b = append(b, "[*]"...)
			continue
		}
		b = appendPathKey(b, s.key)
	}
	w.pbuf = b
	w.rep.addPath(b)
}
