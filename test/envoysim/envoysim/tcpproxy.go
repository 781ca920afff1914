package envoysim

import (
	"context"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
)

// tcp_proxy (envoy.filters.network.tcp_proxy), contract §6, following
// source/common/tcp_proxy/tcp_proxy.cc. Only upstream_connect_mode IMMEDIATE is
// implemented: the downstream is read-disabled at initialization and the
// upstream is dialled in onNewConnection, at accept time, before any filter
// has seen a byte.

var tcpProxyConfigName = (&tcpproxyv3.TcpProxy{}).ProtoReflect().Descriptor().FullName()

type weightedCluster struct {
	name   string
	weight uint32
}

type tcpProxyConfig struct {
	sim                *Sim
	cluster            string
	weighted           []weightedCluster
	totalWeight        uint32
	idleTimeout        time.Duration // 0: disabled
	maxConnectAttempts int

	cxTotal, idleTimeouts, noRoute, attemptsExceeded *atomic.Int64
}

func buildTCPProxy(cb *chainBuild, _ string, m proto.Message) (filterFactory, error) {
	pc := m.(*tcpproxyv3.TcpProxy)
	if pc.GetUpstreamConnectMode() != tcpproxyv3.UpstreamConnectMode_IMMEDIATE {
		return nil, errors.New("upstream_connect_mode other than IMMEDIATE is not implemented by envoysim")
	}
	if err := checkFields(pc, "stat_prefix", "cluster", "weighted_clusters", "idle_timeout",
		"max_connect_attempts", "upstream_connect_mode",
		// Access logging does not change what a connection observes.
		"access_log", "access_log_flush_interval", "flush_access_log_on_connected", "access_log_options",
		"check_drain_close"); err != nil {
		return nil, err
	}
	cfg := &tcpProxyConfig{sim: cb.sim, cluster: pc.GetCluster(), idleTimeout: time.Hour, maxConnectAttempts: 1}
	for _, w := range pc.GetWeightedClusters().GetClusters() {
		if err := checkFields(w, "name", "weight"); err != nil {
			return nil, err
		}
		cfg.weighted = append(cfg.weighted, weightedCluster{w.GetName(), w.GetWeight()})
		cfg.totalWeight += w.GetWeight()
	}
	if pc.GetIdleTimeout() != nil {
		cfg.idleTimeout = pc.GetIdleTimeout().AsDuration()
	}
	if pc.GetMaxConnectAttempts() != nil {
		cfg.maxConnectAttempts = int(pc.GetMaxConnectAttempts().GetValue())
	}
	p := "tcp." + pc.GetStatPrefix() + "."
	st := cb.sim.stats
	cfg.cxTotal, cfg.idleTimeouts = st.counter(p+"downstream_cx_total"), st.counter(p+"idle_timeout")
	cfg.noRoute, cfg.attemptsExceeded = st.counter(p+"downstream_cx_no_route"), st.counter(p+"upstream_cx_connect_attempts_exceeded")
	return func(c *conn) { c.fm.addReadFilter(&tcpProxyFilter{cfg: cfg, conn: c}) }, nil
}

type tcpProxyFilter struct {
	cfg        *tcpProxyConfig
	conn       *conn
	cb         *activeReadFilter
	upstream   *conn
	connecting bool
	attempts   int
	cancelDial context.CancelFunc
	idle       *timer
	early      buffer // bytes that reached the filter before the upstream connected
	earlyEnd   bool
}

func (f *tcpProxyFilter) initializeReadFilterCallbacks(cb *activeReadFilter) {
	f.cb = cb
	f.conn.addConnectionCallbacks(f.onDownstreamEvent)
	f.conn.enableHalfClose(true)
	// Reads stay off until the upstream connects, so onData never runs with
	// nowhere to send the bytes.
	f.conn.readDisable(true)
	f.cfg.cxTotal.Add(1)
	f.idle = f.conn.d.newTimer(f.onIdleTimeout)
}

func (f *tcpProxyFilter) onNewConnection() filterStatus {
	// Since 1.36 the idle timer starts with the connection, before the upstream
	// connects (tcp_proxy_set_idle_timer_immediately_on_new_connection).
	f.resetIdleTimer()
	return f.initializeUpstreamConnection()
}

func (f *tcpProxyFilter) pickCluster() string {
	if len(f.cfg.weighted) == 0 {
		return f.cfg.cluster
	}
	n := rand.Uint32N(max(f.cfg.totalWeight, 1))
	for _, w := range f.cfg.weighted {
		if n < w.weight {
			return w.name
		}
		n -= w.weight
	}
	return f.cfg.weighted[len(f.cfg.weighted)-1].name
}

func (f *tcpProxyFilter) initializeUpstreamConnection() filterStatus {
	name := f.pickCluster()
	ce := f.cfg.sim.cluster(name)
	if ce == nil {
		f.cfg.noRoute.Add(1)
		f.onInitFailure("no route to cluster " + name)
		return stopIteration
	}
	if f.attempts >= f.cfg.maxConnectAttempts {
		f.cfg.attemptsExceeded.Add(1)
		f.onInitFailure("connect attempts exceeded")
		return stopIteration
	}
	f.connecting = true
	f.attempts++
	ctx, cancel := context.WithCancel(context.Background())
	f.cancelDial = cancel
	st := f.cfg.sim.stats
	st.counter("cluster." + name + ".upstream_cx_total").Add(1)
	d, sim := f.conn.d, f.cfg.sim
	go func() {
		nc, err := sim.dial(ctx, ce)
		var startTLS *tls.Config
		if err == nil {
			if startTLS, err = sim.upstreamStartTLS(ce); err != nil {
				_ = nc.Close()
				nc = nil
			}
		}
		if err != nil {
			st.counter("cluster." + name + ".upstream_cx_connect_fail").Add(1)
		}
		if !d.post(func() { f.onDialed(ctx, nc, startTLS, err) }) && nc != nil {
			_ = nc.Close()
		}
	}()
	return stopIteration
}

// onDialed adopts the upstream connection; startTLS is set for a starttls
// cluster, whose connection a filter may switch to TLS later.
func (f *tcpProxyFilter) onDialed(ctx context.Context, nc net.Conn, startTLS *tls.Config, err error) {
	if ctx.Err() != nil || f.conn.state == stateClosed {
		if nc != nil {
			_ = nc.Close()
		}
		return
	}
	if err != nil {
		f.cfg.sim.logf("conn %d: tcp_proxy: upstream connect: %v", f.conn.id, err)
		f.onUpstreamEvent(evRemoteClose)
		return
	}
	up := newConn(f.cfg.sim, f.conn.d, nc, true)
	up.startTLS = startTLS
	up.enableHalfClose(true)
	up.upstreamData = f.onUpstreamData
	up.addConnectionCallbacks(f.onUpstreamEvent)
	f.upstream = up
	up.start()
	up.giveReadToken()
	f.onUpstreamEvent(evConnected)
}

func (f *tcpProxyFilter) onInitFailure(reason string) {
	f.cfg.sim.logf("conn %d: tcp_proxy: %s", f.conn.id, reason)
	f.conn.close(closeNoFlush, "tcp_proxy_init_failure")
}

// startUpstreamSecureTransport is Filter::startUpstreamSecureTransport: it
// switches the upstream connection's starttls socket to TLS. It fails
// without an upstream or with another transport socket.
func (f *tcpProxyFilter) startUpstreamSecureTransport() bool {
	if f.upstream == nil {
		return false
	}
	return f.upstream.startSecureTransport()
}

// onData is terminal: it always drains and stops.
func (f *tcpProxyFilter) onData(data *buffer, endStream bool) filterStatus {
	if f.upstream != nil {
		f.upstream.write(data.take(), endStream)
	} else {
		f.early.add(data.take())
		f.earlyEnd = f.earlyEnd || endStream
	}
	f.resetIdleTimer()
	return stopIteration
}

func (f *tcpProxyFilter) onUpstreamData(data *buffer, endStream bool) {
	f.cfg.sim.logf("conn %d: tcp_proxy: upstream data %d bytes end_stream=%v", f.conn.id, data.Len(), endStream)
	f.conn.write(data.take(), endStream)
	f.resetIdleTimer()
}

func (f *tcpProxyFilter) onUpstreamEvent(ev connEvent) {
	f.cfg.sim.logf("conn %d: tcp_proxy: upstream event %s", f.conn.id, ev)
	connecting := f.connecting
	f.connecting = false
	switch ev {
	case evRemoteClose, evLocalClose:
		f.upstream = nil
		f.idle.disable()
		if connecting {
			f.initializeUpstreamConnection()
			return
		}
		if f.conn.state == stateOpen {
			f.conn.close(closeFlushWrite, "upstream_closed")
		}
	case evConnected:
		f.conn.readDisable(false)
		f.resetIdleTimer()
		if f.early.Len() > 0 || f.earlyEnd {
			f.upstream.write(f.early.take(), f.earlyEnd)
		}
	}
}

func (f *tcpProxyFilter) onDownstreamEvent(ev connEvent) {
	if ev != evRemoteClose && ev != evLocalClose {
		return
	}
	if f.upstream != nil {
		if ev == evRemoteClose {
			f.upstream.close(closeFlushWrite, "downstream_remote_close")
		} else {
			f.upstream.close(closeNoFlush, "downstream_local_close")
		}
		f.upstream = nil
	}
	if f.cancelDial != nil {
		f.cancelDial()
	}
	f.idle.disable()
}

func (f *tcpProxyFilter) resetIdleTimer() {
	if f.cfg.idleTimeout > 0 && f.conn.state == stateOpen {
		f.idle.enable(f.cfg.idleTimeout)
	}
}

// onIdleTimeout closes both sides without flushing.
func (f *tcpProxyFilter) onIdleTimeout() {
	f.cfg.idleTimeouts.Add(1)
	f.conn.close(closeNoFlush, "tcp_proxy_idle_timeout")
}
