package envoysim

import (
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// writeOp is one queued socket operation. to is the transport current when the
// op was queued, so bytes written before a TLS switch go out in clear text.
type writeOp struct {
	data          []byte
	to            net.Conn
	shutdownWrite bool
}

// writer owns the socket's write side. Owner: its run goroutine; enqueue and
// the close methods are safe from the dispatcher.
type writer struct {
	raw      net.Conn
	progress func(n int, err error)

	mu       sync.Mutex
	ops      []writeOp
	wake     chan struct{}
	closing  bool
	deadline time.Duration
	closed   bool
}

func newWriter(raw net.Conn, progress func(int, error)) *writer {
	return &writer{raw: raw, progress: progress, wake: make(chan struct{}, 1)}
}

func (w *writer) enqueue(op writeOp) {
	w.mu.Lock()
	w.ops = append(w.ops, op)
	w.mu.Unlock()
	w.signal()
}

func (w *writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// closeAfterQueued writes what is queued, each write bounded by d, then closes.
func (w *writer) closeAfterQueued(d time.Duration) {
	w.mu.Lock()
	w.closing = true
	w.deadline = d
	w.mu.Unlock()
	_ = w.raw.SetWriteDeadline(time.Now().Add(d))
	w.signal()
}

// closeNow drops what is queued and closes the socket.
func (w *writer) closeNow() {
	w.mu.Lock()
	w.ops = nil
	w.closing = true
	w.mu.Unlock()
	_ = w.raw.Close()
	w.signal()
}

func (w *writer) run() {
	for {
		w.mu.Lock()
		if len(w.ops) == 0 {
			if w.closing {
				w.closed = true
				w.mu.Unlock()
				_ = w.raw.Close()
				return
			}
			w.mu.Unlock()
			<-w.wake
			continue
		}
		op := w.ops[0]
		w.ops = w.ops[1:]
		w.mu.Unlock()

		var n int
		var err error
		if op.shutdownWrite {
			err = shutdownWrite(op.to)
		} else {
			n, err = op.to.Write(op.data)
		}
		w.progress(n, err)
		if err != nil {
			w.mu.Lock()
			w.ops = nil
			w.closing = true
			w.mu.Unlock()
		}
	}
}

// shutdownWrite half-closes: TLS close_notify first, then a TCP FIN.
func shutdownWrite(c net.Conn) error {
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.CloseWrite(); err != nil {
			return err
		}
		c = tc.NetConn()
	}
	if hc, ok := c.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return nil
}
