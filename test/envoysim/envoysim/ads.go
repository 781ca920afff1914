package envoysim

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs of the resources the sim subscribes to.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	SecretType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// adsClient plays an Envoy node on one aggregated, state-of-the-world stream
// (contract §7): the first request carries the last accepted version and no
// nonce; an ACK echoes the response's version and nonce; a NACK keeps the
// previously accepted version, echoes the nonce and carries
// error_detail{code: 13}. CDS is requested first and LDS once the first CDS
// response is handled, or after Envoy's default initial_fetch_timeout (15 s)
// without one, as Envoy's init manager does; RDS is requested for the
// route_config_names the accepted listeners' HCMs reference, and SDS for the
// secret names the accepted listeners and clusters reference.
type adsClient struct {
	sim    *Sim
	cc     *grpc.ClientConn
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	types map[string]*typeState

	sendMu sync.Mutex // gRPC allows one sender at a time
}

// initialFetchTimeout is Envoy's default ConfigSource.initial_fetch_timeout.
const initialFetchTimeout = 15 * time.Second

type typeState struct {
	accepted  string
	nonce     string
	names     []string // nil: wildcard
	requested bool
	acks      int
	nacks     int
	lastNACK  string
}

// XDSStatus is what the sim's ADS client knows of one resource type.
type XDSStatus struct {
	AcceptedVersion string
	ACKs, NACKs     int
	LastNACK        string // error_detail message of the last NACK
}

// ConnectADS subscribes to the ADS server at addr and applies what it
// receives. It returns at once; the stream is re-established after errors.
func (s *Sim) ConnectADS(addr string, dialOpts ...grpc.DialOption) error {
	if len(dialOpts) == 0 {
		dialOpts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	cc, err := grpc.NewClient(addr, dialOpts...)
	if err != nil {
		return fmt.Errorf("envoysim: ADS client: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &adsClient{sim: s, cc: cc, ctx: ctx, cancel: cancel, done: make(chan struct{}), types: map[string]*typeState{
		ClusterType: {}, ListenerType: {}, RouteType: {names: []string{}}, SecretType: {names: []string{}},
	}}
	s.mu.Lock()
	if s.closed || s.xds != nil {
		s.mu.Unlock()
		cancel()
		_ = cc.Close()
		return fmt.Errorf("envoysim: ADS client already started or sim closed")
	}
	s.xds = a
	s.mu.Unlock()
	go a.run()
	return nil
}

// XDS returns the ADS client's state for a type URL (ClusterType, ...).
func (s *Sim) XDS(typeURL string) XDSStatus {
	s.mu.Lock()
	a := s.xds
	s.mu.Unlock()
	if a == nil {
		return XDSStatus{}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ts := a.types[typeURL]
	if ts == nil {
		return XDSStatus{}
	}
	return XDSStatus{AcceptedVersion: ts.accepted, ACKs: ts.acks, NACKs: ts.nacks, LastNACK: ts.lastNACK}
}

func (a *adsClient) stop() {
	a.cancel()
	<-a.done
	_ = a.cc.Close()
}

func (a *adsClient) run() {
	defer close(a.done)
	first := true
	for a.ctx.Err() == nil {
		err := a.session(first)
		first = false
		a.sim.stats.gauge("control_plane.connected_state").Store(0)
		if a.ctx.Err() != nil {
			return
		}
		a.sim.logf("ADS stream: %v; reconnecting", err)
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (a *adsClient) session(first bool) error {
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(a.cc).StreamAggregatedResources(a.ctx)
	if err != nil {
		return err
	}
	a.sim.stats.gauge("control_plane.connected_state").Store(1)
	a.mu.Lock()
	for _, ts := range a.types {
		ts.nonce = "" // nonces do not survive a stream
		ts.requested = false
	}
	a.mu.Unlock()
	if err := a.request(stream, ClusterType); err != nil {
		return err
	}
	if first {
		t := time.AfterFunc(initialFetchTimeout, func() {
			a.mu.Lock()
			pending := !a.types[ListenerType].requested
			a.mu.Unlock()
			if pending {
				a.sim.logf("ADS: no CDS response within initial_fetch_timeout; requesting LDS")
				_ = a.request(stream, ListenerType)
			}
		})
		defer t.Stop()
	} else {
		if err := a.request(stream, ListenerType); err != nil {
			return err
		}
		if err := a.maybeRequestRoutes(stream, true); err != nil {
			return err
		}
		if err := a.maybeRequestSecrets(stream, true); err != nil {
			return err
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := a.handle(stream, resp); err != nil {
			return err
		}
	}
}

type adsStream = discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient

// request sends a subscription request: the last accepted version and the
// latest nonce of the type on this stream ("" on the first request).
func (a *adsClient) request(stream adsStream, typeURL string) error {
	a.mu.Lock()
	ts := a.types[typeURL]
	ts.requested = true
	req := &discoveryv3.DiscoveryRequest{
		VersionInfo: ts.accepted, Node: a.sim.opts.node, ResourceNames: ts.names,
		TypeUrl: typeURL, ResponseNonce: ts.nonce,
	}
	a.mu.Unlock()
	return a.send(stream, req)
}

func (a *adsClient) send(stream adsStream, req *discoveryv3.DiscoveryRequest) error {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	return stream.Send(req)
}

func (a *adsClient) handle(stream adsStream, resp *discoveryv3.DiscoveryResponse) error {
	typeURL := resp.GetTypeUrl()
	a.mu.Lock()
	ts := a.types[typeURL]
	if ts == nil {
		a.mu.Unlock()
		a.sim.logf("ADS: ignoring response of unsubscribed type %s", typeURL)
		return nil
	}
	ts.nonce = resp.GetNonce()
	a.mu.Unlock()

	applyErr := a.apply(typeURL, resp.GetResources())

	a.mu.Lock()
	req := &discoveryv3.DiscoveryRequest{
		Node: a.sim.opts.node, ResourceNames: ts.names, TypeUrl: typeURL, ResponseNonce: resp.GetNonce(),
	}
	if applyErr == nil {
		ts.accepted = resp.GetVersionInfo()
		ts.acks++
		req.VersionInfo = ts.accepted
	} else {
		ts.nacks++
		ts.lastNACK = applyErr.Error()
		req.VersionInfo = ts.accepted // the previously accepted version
		req.ErrorDetail = &status.Status{Code: int32(codes.Internal), Message: applyErr.Error()}
	}
	lds := typeURL == ClusterType && !a.types[ListenerType].requested
	a.mu.Unlock()
	a.sim.mu.Lock()
	a.sim.notifyLocked()
	a.sim.mu.Unlock()
	if applyErr != nil {
		a.sim.logf("ADS: NACK %s version %q: %v", typeURL, resp.GetVersionInfo(), applyErr)
	}
	if err := a.send(stream, req); err != nil {
		return err
	}
	if lds {
		if err := a.request(stream, ListenerType); err != nil {
			return err
		}
	}
	if err := a.maybeRequestRoutes(stream, false); err != nil {
		return err
	}
	return a.maybeRequestSecrets(stream, false)
}

func (a *adsClient) apply(typeURL string, res []*anypb.Any) error {
	switch typeURL {
	case ClusterType:
		cs, err := decodeAll[*clusterv3.Cluster](res, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })
		if err != nil {
			return err
		}
		return a.sim.applyClusters(cs)
	case ListenerType:
		ls, err := decodeAll[*listenerv3.Listener](res, func() *listenerv3.Listener { return &listenerv3.Listener{} })
		if err != nil {
			return err
		}
		return a.sim.applyListeners(ls)
	case RouteType:
		rs, err := decodeAll[*routev3.RouteConfiguration](res, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} })
		if err != nil {
			return err
		}
		return a.sim.ApplyRoutes(rs)
	case SecretType:
		ss, err := decodeAll[*tlsv3.Secret](res, func() *tlsv3.Secret { return &tlsv3.Secret{} })
		if err != nil {
			return err
		}
		return a.sim.applySecrets(ss)
	}
	return fmt.Errorf("unsupported type %s", typeURL)
}

// decodeAll unpacks every resource; one that does not decode rejects the
// whole response, as in Envoy.
func decodeAll[T proto.Message](res []*anypb.Any, newT func() T) ([]T, error) {
	out := make([]T, 0, len(res))
	for _, r := range res {
		m := newT()
		if err := r.UnmarshalTo(m); err != nil {
			return nil, fmt.Errorf("decoding %s: %w", r.GetTypeUrl(), err)
		}
		out = append(out, m)
	}
	return out, nil
}

// maybeRequestRoutes (re)subscribes to the RDS route configurations that
// accepted listeners name, when that set changed.
func (a *adsClient) maybeRequestRoutes(stream adsStream, force bool) error {
	names := a.sim.referencedRoutes()
	a.mu.Lock()
	ts := a.types[RouteType]
	same := slices.Equal(names, ts.names)
	if len(names) == 0 || same && !force && ts.requested {
		a.mu.Unlock()
		return nil
	}
	ts.names = names
	a.mu.Unlock()
	return a.request(stream, RouteType)
}

// maybeRequestSecrets (re)subscribes to the SDS secrets that accepted
// listeners and clusters name, when that set changed.
func (a *adsClient) maybeRequestSecrets(stream adsStream, force bool) error {
	names := a.sim.referencedSecrets()
	a.mu.Lock()
	ts := a.types[SecretType]
	same := slices.Equal(names, ts.names)
	if len(names) == 0 || same && !force && ts.requested {
		a.mu.Unlock()
		return nil
	}
	ts.names = names
	a.mu.Unlock()
	return a.request(stream, SecretType)
}

// referencedSecrets lists, sorted, the SDS names the configuration needs.
func (s *Sim) referencedSecrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := map[string]bool{}
	for _, le := range s.listeners {
		for _, lc := range []*listenerConfig{le.active.Load(), le.warming} {
			if lc == nil {
				continue
			}
			for _, n := range lc.secretNames {
				set[n] = true
			}
		}
	}
	for _, ce := range s.clusters {
		for _, n := range ce.secretNames {
			set[n] = true
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
