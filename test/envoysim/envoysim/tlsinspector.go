package envoysim

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// tls_inspector (envoy.filters.listener.tls_inspector) peeks at the first
// bytes: if they are a TLS ClientHello it records the SNI as the connection's
// requestedServerName (the only place Envoy sets it from; ext_authz sends it as
// destination.service) and the transport protocol "tls"; otherwise the
// transport protocol is "raw_buffer". The peeked bytes are replayed.

var errHelloSeen = errors.New("client hello seen")

type inspected struct {
	conn              net.Conn
	sni               string
	transportProtocol string
}

// inspectTLS reads until the ClientHello is parsed or the bytes are not TLS.
func inspectTLS(c net.Conn, timeout time.Duration) (inspected, error) {
	if timeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		defer c.SetReadDeadline(time.Time{})
	}
	var seen bytes.Buffer
	probe := &peekConn{Conn: c, r: io.TeeReader(c, &seen)}
	var sni string
	err := tls.Server(probe, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni = h.ServerName
			return nil, errHelloSeen
		},
	}).Handshake()
	out := inspected{conn: &prefixConn{Conn: c, prefix: seen.Bytes()}, transportProtocol: "raw_buffer"}
	switch {
	case errors.Is(err, errHelloSeen):
		out.sni, out.transportProtocol = sni, "tls"
		return out, nil
	case isTimeout(err), errors.Is(err, io.EOF):
		return out, err
	}
	return out, nil // not TLS: the handshake failed on the first record
}

// peekConn feeds the probing handshake; its writes (alerts) are discarded.
type peekConn struct {
	net.Conn
	r io.Reader
}

func (p *peekConn) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *peekConn) Write(b []byte) (int, error) { return len(b), nil }

// prefixConn replays bytes a listener filter consumed.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// CloseWrite keeps half-close working through the wrapper.
func (p *prefixConn) CloseWrite() error {
	if hc, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return nil
}
