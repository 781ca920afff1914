package envoysim

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Checklist 1: CLOSE and CLOSE_RST close the connection and drop the data of
// the response that carries them.
func TestExtProcCloseAndCloseRSTDropTheirData(t *testing.T) {
	for _, tc := range []struct {
		status netextprocv3.ProcessingResponse_ConnectionStatus
		reset  bool
	}{
		{netextprocv3.ProcessingResponse_CLOSE, false},
		{netextprocv3.ProcessingResponse_CLOSE_RST, true},
	} {
		t.Run(tc.status.String(), func(t *testing.T) {
			script := respond(func(req *netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse {
				return []*netextprocv3.ProcessingResponse{{ConnectionStatus: tc.status, ReadData: &netextprocv3.Data{Data: []byte("leak")}}}
			})
			got := make(chan []byte, 100)
			ps := setupProc(t, script, recordHandler(got), nil)
			c := dial(t, ps.sim, "db")
			mustWrite(t, c, "x")
			_, err := readToEOF(t, c)
			if isReset := errors.Is(err, syscall.ECONNRESET); isReset != tc.reset {
				t.Fatalf("client read ended with %v, want reset=%v", err, tc.reset)
			}
			if b, ok := <-got; ok {
				t.Errorf("upstream received %q", b)
			}
			st := ps.sim.Stats()
			if st.Get("network_ext_proc.ep.connections_closed") != 1 {
				t.Error("connections_closed != 1")
			}
			if want := int64(boolInt(tc.reset)); st.Get("network_ext_proc.ep.connections_reset") != want {
				t.Errorf("connections_reset != %d", want)
			}
		})
	}
}

// Checklist 1: a gRPC OK close by the processor leaves the connection open;
// later bytes pass through unprocessed, the unanswered chunk is lost.
func TestExtProcOKCloseLeavesConnectionOpen(t *testing.T) {
	script := func(ctx context.Context, recv <-chan *netextprocv3.ProcessingRequest, send func(*netextprocv3.ProcessingResponse) error) error {
		<-recv
		return errOKClose
	}
	got := make(chan []byte, 100)
	ps := setupProc(t, script, recordHandler(got), nil)
	c := dial(t, ps.sim, "db")
	mustWrite(t, c, "lost")
	waitStat(t, ps.sim, "network_ext_proc.ep.streams_grpc_close", 1)
	mustWrite(t, c, "after")
	if s := collect(t, got, 5); s != "after" {
		t.Fatalf("upstream got %q", s)
	}
	if v := ps.sim.Violations()[ViolationUnansweredChunks]; v != 1 {
		t.Errorf("unanswered = %d, want 1", v)
	}
}

// Checklist 1: a gRPC error or a message timeout closes the connection unless
// failure_mode_allow; in fail-open the bytes at the processor are lost and
// later bytes pass through unprocessed.
func TestExtProcFailuresCloseUnlessFailOpen(t *testing.T) {
	grpcError := func(ctx context.Context, recv <-chan *netextprocv3.ProcessingRequest, _ func(*netextprocv3.ProcessingResponse) error) error {
		<-recv
		return status.Error(codes.Unavailable, "processor broke")
	}
	silent := func(ctx context.Context, recv <-chan *netextprocv3.ProcessingRequest, _ func(*netextprocv3.ProcessingResponse) error) error {
		<-ctx.Done()
		return nil
	}
	for _, tc := range []struct {
		name    string
		script  procScript
		stat    string
		details string
	}{
		{"grpc_error", grpcError, "network_ext_proc.ep.streams_grpc_error", "ext_proc_grpc_error"},
		{"message_timeout", silent, "network_ext_proc.ep.message_timeouts", "ext_proc_message_timeout"},
	} {
		for _, failOpen := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/failure_mode_allow=%v", tc.name, failOpen), func(t *testing.T) {
				got := make(chan []byte, 100)
				closed := make(chan ConnInfo, 1)
				ps := setupProc(t, tc.script, recordHandler(got), func(c *extprocv3.NetworkExternalProcessor) {
					c.FailureModeAllow = failOpen
					c.MessageTimeout = ms(50)
				}, WithConnectionLog(func(ci ConnInfo) { closed <- ci }))
				c := dial(t, ps.sim, "db")
				mustWrite(t, c, "in-flight")
				if !failOpen {
					if rest, err := readToEOF(t, c); rest != "" || err != nil {
						t.Fatalf("client: %q, %v", rest, err)
					}
					if ci := <-closed; ci.CloseDetails != tc.details {
						t.Errorf("close details %q, want %q", ci.CloseDetails, tc.details)
					}
					if ps.sim.Stats().Get(tc.stat) != 1 {
						t.Errorf("%s != 1", tc.stat)
					}
					return
				}
				waitStat(t, ps.sim, tc.stat, 1)
				mustWrite(t, c, "after")
				if s := collect(t, got, 5); s != "after" {
					t.Fatalf("upstream got %q; the in-flight chunk must be lost", s)
				}
				if ps.sim.Stats().Get("network_ext_proc.ep.failure_mode_allowed") != 1 {
					t.Error("failure_mode_allowed != 1")
				}
			})
		}
	}
}

// Contract §1.2: when the stream cannot be started (here: an unknown gRPC
// cluster) stream_open_failures counts and the connection closes unless
// failure_mode_allow.
func TestExtProcStreamOpenFailure(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("failure_mode_allow=%v", failOpen), func(t *testing.T) {
			got := make(chan []byte, 100)
			up := startUpstream(t, recordHandler(got))
			closed := make(chan ConnInfo, 1)
			s := newSim(t, WithConnectionLog(func(ci ConnInfo) { closed <- ci }))
			cfg := procConfig("no_such_cluster", "ep")
			cfg.FailureModeAllow = failOpen
			if err := s.Apply([]*listenerv3.Listener{tcpListener(t, "db", extProc(t, cfg), tcpProxy(t, "upstream"))},
				[]*clusterv3.Cluster{staticCluster(t, "upstream", up.addr, false)}, nil); err != nil {
				t.Fatal(err)
			}
			c := dial(t, s, "db")
			mustWrite(t, c, "x")
			if failOpen {
				if s := collect(t, got, 1); s != "x" {
					t.Fatalf("upstream got %q", s)
				}
			} else {
				if _, err := readToEOF(t, c); err != nil {
					t.Fatal(err)
				}
				if ci := <-closed; ci.CloseDetails != "ext_proc_stream_error" {
					t.Errorf("close details %q", ci.CloseDetails)
				}
			}
			if n := s.Stats().Get("network_ext_proc.ep.stream_open_failures"); n != 1 {
				t.Errorf("stream_open_failures = %d", n)
			}
		})
	}
}

// Contract §1.4 step 7: close_stream_to_ext_proc_server ends processing; the
// response itself is still applied and later bytes bypass the filter.
func TestExtProcCloseStreamToExtProcServer(t *testing.T) {
	script := respond(func(req *netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse {
		r := echoOf(req)
		r.CloseStreamToExtProcServer = true
		return []*netextprocv3.ProcessingResponse{r}
	})
	got := make(chan []byte, 100)
	ps := setupProc(t, script, recordHandler(got), nil)
	c := dial(t, ps.sim, "db")
	mustWrite(t, c, "one")
	if s := collect(t, got, 3); s != "one" {
		t.Fatalf("upstream got %q", s)
	}
	mustWrite(t, c, "two")
	if s := collect(t, got, 3); s != "two" {
		t.Fatalf("upstream got %q", s)
	}
	<-ps.proc.ended
	if n := len(ps.proc.reqs); n != 1 {
		t.Fatalf("processor saw %d requests, want 1", n)
	}
	ps.sim.RequireNoViolations(t)
}
