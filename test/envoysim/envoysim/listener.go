package envoysim

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
)

// listenerEntry is one named listener. Owner: s.mu, except active, which the
// accept loop reads without the lock.
type listenerEntry struct {
	name    string
	proto   *listenerv3.Listener // last accepted version (active or warming)
	active  atomic.Pointer[listenerConfig]
	warming *listenerConfig
	ln      net.Listener
}

// applyListeners is LDS state of the world, with Envoy's acceptance rules
// (source/common/listener_manager/lds_api.cc):
//   - a Listener failing its PGV rules fails decoding of the whole response:
//     nothing is applied;
//   - otherwise listeners missing from the set are removed, each listener is
//     added or updated on its own, an unchanged one is skipped (its
//     connections are untouched), and the failures are reported together as
//     "Error adding/updating listener(s) name: reason".
//
// An updated listener on the same address is updated in place: new connections
// get the new filter chains, existing connections keep theirs (Envoy would
// drain them after the drain time; the sim never closes them).
func (s *Sim) applyListeners(ls []*listenerv3.Listener) error {
	for _, l := range ls {
		if err := validate(l); err != nil {
			s.stats.counter("listener_manager.lds.update_rejected").Add(1)
			return fmt.Errorf("listener %s: %w", l.GetName(), err)
		}
	}
	var msgs []string
	names := map[string]bool{}
	for _, l := range ls {
		if names[l.GetName()] {
			msgs = append(msgs, fmt.Sprintf("%s: duplicate listener %s found", l.GetName(), l.GetName()))
			continue
		}
		names[l.GetName()] = true
		s.mu.Lock()
		le := s.listeners[l.GetName()]
		s.mu.Unlock()
		if le != nil && proto.Equal(le.proto, l) {
			continue
		}
		lc, err := s.buildListener(l)
		if err == nil {
			err = s.installListener(l, lc)
		}
		if err != nil {
			msgs = append(msgs, fmt.Sprintf("%s: %v", l.GetName(), err))
		}
	}
	s.mu.Lock()
	for name, le := range s.listeners {
		if !names[name] {
			if le.ln != nil {
				_ = le.ln.Close()
			}
			delete(s.listeners, name)
			s.stats.counter("listener_manager.listener_removed").Add(1)
		}
	}
	s.notifyLocked()
	s.mu.Unlock()
	if len(msgs) > 0 {
		s.stats.counter("listener_manager.lds.update_rejected").Add(1)
		return fmt.Errorf("Error adding/updating listener(s) %s", strings.Join(msgs, "\n"))
	}
	s.stats.counter("listener_manager.lds.update_success").Add(1)
	return nil
}

// installListener makes lc the listener's config, warming it until the SDS
// secrets it names are present.
func (s *Sim) installListener(l *listenerv3.Listener, lc *listenerConfig) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	le := s.listeners[l.GetName()]
	if le == nil {
		le = &listenerEntry{name: l.GetName()}
		s.listeners[l.GetName()] = le
		s.stats.counter("listener_manager.listener_added").Add(1)
	} else {
		s.stats.counter("listener_manager.listener_modified").Add(1)
	}
	le.proto = l
	if missing := s.missingLocked(lc); missing != "" {
		le.warming = lc
		s.logf("listener %s warming: waiting for %s", le.name, missing)
		return nil
	}
	le.warming = nil
	return s.activateLocked(le, lc)
}

// missingLocked names an SDS secret or RDS route configuration lc waits for
// ("" when none); s.mu must be held.
func (s *Sim) missingLocked(lc *listenerConfig) string {
	for _, n := range lc.secretNames {
		if s.secrets[n] == nil {
			return fmt.Sprintf("secret %q", n)
		}
	}
	for _, n := range lc.routeNames {
		if s.routes[n] == nil {
			return fmt.Sprintf("route configuration %q", n)
		}
	}
	return ""
}

// activateWarmingListeners activates listeners whose secrets and route
// configurations have arrived.
func (s *Sim) activateWarmingListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, le := range s.listeners {
		lc := le.warming
		if lc == nil {
			continue
		}
		if s.missingLocked(lc) == "" {
			le.warming = nil
			if err := s.activateLocked(le, lc); err != nil {
				s.logf("listener %s: %v", le.name, err)
			}
		}
	}
	s.notifyLocked()
}

func (s *Sim) activateLocked(le *listenerEntry, lc *listenerConfig) error {
	if s.closed {
		return fmt.Errorf("envoysim is closed")
	}
	if old := le.active.Load(); old != nil && le.ln != nil && proto.Equal(old.proto.GetAddress(), lc.proto.GetAddress()) {
		le.active.Store(lc) // in-place update: the socket and its connections stay
		return nil
	}
	ln, err := net.Listen("tcp", lc.addr)
	if err != nil {
		return fmt.Errorf("cannot bind to %s: %w", lc.addr, err)
	}
	if le.ln != nil {
		_ = le.ln.Close()
	}
	le.ln = ln
	le.active.Store(lc)
	s.wg.Add(1)
	go s.acceptLoop(le, ln)
	return nil
}

func (s *Sim) acceptLoop(le *listenerEntry, ln net.Listener) {
	defer s.wg.Done()
	for {
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		lc := le.active.Load()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.onAccept(lc, raw)
		}()
	}
}

// onAccept runs the listener filters, picks the filter chain and creates the
// connection.
func (s *Sim) onAccept(lc *listenerConfig, raw net.Conn) {
	s.stats.counter(lc.statPrefix + ".downstream_cx_total").Add(1)
	sni, transportProtocol := "", "raw_buffer"
	if lc.tlsInspector {
		ok, done := s.trackAccepting(raw)
		if !ok {
			_ = raw.Close()
			return
		}
		in, err := inspectTLS(raw, lc.inspectorTimeout)
		done()
		if err != nil {
			s.logf("tls_inspector: %v", err)
			_ = raw.Close()
			return
		}
		raw, sni, transportProtocol = in.conn, in.sni, in.transportProtocol
	}
	chain := lc.selectChain(sni, transportProtocol)
	if chain == nil {
		s.stats.counter(lc.statPrefix + ".no_filter_chain_match").Add(1)
		_ = raw.Close()
		return
	}
	if chain.hcm != nil {
		s.serveHTTP(lc, chain, raw, sni)
		return
	}
	d := newDispatcher()
	c := newConn(s, d, raw, false)
	c.requestedServerName = sni
	if !s.trackConn(c) {
		_ = raw.Close()
		return
	}
	c.onClosed = func() {
		s.untrackConn(c)
		d.stop()
		if s.opts.connLog != nil {
			s.opts.connLog(ConnInfo{
				ID: c.id, Listener: lc.proto.GetName(), RemoteAddr: raw.RemoteAddr().String(),
				CloseDetails: c.closeDetails, DynamicMetadata: proto.Clone(c.dynamicMetadata).(*corev3.Metadata),
			})
		}
	}
	c.start()
	d.post(func() { s.initConnection(c, chain) })
	d.run()
}

// initConnection builds the filter chain on the connection's dispatcher and
// starts reading, as Envoy does when a connection is accepted.
func (s *Sim) initConnection(c *conn, chain *filterChainConfig) {
	if chain.transport != transportRaw {
		cfg, leaf, err := s.serverTLSConfig(chain.tls)
		if err != nil {
			s.logf("conn %d: transport socket: %v", c.id, err)
			c.close(closeNoFlush, "transport_socket_error")
			return
		}
		c.localCert = leaf
		if chain.transport == transportTLS {
			c.transport = tls.Server(c.raw, cfg)
		} else {
			c.startTLS = cfg
		}
	}
	for _, f := range chain.factories {
		f(c)
	}
	if len(c.fm.readFilters) == 0 {
		c.close(closeNoFlush, "no_filters")
		return
	}
	c.fm.initializeReadFilters()
	c.giveReadToken()
}
