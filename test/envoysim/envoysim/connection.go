package envoysim

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// This file is Envoy's Network::ConnectionImpl, reduced to what the filters of
// this sim observe: a read buffer offered to the filter chain, half-close, read
// disabling, the write path through the write filters, and the close types.
//
// Socket I/O runs on two goroutines per connection. The reader reads only when
// the dispatcher hands it a token, so, as in Envoy, a chunk is whatever arrived
// while the previous chunk was being processed, reading stops while reads are
// disabled, and a transport switch (postgres SSLRequest → TLS) can never race a
// read. The writer drains queued writes so that the dispatcher never blocks.

type connState int

const (
	stateOpen connState = iota
	stateClosing
	stateClosed
)

type connEvent int

const (
	evRemoteClose connEvent = iota
	evLocalClose
	evConnected
)

func (e connEvent) String() string {
	return [...]string{"RemoteClose", "LocalClose", "Connected"}[e]
}

// closeType is Network::ConnectionCloseType.
type closeType int

const (
	closeFlushWrite closeType = iota
	closeNoFlush
	closeAbortReset
)

func (t closeType) String() string {
	return [...]string{"FlushWrite", "NoFlush", "AbortReset"}[t]
}

const (
	// readChunkBytes bounds one read, like Envoy's per-read slice budget.
	readChunkBytes = 64 << 10
	// flushTimeout bounds how long a FlushWrite close waits for a peer that does
	// not read; Envoy waits for the write buffer without a bound unless a delayed
	// close timeout is configured.
	flushTimeout = 5 * time.Second
)

type conn struct {
	id       uint64
	sim      *Sim
	d        *dispatcher
	raw      net.Conn
	upstream bool
	fm       *filterManager // nil on upstream connections

	transport net.Conn    // raw, or the *tls.Conn over it
	startTLS  *tls.Config // set when the transport socket is starttls
	// readInterrupted is set while a read in progress, which a transport
	// switch must not race, is being called back (interruptRead);
	// heldWrites are the writes made meanwhile.
	readInterrupted bool
	heldWrites      []writeOp
	localCert       *x509.Certificate
	tlsState        *tls.ConnectionState

	state               connState
	readBuf             buffer
	readEndStream       bool
	readEndStreamRaised bool
	readDisableCount    int
	halfClose           bool
	readerParked        bool
	readerDone          bool
	readToken           chan struct{}
	readTransport       net.Conn

	w                  *writer
	unflushed          int
	writeEndStream     bool
	closeAfterFlush    bool
	curWrite           *buffer
	curWriteEndStream  bool
	callbacks          []func(connEvent)
	bytesSentCallbacks []func(n int) bool

	requestedServerName string
	dynamicMetadata     *corev3.Metadata
	closeDetails        string
	abort               bool
	onClosed            func()

	// upstreamData receives reads on upstream connections (no filter chain).
	upstreamData func(b *buffer, endStream bool)
}

func newConn(s *Sim, d *dispatcher, raw net.Conn, upstream bool) *conn {
	c := &conn{
		id:              s.nextConnID(),
		sim:             s,
		d:               d,
		raw:             raw,
		upstream:        upstream,
		transport:       raw,
		readerParked:    true,
		readToken:       make(chan struct{}, 1),
		dynamicMetadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}},
	}
	c.w = newWriter(raw, func(n int, err error) { d.post(func() { c.onWriteProgress(n, err) }) })
	if !upstream {
		c.fm = newFilterManager(c)
	}
	return c
}

// start launches the socket goroutines; the reader waits for its first token,
// which giveReadToken hands out once the filters are initialized.
func (c *conn) start() {
	go c.readLoop()
	go c.w.run()
}

func (c *conn) readLoop() {
	buf := make([]byte, readChunkBytes)
	for range c.readToken {
		tr := c.readTransport
		n, err := tr.Read(buf)
		data := append([]byte(nil), buf[:n]...)
		var st *tls.ConnectionState
		if tc, ok := tr.(*tls.Conn); ok {
			if s := tc.ConnectionState(); s.HandshakeComplete {
				st = &s
			}
		}
		// A timeout is the interruption of startSecureTransport: reading
		// goes on, through the new transport.
		if !c.d.post(func() { c.onReadReady(data, err, st) }) || err != nil && !isTimeout(err) {
			return
		}
	}
}

// giveReadToken lets the reader read once more when reading is possible.
func (c *conn) giveReadToken() {
	if !c.readerParked || c.readerDone || c.state != stateOpen || c.readDisableCount > 0 ||
		len(c.bytesSentCallbacks) > 0 {
		return
	}
	c.readerParked = false
	c.readTransport = c.transport
	c.readToken <- struct{}{}
}

func (c *conn) onReadReady(data []byte, err error, st *tls.ConnectionState) {
	if c.state == stateClosed {
		return
	}
	c.readerParked = true
	if c.readInterrupted {
		// The read interruptRead called back. What it read arrived before
		// the switch, in clear text; the next read is through the
		// transport current when the reader is re-armed.
		c.readInterrupted = false
		_ = c.raw.SetReadDeadline(time.Time{})
		if isTimeout(err) {
			err = nil
		}
		for _, op := range c.heldWrites {
			c.w.enqueue(op)
		}
		c.heldWrites = nil
	}
	if st != nil && c.tlsState == nil {
		// requestedServerName stays what tls_inspector found: Envoy sets it only
		// from the listener filter, not from the transport socket's handshake.
		c.tlsState = st
	}
	c.readBuf.add(data)
	closeNow := false
	if err != nil {
		c.readerDone = true
		if errors.Is(err, io.EOF) && c.halfClose {
			c.readEndStream = true
		} else {
			if !errors.Is(err, io.EOF) {
				c.sim.logf("conn %d: read: %v", c.id, err)
			}
			closeNow = true
		}
	}
	if len(data) > 0 || c.readEndStream {
		c.onRead()
	}
	if c.state == stateClosed {
		return
	}
	if closeNow || c.bothSidesHalfClosed() {
		c.remoteClose()
		return
	}
	c.giveReadToken()
}

// onRead offers the read buffer to the filter chain (or the upstream callback).
func (c *conn) onRead() {
	if c.state != stateOpen || c.readDisableCount > 0 {
		return
	}
	if c.readBuf.Len() == 0 && !c.readEndStream {
		return
	}
	if c.readEndStream {
		if c.readEndStreamRaised && c.readBuf.Len() == 0 {
			return
		}
		c.readEndStreamRaised = true
	}
	if c.fm != nil {
		c.fm.onRead()
		return
	}
	if c.upstreamData != nil {
		c.upstreamData(&c.readBuf, c.readEndStream)
	}
}

// readDisable is counted, as in Envoy.
func (c *conn) readDisable(disable bool) {
	if c.state != stateOpen {
		return
	}
	if disable {
		c.readDisableCount++
		return
	}
	if c.readDisableCount == 0 {
		return
	}
	c.readDisableCount--
	if c.readDisableCount == 0 {
		if c.readBuf.Len() > 0 || c.readEndStream && !c.readEndStreamRaised {
			c.d.post(func() {
				if c.state == stateOpen {
					c.onRead()
				}
			})
		}
		c.giveReadToken()
	}
}

func (c *conn) enableHalfClose(on bool) { c.halfClose = on }

func (c *conn) addConnectionCallbacks(cb func(connEvent)) { c.callbacks = append(c.callbacks, cb) }

// addBytesSentCallback registers cb; it is removed when it returns false. While
// one is registered the reader is not re-armed (see the file comment), and a
// read already in progress is called back: postgres_proxy switches to TLS
// from such a callback, and the peer's first TLS bytes must not be read in
// clear text. (A filter that answers from a later event, as when ext_authz
// comes first, registers it while the reader waits.)
func (c *conn) addBytesSentCallback(cb func(n int) bool) {
	c.bytesSentCallbacks = append(c.bytesSentCallbacks, cb)
	c.interruptRead()
}

// interruptRead calls back a read in progress with a deadline in the past,
// so that the next read goes through the transport current by then. Writes
// wait until it is back: a TLS handshake they would start reads the socket
// too, under that deadline. In Envoy reads and transport switches happen on
// one event loop and cannot race.
func (c *conn) interruptRead() {
	if c.readerParked || c.readerDone || c.readInterrupted {
		return
	}
	c.readInterrupted = true
	_ = c.raw.SetReadDeadline(time.Unix(1, 0))
}

func (c *conn) setDynamicMetadata(ns string, s *structpb.Struct) {
	cur := c.dynamicMetadata.FilterMetadata[ns]
	if cur == nil {
		cur = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		c.dynamicMetadata.FilterMetadata[ns] = cur
	}
	for k, v := range s.GetFields() {
		cur.Fields[k] = v
	}
}

// startSecureTransport switches a starttls transport socket to TLS: the
// server side on a listener's connection, the client side on an upstream
// one. Later writes go out through TLS and the next read is TLS.
//
// A downstream switch never races a read: the reader is held while the
// "S" that precedes it is being sent (addBytesSentCallback). An upstream
// switch follows the server's "S", after which the reader is already
// blocked in a clear-text Read that would take the server's first TLS
// bytes, so that read is called back (interruptRead).
func (c *conn) startSecureTransport() bool {
	if c.startTLS == nil {
		return false
	}
	cfg := c.startTLS
	c.startTLS = nil
	if !c.upstream {
		c.transport = tls.Server(c.raw, cfg)
		return true
	}
	c.transport = tls.Client(c.raw, cfg)
	c.interruptRead()
	return true
}

// ssl is Connection::ssl(): nil until a TLS handshake completed.
func (c *conn) ssl() *tls.ConnectionState { return c.tlsState }

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// tcpConnOf unwraps the listener filters' wrappers.
func tcpConnOf(c net.Conn) *net.TCPConn {
	for {
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case *prefixConn:
			c = v.Conn
		case *tls.Conn:
			c = v.NetConn()
		default:
			return nil
		}
	}
}
