package envoysim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// An HCM connection: the transport socket's TLS handshake, then one
// http.Server serving the connection until it closes. Request handlers are
// counted in Sim.wg, so Close waits for them.

// downstreamConn is what a stream knows of its connection.
type downstreamConn struct {
	id            uint64
	listener      string
	remote, local net.Addr
	tls           *tls.ConnectionState
	localCert     *x509.Certificate
	sni           string // from tls_inspector
	ln            *oneConnListener
}

// serveHTTP runs an HCM filter chain's connection: the TLS handshake of its
// transport socket, then net/http on the connection until it closes.
func (s *Sim) serveHTTP(lc *listenerConfig, chain *filterChainConfig, raw net.Conn, sni string) {
	hc := chain.hcm
	dc := &downstreamConn{id: s.nextConnID(), listener: lc.proto.GetName(), remote: raw.RemoteAddr(), local: raw.LocalAddr(), sni: sni}
	nc := raw
	if chain.transport == transportTLS {
		cfg, leaf, err := s.serverTLSConfig(chain.tls)
		if err != nil {
			s.logf("conn %d: transport socket: %v", dc.id, err)
			_ = raw.Close()
			return
		}
		tc := tls.Server(raw, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err = tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.logf("conn %d: TLS handshake: %v", dc.id, err)
			s.stats.counter(lc.statPrefix + ".ssl.connection_error").Add(1)
			_ = raw.Close()
			return
		}
		st := tc.ConnectionState()
		dc.tls, dc.localCert, nc = &st, leaf, tc
	}
	var protos http.Protocols
	switch hc.codec {
	case hcmv3.HttpConnectionManager_HTTP1:
		protos.SetHTTP1(true)
	case hcmv3.HttpConnectionManager_HTTP2:
		protos.SetHTTP2(true)
		protos.SetUnencryptedHTTP2(true)
	default:
		protos.SetHTTP1(true)
		protos.SetHTTP2(true)
		protos.SetUnencryptedHTTP2(true)
	}
	ln := newOneConnListener(nc)
	dc.ln = ln
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hc.serveStream(dc, w, r) }),
		Protocols: &protos,
		ErrorLog:  log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, st http.ConnState) {
			// A hijacked connection (an upgrade's tunnel) is the stream's
			// until it ends: the stream calls closeConn then, so the server
			// stays tracked and Sim.Close can still close the tunnel.
			if st == http.StateClosed {
				ln.closeConn()
			}
		},
	}
	if !s.trackHTTPServer(srv, true) {
		_ = nc.Close()
		return
	}
	defer s.trackHTTPServer(srv, false)
	hc.stats.cxTotal.Add(1)
	hc.stats.cxActive.Add(1)
	defer hc.stats.cxActive.Add(-1)
	_ = srv.Serve(ln)
	select { // Serve returns when the listener is done; the connection may linger
	case <-ln.connDone:
	case <-ln.closed:
	}
}

// trackHTTPServer records (add) or forgets a connection's server, so that
// Close can close it.
func (s *Sim) trackHTTPServer(srv *http.Server, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.httpServers, srv)
		return true
	}
	if s.closed {
		return false
	}
	s.httpServers[srv] = struct{}{}
	return true
}

// trackStream counts a request handler in s.wg unless the sim is closed; the
// handler calls s.wg.Done.
func (s *Sim) trackStream() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// oneConnListener hands one connection to http.Server.Serve, then blocks
// Accept until the connection is closed or the listener is.
type oneConnListener struct {
	conn     net.Conn
	once     sync.Once
	connDone chan struct{}
	mu       sync.Mutex
	given    bool
	tunnel   net.Conn // the connection once an upgrade hijacked it
	closed   chan struct{}
	closeMu  sync.Once
}

func newOneConnListener(c net.Conn) *oneConnListener {
	return &oneConnListener{conn: c, connDone: make(chan struct{}), closed: make(chan struct{})}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if !l.given {
		l.given = true
		l.mu.Unlock()
		return l.conn, nil
	}
	l.mu.Unlock()
	select {
	case <-l.connDone:
	case <-l.closed:
	}
	return nil, net.ErrClosed
}

func (l *oneConnListener) closeConn() { l.once.Do(func() { close(l.connDone) }) }

func (l *oneConnListener) Close() error {
	l.closeMu.Do(func() { close(l.closed) })
	l.mu.Lock()
	given, tunnel := l.given, l.tunnel
	l.mu.Unlock()
	if !given {
		_ = l.conn.Close()
		l.closeConn()
	}
	if tunnel != nil {
		_ = tunnel.Close() // the server is closing (Sim.Close): so is its tunnel
	}
	return nil
}

// hijacked records the connection an upgrade took from net/http, so Close
// closes it too; false when the listener is already closed.
func (l *oneConnListener) hijacked(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.closed:
		return false
	default:
	}
	l.tunnel = c
	return true
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
