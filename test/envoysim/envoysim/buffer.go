package envoysim

// buffer is the sim's Buffer::Instance: the bytes a filter is offered. A filter
// that drains it owns the bytes; bytes left in the connection's read buffer are
// offered again on the next read or continueReading (contract §0.1).
type buffer struct {
	b []byte
}

func newBuffer(p []byte) *buffer { return &buffer{b: append([]byte(nil), p...)} }

// Len is the number of bytes held.
func (b *buffer) Len() int { return len(b.b) }

// Bytes returns the held bytes; the slice is valid until the buffer changes.
func (b *buffer) Bytes() []byte { return b.b }

// String returns a copy of the held bytes as a string.
func (b *buffer) String() string { return string(b.b) }

// add appends a copy of p.
func (b *buffer) add(p []byte) { b.b = append(b.b, p...) }

// drain removes the first n bytes.
func (b *buffer) drain(n int) {
	if n >= len(b.b) {
		b.b = nil
		return
	}
	b.b = append([]byte(nil), b.b[n:]...)
}

// take drains and returns everything held.
func (b *buffer) take() []byte {
	p := b.b
	b.b = nil
	return p
}
