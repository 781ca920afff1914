package envoysim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"
)

// Option configures a Sim.
type Option func(*options)

type options struct {
	closeThroughFilterManager bool
	logf                      func(format string, args ...any)
	node                      *corev3.Node
	connLog                   func(ConnInfo)
	streamLog                 func(HTTPStreamInfo)
}

// ConnInfo describes a closed downstream connection, like a line of Envoy's
// TCP access log.
type ConnInfo struct {
	ID              uint64
	Listener        string
	RemoteAddr      string
	CloseDetails    string // e.g. ext_authz_close, ext_proc_message_timeout
	DynamicMetadata *corev3.Metadata
}

// WithConnectionLog calls log for every downstream connection when it closes.
func WithConnectionLog(log func(ConnInfo)) Option {
	return func(o *options) { o.connLog = log }
}

// WithCloseThroughFilterManager models the runtime flag
// envoy.reloadable_features.connection_close_through_filter_manager. Envoy's
// default, and the sim's, is off: a close does not wait for filters that called
// disableClose(true), so bytes held at an ext_proc processor are lost (contract
// §0.1). Envoy's network ext_proc integration tests switch it on.
func WithCloseThroughFilterManager(on bool) Option {
	return func(o *options) { o.closeThroughFilterManager = on }
}

// WithLogf sends the sim's debug log to logf (for example t.Logf).
func WithLogf(logf func(format string, args ...any)) Option {
	return func(o *options) { o.logf = logf }
}

// WithNode sets the node the sim presents to the ADS server and whose metadata
// ext_authz's bootstrap_metadata_labels_key reads.
func WithNode(node *corev3.Node) Option {
	return func(o *options) { o.node = node }
}

// Sim is one Envoy stand-in: listeners, clusters and secrets, given directly
// with Apply or received over ADS with ConnectADS.
type Sim struct {
	opts    options
	stats   *Stats
	connSeq atomic.Uint64

	mu        sync.Mutex
	closed    bool
	clusters  map[string]*clusterEntry
	secrets   map[string]*tlsv3.Secret
	routes    map[string]*routeTable
	listeners map[string]*listenerEntry
	grpcConns map[string]*grpc.ClientConn
	oldGRPC   []*grpc.ClientConn
	conns     map[*conn]struct{}
	accepting map[net.Conn]struct{} // sockets still in the listener-filter phase
	// httpServers serve one HCM connection each; transports are the router's
	// connection pools, by cluster entry.
	httpServers map[*http.Server]struct{}
	transports  map[*clusterEntry]*http.Transport
	changed     chan struct{} // closed and replaced on every config change
	xds         *adsClient

	wg sync.WaitGroup
}

// New returns a Sim with no configuration.
func New(opts ...Option) *Sim {
	s := &Sim{
		stats:     newStats(),
		clusters:  map[string]*clusterEntry{},
		secrets:   map[string]*tlsv3.Secret{},
		routes:    map[string]*routeTable{},
		listeners: map[string]*listenerEntry{},
		grpcConns: map[string]*grpc.ClientConn{},
		conns:     map[*conn]struct{}{},
		accepting: map[net.Conn]struct{}{},
		changed:   make(chan struct{}),

		httpServers: map[*http.Server]struct{}{},
		transports:  map[*clusterEntry]*http.Transport{},
	}
	for _, o := range opts {
		o(&s.opts)
	}
	if s.opts.node == nil {
		s.opts.node = &corev3.Node{Id: "envoysim", Cluster: "envoysim"}
	}
	return s
}

// Stats returns the stat store (Envoy stat names).
func (s *Sim) Stats() *Stats { return s.stats }

func (s *Sim) logf(format string, args ...any) {
	if s.opts.logf != nil {
		s.opts.logf("envoysim: "+format, args...)
	}
}

func (s *Sim) nextConnID() uint64 { return s.connSeq.Add(1) }

// Apply replaces the whole configuration, state-of-the-world style: secrets,
// then clusters, then listeners, each type as one xDS response would be.
// Resources that are valid are applied even when others are rejected, as Envoy
// does for LDS and CDS; the error names every rejected resource.
func (s *Sim) Apply(listeners []*listenerv3.Listener, clusters []*clusterv3.Cluster, secrets []*tlsv3.Secret) error {
	var errs []error
	if err := s.applySecrets(secrets); err != nil {
		errs = append(errs, err)
	}
	if err := s.applyClusters(clusters); err != nil {
		errs = append(errs, err)
	}
	if err := s.applyListeners(listeners); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ListenerAddr returns the address an active listener is bound to ("" if the
// listener is unknown or still warming).
func (s *Sim) ListenerAddr(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	le := s.listeners[name]
	if le == nil || le.ln == nil {
		return ""
	}
	return le.ln.Addr().String()
}

// Changed returns a channel closed at the next configuration change.
func (s *Sim) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// notifyLocked wakes Changed waiters; s.mu must be held.
func (s *Sim) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitPoll is how often WaitFor re-evaluates a condition between
// configuration changes: conditions on stats change without a signal.
const waitPoll = 10 * time.Millisecond

// WaitFor blocks until cond is true, evaluating it after each
// configuration change and every waitPoll (for conditions on stats).
func (s *Sim) WaitFor(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(waitPoll)
	defer t.Stop()
	for {
		ch := s.Changed()
		if cond() {
			return nil
		}
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("envoysim: waiting: %w", ctx.Err())
		}
	}
}

// Close stops the ADS client and the listeners and closes every connection.
func (s *Sim) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	xds := s.xds
	var lns []net.Listener
	for _, le := range s.listeners {
		if le.ln != nil {
			lns = append(lns, le.ln)
		}
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	for raw := range s.accepting {
		_ = raw.Close()
	}
	grpcs := append([]*grpc.ClientConn(nil), s.oldGRPC...)
	for _, cc := range s.grpcConns {
		grpcs = append(grpcs, cc)
	}
	servers := make([]*http.Server, 0, len(s.httpServers))
	for srv := range s.httpServers {
		servers = append(servers, srv)
	}
	transports := make([]*http.Transport, 0, len(s.transports))
	for _, tr := range s.transports {
		transports = append(transports, tr)
	}
	s.mu.Unlock()

	if xds != nil {
		xds.stop()
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	for _, c := range conns {
		c.d.post(func() { c.close(closeNoFlush, "envoysim_shutdown") })
	}
	for _, srv := range servers {
		_ = srv.Close() // request handlers see their context end and finish
	}
	s.wg.Wait()
	for _, tr := range transports {
		tr.CloseIdleConnections()
	}
	for _, cc := range grpcs {
		_ = cc.Close()
	}
	return nil
}

func (s *Sim) trackConn(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// trackAccepting records a socket in the listener-filter phase so that Close
// can interrupt it; done removes it.
func (s *Sim) trackAccepting(raw net.Conn) (ok bool, done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, nil
	}
	s.accepting[raw] = struct{}{}
	return true, func() {
		s.mu.Lock()
		delete(s.accepting, raw)
		s.mu.Unlock()
	}
}

func (s *Sim) untrackConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}
