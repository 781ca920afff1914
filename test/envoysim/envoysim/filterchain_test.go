package envoysim

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
)

// Checklist 3: read filters run in config order and write filters in reverse;
// injected data resumes at the next filter. Processor A tags reads "A" and
// writes "a", B tags "B" and "b": the upstream sees A's output go through B,
// the client sees B's output go through A.
func TestReadFiltersInOrderWriteFiltersInReverse(t *testing.T) {
	_, addrA := startProcessor(t, respond(appendTag("A", "a")))
	_, addrB := startProcessor(t, respond(appendTag("B", "b")))
	up := startUpstream(t, echoHandler)
	s := newSim(t)
	if err := s.Apply([]*listenerv3.Listener{tcpListener(t, "db",
		extProc(t, procConfig("proc_a", "a")), extProc(t, procConfig("proc_b", "b")), tcpProxy(t, "upstream"))},
		[]*clusterv3.Cluster{staticCluster(t, "proc_a", addrA, true), staticCluster(t, "proc_b", addrB, true),
			staticCluster(t, "upstream", up.addr, false)}, nil); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s, "db")
	mustWrite(t, c, "x")
	// upstream echoes "xAB"; the write path is B then A.
	if got := readN(t, c, 5); got != "xABba" {
		t.Fatalf("client got %q, want %q", got, "xABba")
	}
	s.RequireNoViolations(t)
}

// Checklist 2: connection_close_through_filter_manager. The client half-closes,
// the upstream answers "pong" and closes, so tcp_proxy closes the downstream
// while "pong" is at the processor. Off (Envoy's default): the close does not
// wait and "pong" is lost. On: the close is latched until the processor's
// answer has been written.
func TestCloseThroughFilterManagerFlag(t *testing.T) {
	for _, flag := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "on"}[flag], func(t *testing.T) {
			var sim *Sim
			script := func(ctx context.Context, recv <-chan *netextprocv3.ProcessingRequest, send func(*netextprocv3.ProcessingResponse) error) error {
				for req := range recv {
					if req.GetWriteData() != nil && len(req.GetWriteData().GetData()) > 0 {
						if !flag {
							<-ctx.Done() // the sim closed the stream with the connection
							return nil
						}
						if !awaitStat(ctx, sim, "envoysim.delayed_closes", 1) {
							return nil
						}
					}
					if err := send(echoOf(req)); err != nil {
						return err
					}
				}
				return nil
			}
			ps := setupProc(t, script, func(c net.Conn) {
				_, _ = io.ReadAll(c)
				_, _ = c.Write([]byte("pong"))
			}, nil, WithCloseThroughFilterManager(flag))
			sim = ps.sim
			c := dial(t, ps.sim, "db")
			mustWrite(t, c, "ping")
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := readToEOF(t, c)
			if err != nil {
				t.Fatal(err)
			}
			want := map[bool]string{false: "", true: "pong"}[flag]
			if got != want {
				t.Fatalf("client got %q, want %q", got, want)
			}
			lost := ps.sim.Violations()[ViolationUnansweredChunks]
			if want := int64(boolInt(!flag)); lost != want {
				t.Errorf("unanswered chunks = %d, want %d", lost, want)
			}
		})
	}
}

// Checklist 4: in IMMEDIATE mode tcp_proxy dials the upstream at accept, before
// ext_authz or ext_proc have seen a byte (both return Continue from
// onNewConnection in v1.40).
func TestTCPProxyDialsAtAcceptBeforeAuthorization(t *testing.T) {
	az, authAddr := startAuthorizer(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{}}, nil
	})
	proc, procAddr := startProcessor(t, respond(echo))
	up := startUpstream(t, echoHandler)
	s := newSim(t)
	if err := s.Apply([]*listenerv3.Listener{tcpListener(t, "db",
		extAuthz(t, &extauthzv3.ExtAuthz{StatPrefix: "az", GrpcService: grpcService("authz")}),
		extProc(t, procConfig("processor", "ep")), tcpProxy(t, "upstream"))},
		[]*clusterv3.Cluster{staticCluster(t, "processor", procAddr, true), staticCluster(t, "authz", authAddr, true),
			staticCluster(t, "upstream", up.addr, false)}, nil); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s, "db")
	select {
	case <-up.accepted:
	case <-time.After(testTimeout):
		t.Fatal("upstream was not dialled at accept")
	}
	if len(az.reqs) != 0 || len(proc.reqs) != 0 {
		t.Fatal("authorizer or processor was called before the client sent a byte")
	}
	mustWrite(t, c, "hi")
	if got := readN(t, c, 2); got != "hi" {
		t.Fatalf("client got %q", got)
	}
	if len(az.reqs) != 1 {
		t.Fatalf("%d Check calls, want 1", len(az.reqs))
	}
}

// Contract §6: half-close propagates both ways through tcp_proxy.
func TestTCPProxyHalfClose(t *testing.T) {
	up := startUpstream(t, func(c net.Conn) {
		b, _ := io.ReadAll(c) // until the client's FIN arrives
		_, _ = c.Write(append([]byte("got:"), b...))
	})
	s := newSim(t)
	if err := s.Apply([]*listenerv3.Listener{tcpListener(t, "db", tcpProxy(t, "upstream"))},
		[]*clusterv3.Cluster{staticCluster(t, "upstream", up.addr, false)}, nil); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s, "db")
	mustWrite(t, c, "abc")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := readToEOF(t, c)
	if err != nil || got != "got:abc" {
		t.Fatalf("client got %q, %v", got, err)
	}
}

// Contract §6: idle_timeout closes both sides without flushing.
func TestTCPProxyIdleTimeout(t *testing.T) {
	up := startUpstream(t, echoHandler)
	s := newSim(t)
	tp := netFilter(t, "envoy.filters.network.tcp_proxy", &tcpproxyv3.TcpProxy{
		StatPrefix: "tcp", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "upstream"}, IdleTimeout: ms(100),
	})
	if err := s.Apply([]*listenerv3.Listener{tcpListener(t, "db", tp)},
		[]*clusterv3.Cluster{staticCluster(t, "upstream", up.addr, false)}, nil); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s, "db")
	mustWrite(t, c, "x")
	readN(t, c, 1)
	if _, err := readToEOF(t, c); err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().Get("tcp.tcp.idle_timeout"); n != 1 {
		t.Fatalf("idle_timeout = %d", n)
	}
}

// Contract §6: an unreachable upstream closes the downstream.
func TestTCPProxyConnectFailureClosesDownstream(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	_ = ln.Close()
	s := newSim(t)
	if err := s.Apply([]*listenerv3.Listener{tcpListener(t, "db", tcpProxy(t, "upstream"))},
		[]*clusterv3.Cluster{staticCluster(t, "upstream", dead, false)}, nil); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s, "db")
	if _, err := readToEOF(t, c); err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().Get("cluster.upstream.upstream_cx_connect_fail"); n != 1 {
		t.Fatalf("upstream_cx_connect_fail = %d", n)
	}
}
