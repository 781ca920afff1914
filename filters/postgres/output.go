package postgres

// output collects one reply. While everything in it is the chunk being
// answered, passed on unchanged from its start, it is that chunk itself:
// a result streaming through costs no copy. The first rewrite copies what
// was passed so far and appends from then on.
type output struct {
	src  []byte // the chunk being answered, when frames alias it
	n    int    // bytes of src passed so far, while buf is nil
	buf  []byte
	copy bool
}

// begin starts a reply to chunk src (nil when the framer's frames do not
// alias the chunk).
func (o *output) begin(src []byte) { *o = output{src: src} }

// pass forwards a frame's bytes unchanged.
func (o *output) pass(raw []byte) {
	if len(raw) == 0 {
		return
	}
	if !o.copy && o.n < len(o.src) && len(raw) <= len(o.src)-o.n && &raw[0] == &o.src[o.n] {
		o.n += len(raw)
		return
	}
	o.add(raw)
}

// add appends bytes that are not the chunk's own.
func (o *output) add(b []byte) { o.buf = append(o.materialize(), b...) }

// materialize switches to copying and returns the buffer to append to.
func (o *output) materialize() []byte {
	if !o.copy {
		o.copy = true
		o.buf = append(o.buf[:0:0], o.src[:o.n]...)
	}
	return o.buf
}

// take returns the reply's bytes, never nil.
func (o *output) take() []byte {
	var b []byte
	if o.copy {
		b = o.buf
	} else {
		b = o.src[:o.n:o.n]
	}
	*o = output{}
	if b == nil {
		return []byte{}
	}
	return b
}
