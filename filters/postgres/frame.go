package postgres

import (
	"encoding/binary"
	"fmt"
)

// Wire limits, each taken from the Postgres source so that sluice refuses
// nothing the server would accept and buffers nothing the server would
// refuse.
const (
	// maxStartupPacket is MAX_STARTUP_PACKET_LENGTH (libpq/pqcomm.h): the
	// server refuses a longer StartupMessage.
	maxStartupPacket = 10000
	// minStartupPacket is the length word plus the protocol or request code.
	minStartupPacket = 8
	// maxAuthMessage is PG_MAX_AUTH_TOKEN_LENGTH (libpq/auth.h), the largest
	// message the server reads before authentication completes. The agent's
	// token travels in one, so it is also the longest token sluice accepts.
	maxAuthMessage = 65535
	// maxMessage is PG_LARGE_MESSAGE_LIMIT (MaxAllocSize - 1): the largest
	// message body the server reads or writes.
	maxMessage = 0x3fffffff - 1
)

// frameKind is the shape of the next message in a byte stream. Postgres
// uses three: typed messages, the untyped startup packets a client sends
// first, and the single byte a server answers SSLRequest or GSSENCRequest
// with.
type frameKind uint8

const (
	// frameTyped is a type byte, an int32 length that counts itself, and a
	// body.
	frameTyped frameKind = iota
	// frameStartup is an int32 length, then an int32 protocol version or
	// request code (StartupMessage, SSLRequest, GSSENCRequest,
	// CancelRequest), then the rest of the body.
	frameStartup
	// frameByte is one byte alone: 'S', 'N' or 'G' answering a negotiation
	// request (or 'E', an old server's error).
	frameByte
)

func (k frameKind) String() string {
	switch k {
	case frameTyped:
		return "typed"
	case frameStartup:
		return "startup"
	case frameByte:
		return "byte"
	}
	return fmt.Sprintf("frameKind(%d)", uint8(k))
}

// frame is one whole message. Its slices alias the framer's buffer and are
// valid only until the next push: whatever is kept must be copied.
type frame struct {
	kind frameKind
	// typ is the message type byte (frameTyped) or the byte itself
	// (frameByte); 0 for startup packets.
	typ byte
	// raw is the message exactly as it arrived, header included, so that
	// what sluice does not change it forwards byte for byte.
	raw []byte
	// body follows the header: for typed messages, what pgproto3's Decode
	// methods take; for startup packets, from the code on.
	body []byte
}

// code is a startup packet's protocol version or request code.
func (f frame) code() uint32 {
	if f.kind != frameStartup || len(f.body) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(f.body)
}

// FrameError is a byte stream that is not the Postgres protocol: a length
// out of range for the message's shape. The session ends the connection.
type FrameError struct {
	Kind   frameKind
	Type   byte
	Length int64
	Max    int
}

func (e *FrameError) Error() string {
	if e.Kind == frameStartup {
		return fmt.Sprintf("startup packet length %d is outside 8..%d", e.Length, e.Max)
	}
	return fmt.Sprintf("message %q length %d is outside 4..%d", e.Type, e.Length, e.Max)
}

// framer splits one direction's byte stream into whole messages, whatever
// the chunking: a message split across chunks waits in the buffer for its
// end, and a chunk of many messages yields them one by one.
//
// The owner (one Session) says which shape comes next (expect) and how
// long a typed message may be (max); both change as the protocol moves on.
type framer struct {
	expect frameKind
	max    int

	buf []byte
	off int
	// borrowed is set while buf is the caller's chunk rather than framer
	// storage: the common case of a chunk of whole messages then costs no
	// copy, and retain copies only a partial tail.
	borrowed bool
}

// push adds a chunk. Frames returned before it are no longer valid.
func (f *framer) push(b []byte) {
	if f.off == len(f.buf) {
		f.buf, f.off, f.borrowed = b, 0, true
		return
	}
	rest := f.buf[f.off:]
	if f.borrowed || f.off > 0 {
		owned := make([]byte, len(rest), len(rest)+len(b))
		copy(owned, rest)
		rest = owned
	}
	f.buf, f.off, f.borrowed = append(rest, b...), 0, false
}

// retain makes the framer own its unconsumed bytes, so the chunk it was
// given can be released. Called once a chunk has been processed.
func (f *framer) retain() {
	if f.off == len(f.buf) {
		f.buf, f.off, f.borrowed = nil, 0, false
		return
	}
	if f.borrowed {
		f.buf = append([]byte(nil), f.buf[f.off:]...)
		f.off, f.borrowed = 0, false
	}
}

// buffered is how many bytes wait for the rest of their message.
func (f *framer) buffered() int { return len(f.buf) - f.off }

// next returns the next whole message, or ok false when the buffer holds
// only part of one.
func (f *framer) next() (fr frame, ok bool, err error) {
	rest := f.buf[f.off:]
	switch f.expect {
	case frameByte:
		if len(rest) < 1 {
			return frame{}, false, nil
		}
		f.off++
		return frame{kind: frameByte, typ: rest[0], raw: rest[:1]}, true, nil
	case frameStartup:
		if len(rest) < 4 {
			return frame{}, false, nil
		}
		n := int64(binary.BigEndian.Uint32(rest))
		if n < minStartupPacket || n > maxStartupPacket {
			return frame{}, false, &FrameError{Kind: frameStartup, Length: n, Max: maxStartupPacket}
		}
		if int64(len(rest)) < n {
			return frame{}, false, nil
		}
		f.off += int(n)
		return frame{kind: frameStartup, raw: rest[:n], body: rest[4:n]}, true, nil
	default:
		if len(rest) < 5 {
			return frame{}, false, nil
		}
		n := int64(binary.BigEndian.Uint32(rest[1:]))
		limit := f.max
		if limit == 0 {
			limit = maxMessage
		}
		if n < 4 || n-4 > int64(limit) {
			return frame{}, false, &FrameError{Kind: frameTyped, Type: rest[0], Length: n, Max: limit}
		}
		total := 1 + n
		if int64(len(rest)) < total {
			return frame{}, false, nil
		}
		f.off += int(total)
		return frame{kind: frameTyped, typ: rest[0], raw: rest[:total], body: rest[5:total]}, true, nil
	}
}
