package envoysim

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// The router's upstream side: one net/http Transport per cluster entry (its
// connection pool), dialling through the cluster's endpoints and transport
// socket (cluster.go, tls.go), and the pipe that carries a request body to it.

// upstreamConnectError marks a failure to connect (TCP or TLS).
type upstreamConnectError struct {
	err       error
	transport string // the TLS failure, if that is what failed
}

func (e *upstreamConnectError) Error() string { return e.err.Error() }
func (e *upstreamConnectError) Unwrap() error { return e.err }

// upstreamTransport returns the connection pool of a cluster entry. An updated
// cluster is a new entry, so it gets a new pool, as in Envoy.
func (s *Sim) upstreamTransport(ce *clusterEntry) *http.Transport {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tr := s.transports[ce]; tr != nil {
		return tr
	}
	stat := "cluster." + ce.name + "."
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		s.stats.counter(stat + "upstream_cx_total").Add(1)
		c, err := s.dial(ctx, ce)
		if err != nil {
			s.stats.counter(stat + "upstream_cx_connect_fail").Add(1)
			ue := &upstreamConnectError{err: err}
			var re *net.OpError
			if ce.tls != nil && !errors.As(err, &re) {
				ue.transport = "TLS_error: " + err.Error()
			}
			return nil, ue
		}
		return c, nil
	}
	var protos http.Protocols
	switch {
	case ce.http2 && ce.tls != nil:
		protos.SetHTTP2(true)
	case ce.http2:
		protos.SetUnencryptedHTTP2(true)
	default:
		protos.SetHTTP1(true)
	}
	tr := &http.Transport{
		DialContext: dial, DisableCompression: true, Protocols: &protos,
		MaxIdleConnsPerHost: 100, IdleConnTimeout: time.Hour, // Envoy's default idle_timeout
	}
	if ce.tls != nil {
		tr.DialTLSContext = dial
	}
	s.transports[ce] = tr
	return tr
}

// bodyPipe carries the request body to the upstream request without ever
// blocking the writer (the dispatcher).
type bodyPipe struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	eof    bool
	failed bool
}

func newBodyPipe() *bodyPipe {
	p := &bodyPipe{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *bodyPipe) write(b []byte, end bool) {
	p.mu.Lock()
	p.buf = append(p.buf, b...)
	p.eof = p.eof || end
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *bodyPipe) abort() {
	p.mu.Lock()
	p.failed = true
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *bodyPipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.buf) == 0 && !p.eof && !p.failed {
		p.cond.Wait()
	}
	switch {
	case p.failed:
		return 0, errors.New("envoysim: upstream request aborted")
	case len(p.buf) > 0:
		n := copy(b, p.buf)
		p.buf = p.buf[n:]
		return n, nil
	}
	return 0, io.EOF
}

func (p *bodyPipe) Close() error {
	p.abort()
	return nil
}
