package envoysim

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// The downstream side of an upgraded HTTP/1.1 stream. When a 101 that
// switches protocols leaves the encoder filters, the sim takes the
// connection from net/http (Hijack), writes the 101 itself and from then on
// plays Envoy's HTTP/1 codec in upgrade mode: every byte the agent sends is
// request body (decodeData without end_stream) and every byte the encoder
// filters pass is written as it is (contract §3, "Upgrades").
//
// Deliberate difference: net/http reads nothing of the connection after the
// request headers until the sim hijacks it, so bytes an agent sends before
// the 101 reach the filters only after it. Envoy reads them at once and
// holds them (the router forwards nothing before the 101); filters that look
// at request body chunks see them earlier in Envoy.

// delayedCloseTimeout is HCM's delayed_close_timeout default (1 s): how long
// a closing connection may take to flush what is queued for the peer.
const delayedCloseTimeout = time.Second

// downstreamTunnel is the hijacked connection of an upgraded stream.
// Owner: the stream's dispatcher; the reader goroutine only posts.
type downstreamTunnel struct {
	conn       net.Conn
	out        *tunnelWriter
	readerDone chan struct{}
	release    func() // hands the connection back to the HCM connection's bookkeeping
}

// startTunnel writes the 101 and starts relaying the connection. Called by
// encodeDownstreamHeaders with the response headers after HCM's mutations.
func (s *httpStream) startTunnel(h *headerMap) {
	conn, brw, err := s.rc.Hijack()
	if err != nil {
		s.hcm.sim.logf("http stream %d: hijacking the connection for the upgrade: %v", s.id, err)
		s.resetStream("envoysim_hijack_failed")
		return
	}
	if !s.dc.ln.hijacked(conn) {
		_ = conn.Close() // the sim is closing
		s.resetStream("envoysim_shutdown")
		return
	}
	t := &downstreamTunnel{conn: conn, readerDone: make(chan struct{}), release: s.dc.ln.closeConn}
	t.out = newTunnelWriter(conn, conn.SetWriteDeadline, func(err error) {
		s.hcm.sim.logf("http stream %d: writing to the downstream tunnel: %v", s.id, err)
	})
	s.tunnel = t
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	for _, e := range h.entries {
		if !isPseudo(e.key) {
			b.WriteString(http.CanonicalHeaderKey(e.key) + ": " + e.value + "\r\n")
		}
	}
	b.WriteString("\r\n")
	t.out.write(b.Bytes())
	go t.read(s, brw.Reader)
}

// read runs on its own goroutine: what the agent sends, posted in order to
// the stream, then the end of the connection.
func (t *downstreamTunnel) read(s *httpStream, r *bufio.Reader) {
	defer close(t.readerDone)
	buf := make([]byte, readChunkBytes)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			if !s.d.post(func() { s.onTunnelData(data) }) {
				return
			}
		}
		if err != nil {
			s.d.post(func() { s.onTunnelClosed(err) })
			return
		}
	}
}

func (s *httpStream) onTunnelData(data []byte) {
	if s.done {
		return
	}
	s.dec.onData(newBuffer(data), false)
}

// onTunnelClosed: the agent closed the connection (or it broke). HCM resets
// its streams on a downstream close; the router then closes the upstream.
func (s *httpStream) onTunnelClosed(err error) {
	if s.done {
		return
	}
	if !errors.Is(err, io.EOF) {
		s.hcm.sim.logf("http stream %d: downstream tunnel: %v", s.id, err)
	}
	s.resetStream("downstream_remote_disconnect")
}

func (t *downstreamTunnel) write(p []byte) { t.out.write(p) }

// close flushes what is queued for the agent (at most delayedCloseTimeout)
// and closes the connection.
func (t *downstreamTunnel) close() { t.out.close() }

// wait returns once the connection is closed and its reader gone.
func (t *downstreamTunnel) wait() {
	t.out.close()
	<-t.out.done
	_ = t.conn.Close()
	<-t.readerDone
	t.release()
}

// tunnelWriter writes to one side of a tunnel on its own goroutine, so the
// dispatcher never blocks on a peer that does not read. close flushes what
// is queued and then closes w; a write that stays blocked for
// delayedCloseTimeout after close is given up.
type tunnelWriter struct {
	w           io.WriteCloser
	setDeadline func(time.Time) error // nil when w has none
	onError     func(error)

	mu      sync.Mutex
	cond    *sync.Cond
	queue   [][]byte
	closing bool
	done    chan struct{} // closed once w is closed
}

func newTunnelWriter(w io.WriteCloser, setDeadline func(time.Time) error, onError func(error)) *tunnelWriter {
	t := &tunnelWriter{w: w, setDeadline: setDeadline, onError: onError, done: make(chan struct{})}
	t.cond = sync.NewCond(&t.mu)
	go t.run()
	return t
}

func (t *tunnelWriter) write(p []byte) {
	if len(p) == 0 {
		return
	}
	t.mu.Lock()
	if !t.closing {
		t.queue = append(t.queue, append([]byte(nil), p...))
	}
	t.mu.Unlock()
	t.cond.Broadcast()
}

func (t *tunnelWriter) close() {
	t.mu.Lock()
	already := t.closing
	t.closing = true
	t.mu.Unlock()
	t.cond.Broadcast()
	if already {
		return
	}
	if t.setDeadline != nil {
		_ = t.setDeadline(time.Now().Add(delayedCloseTimeout))
		return
	}
	// No write deadline (an upstream connection net/http hands over):
	// closing w is what unblocks a stuck write.
	time.AfterFunc(delayedCloseTimeout, func() {
		select {
		case <-t.done:
		default:
			_ = t.w.Close()
		}
	})
}

func (t *tunnelWriter) run() {
	defer close(t.done)
	failed := false
	for {
		t.mu.Lock()
		for len(t.queue) == 0 && !t.closing {
			t.cond.Wait()
		}
		batch := t.queue
		t.queue = nil
		closing := t.closing
		t.mu.Unlock()
		for _, p := range batch {
			if failed {
				break
			}
			if _, err := t.w.Write(p); err != nil {
				failed = true
				if t.onError != nil {
					t.onError(err)
				}
			}
		}
		if closing && len(batch) == 0 {
			_ = t.w.Close()
			return
		}
	}
}
