package envoysim

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// testTimeout bounds every wait in these tests; nothing waits on it to pass.
const testTimeout = 10 * time.Second

func newSim(t *testing.T, opts ...Option) *Sim {
	t.Helper()
	s := New(append([]Option{WithLogf(t.Logf)}, opts...)...)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// --- scripted network ext_proc processors -------------------------------

// procScript handles one Process stream. Returning errOKClose ends the stream
// with status OK; any other error ends it with that status.
type procScript func(ctx context.Context, recv <-chan *netextprocv3.ProcessingRequest, send func(*netextprocv3.ProcessingResponse) error) error

var errOKClose = errors.New("close the stream with OK")

type processor struct {
	netextprocv3.UnimplementedNetworkExternalProcessorServer
	script procScript
	reqs   chan *netextprocv3.ProcessingRequest // every request, for assertions
	ended  chan struct{}                        // one value per finished stream
}

func (p *processor) Process(stream netextprocv3.NetworkExternalProcessor_ProcessServer) error {
	defer func() { p.ended <- struct{}{} }()
	recv := make(chan *netextprocv3.ProcessingRequest, 100)
	go func() {
		defer close(recv)
		for {
			req, err := stream.Recv()
			if err != nil {
				return
			}
			p.reqs <- req
			recv <- req
		}
	}()
	var mu sync.Mutex
	send := func(r *netextprocv3.ProcessingResponse) error {
		mu.Lock()
		defer mu.Unlock()
		return stream.Send(r)
	}
	err := p.script(stream.Context(), recv, send)
	if errors.Is(err, errOKClose) {
		return nil
	}
	return err
}

// startProcessor serves script on 127.0.0.1 and returns its address.
func startProcessor(t *testing.T, script procScript) (*processor, string) {
	t.Helper()
	p := &processor{script: script, reqs: make(chan *netextprocv3.ProcessingRequest, 1000), ended: make(chan struct{}, 100)}
	g := grpc.NewServer()
	netextprocv3.RegisterNetworkExternalProcessorServer(g, p)
	return p, serveGRPC(t, g)
}

func serveGRPC(t *testing.T, g *grpc.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return ln.Addr().String()
}

// respond is a script body: it answers each request with what reply returns.
func respond(reply func(*netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse) procScript {
	return func(ctx context.Context, recv <-chan *netextprocv3.ProcessingRequest, send func(*netextprocv3.ProcessingResponse) error) error {
		for req := range recv {
			for _, r := range reply(req) {
				if err := send(r); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

// echo answers every chunk with its bytes and end_of_stream, as Envoy's own
// integration tests do.
func echo(req *netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse {
	return []*netextprocv3.ProcessingResponse{echoOf(req)}
}

func echoOf(req *netextprocv3.ProcessingRequest) *netextprocv3.ProcessingResponse {
	if d := req.GetReadData(); d != nil {
		return &netextprocv3.ProcessingResponse{ReadData: &netextprocv3.Data{Data: d.GetData(), EndOfStream: d.GetEndOfStream()}}
	}
	d := req.GetWriteData()
	return &netextprocv3.ProcessingResponse{WriteData: &netextprocv3.Data{Data: d.GetData(), EndOfStream: d.GetEndOfStream()}}
}

// appendTag rewrites: read chunks get readTag appended, write chunks writeTag.
func appendTag(readTag, writeTag string) func(*netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse {
	return func(req *netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse {
		r := echoOf(req)
		if d := r.GetReadData(); d != nil && len(d.Data) > 0 {
			d.Data = append(append([]byte{}, d.Data...), readTag...)
		}
		if d := r.GetWriteData(); d != nil && len(d.Data) > 0 {
			d.Data = append(append([]byte{}, d.Data...), writeTag...)
		}
		return []*netextprocv3.ProcessingResponse{r}
	}
}

// --- scripted authorizers ------------------------------------------------

type authorizer struct {
	authv3.UnimplementedAuthorizationServer
	check func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error)
	reqs  chan *authv3.CheckRequest
}

func (a *authorizer) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	a.reqs <- req
	return a.check(ctx, req)
}

func startAuthorizer(t *testing.T, check func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error)) (*authorizer, string) {
	t.Helper()
	a := &authorizer{check: check, reqs: make(chan *authv3.CheckRequest, 100)}
	g := grpc.NewServer()
	authv3.RegisterAuthorizationServer(g, a)
	return a, serveGRPC(t, g)
}

// --- upstream servers ----------------------------------------------------

type upstream struct {
	addr     string
	accepted chan net.Conn
}

// startUpstream serves handle for every connection and reports each accept.
func startUpstream(t *testing.T, handle func(net.Conn)) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	u := &upstream{addr: ln.Addr().String(), accepted: make(chan net.Conn, 100)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted <- c
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return u
}

// echoHandler copies bytes back and half-closes after the client's EOF.
func echoHandler(c net.Conn) {
	_, _ = io.Copy(c, c)
	_ = c.(*net.TCPConn).CloseWrite()
	_, _ = io.Copy(io.Discard, c)
}

// recordHandler sends everything it receives on got until EOF.
func recordHandler(got chan<- []byte) func(net.Conn) {
	return func(c net.Conn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				got <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				close(got)
				return
			}
		}
	}
}

// --- config builders -----------------------------------------------------

func typed(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func socketAddr(t testing.TB, hostport string) *corev3.Address {
	t.Helper()
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
	}}}
}

// staticCluster is a STATIC cluster with one endpoint; http2 for gRPC services.
func staticCluster(t testing.TB, name, addr string, http2 bool) *clusterv3.Cluster {
	t.Helper()
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
				Endpoint: &endpointv3.Endpoint{Address: socketAddr(t, addr)},
			}}},
		}}},
	}
	if http2 {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: typed(t, &httpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
			}},
		})}
	}
	return c
}

func netFilter(t testing.TB, name string, m proto.Message) *listenerv3.Filter {
	t.Helper()
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(t, m)}}
}

// tcpListener listens on 127.0.0.1:0 with one filter chain.
func tcpListener(t testing.TB, name string, filters ...*listenerv3.Filter) *listenerv3.Listener {
	t.Helper()
	return &listenerv3.Listener{
		Name:         name,
		Address:      socketAddr(t, "127.0.0.1:0"),
		FilterChains: []*listenerv3.FilterChain{{Filters: filters}},
	}
}

func grpcService(cluster string) *corev3.GrpcService {
	return &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster}}}
}

func procConfig(cluster, statPrefix string) *extprocv3.NetworkExternalProcessor {
	return &extprocv3.NetworkExternalProcessor{GrpcService: grpcService(cluster), StatPrefix: statPrefix}
}

func extProc(t testing.TB, cfg *extprocv3.NetworkExternalProcessor) *listenerv3.Filter {
	return netFilter(t, "envoy.filters.network.ext_proc", cfg)
}

func tcpProxy(t testing.TB, cluster string) *listenerv3.Filter {
	return netFilter(t, "envoy.filters.network.tcp_proxy", &tcpproxyv3.TcpProxy{
		StatPrefix: "tcp", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
	})
}

func extAuthz(t testing.TB, cfg *extauthzv3.ExtAuthz) *listenerv3.Filter {
	return netFilter(t, "envoy.filters.network.ext_authz", cfg)
}

func ms(n int) *durationpb.Duration { return durationpb.New(time.Duration(n) * time.Millisecond) }

// --- client side ---------------------------------------------------------

func dial(t *testing.T, s *Sim, listener string) *net.TCPConn {
	t.Helper()
	addr := s.ListenerAddr(listener)
	if addr == "" {
		t.Fatalf("listener %s is not active", listener)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	return c.(*net.TCPConn)
}

func mustWrite(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

// readN reads exactly n bytes.
func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v (got %q)", n, err, b)
	}
	return string(b)
}

// readToEOF reads until the peer closes and returns what came and how it ended.
func readToEOF(t *testing.T, c net.Conn) (string, error) {
	t.Helper()
	b, err := io.ReadAll(c)
	return string(b), err
}

func recvReq(t *testing.T, ch <-chan *netextprocv3.ProcessingRequest) *netextprocv3.ProcessingRequest {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(testTimeout):
		t.Fatal("processor received no request")
	}
	return nil
}

func recvBytes(t *testing.T, ch <-chan []byte) []byte {
	t.Helper()
	select {
	case b := <-ch:
		return b
	case <-time.After(testTimeout):
		t.Fatal("upstream received nothing")
	}
	return nil
}

// awaitStat polls the stat store (it has no change notification) until name
// reaches want or ctx ends. Safe from any goroutine.
func awaitStat(ctx context.Context, s *Sim, name string, want int64) bool {
	for s.Stats().Get(name) < want {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}

// waitStat is awaitStat for the test goroutine.
func waitStat(t *testing.T, s *Sim, name string, want int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if !awaitStat(ctx, s, name, want) {
		t.Fatalf("stat %s = %d, want %d", name, s.Stats().Get(name), want)
	}
}
