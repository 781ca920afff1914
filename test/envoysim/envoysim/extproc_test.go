package envoysim

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// procSetup is a listener [ext_proc, tcp_proxy] in front of an upstream, with
// the processor script and ext_proc config given by the test.
type procSetup struct {
	sim  *Sim
	proc *processor
	up   *upstream
}

func setupProc(t *testing.T, script procScript, handle func(c net.Conn), mutate func(*extprocv3.NetworkExternalProcessor), opts ...Option) *procSetup {
	t.Helper()
	proc, procAddr := startProcessor(t, script)
	up := startUpstream(t, handle)
	s := newSim(t, opts...)
	cfg := procConfig("processor", "ep")
	if mutate != nil {
		mutate(cfg)
	}
	err := s.Apply(
		[]*listenerv3.Listener{tcpListener(t, "db", extProc(t, cfg), tcpProxy(t, "upstream"))},
		[]*clusterv3.Cluster{staticCluster(t, "processor", procAddr, true), staticCluster(t, "upstream", up.addr, false)},
		nil)
	if err != nil {
		t.Fatal(err)
	}
	return &procSetup{sim: s, proc: proc, up: up}
}

// Checklist 1: every chunk is answered with read_data/write_data echoing the
// bytes and end_of_stream; both directions go through the processor. With the
// close-through-filter-manager flag off (Envoy's default) the upstream's close
// closes the downstream at once, so the write-side end_of_stream never reaches
// the processor; with it on, the close waits for the processor's answer.
func TestExtProcEchoesEveryChunkBothDirections(t *testing.T) {
	for _, flag := range []bool{false, true} {
		t.Run(fmt.Sprintf("close_through_filter_manager=%v", flag), func(t *testing.T) {
			ps := setupProc(t, respond(echo), echoHandler, nil, WithCloseThroughFilterManager(flag))
			c := dial(t, ps.sim, "db")
			mustWrite(t, c, "ping")
			if got := readN(t, c, 4); got != "ping" {
				t.Fatalf("client got %q", got)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if rest, err := readToEOF(t, c); rest != "" || err != nil {
				t.Fatalf("after half-close: %q, %v", rest, err)
			}
			<-ps.proc.ended
			var got []string
			for len(ps.proc.reqs) > 0 {
				r := <-ps.proc.reqs
				if d := r.GetReadData(); d != nil {
					got = append(got, fmt.Sprintf("read %q eos=%v", d.GetData(), d.GetEndOfStream()))
				} else {
					got = append(got, fmt.Sprintf("write %q eos=%v", r.GetWriteData().GetData(), r.GetWriteData().GetEndOfStream()))
				}
			}
			want := []string{`read "ping" eos=false`, `write "ping" eos=false`, `read "" eos=true`, `write "" eos=true`}
			if !flag && len(got) == 3 {
				// The request was queued, then the stream reset before it left:
				// whether it reaches the processor is a race in Envoy too.
				want = want[:3]
			}
			if !slices.Equal(got, want) {
				t.Fatalf("processor saw\n%q\nwant\n%q", got, want)
			}
			ps.sim.RequireNoViolations(t)
			if got := ps.sim.Stats().Get("network_ext_proc.ep.read_data_injected"); got != 2 {
				t.Errorf("read_data_injected = %d, want 2", got)
			}
		})
	}
}

// collect reads from got until want bytes arrived (or the channel closed).
func collect(t *testing.T, got <-chan []byte, want int) string {
	t.Helper()
	var b []byte
	timeout := time.After(testTimeout)
	for len(b) < want {
		select {
		case p, ok := <-got:
			if !ok {
				return string(b)
			}
			b = append(b, p...)
		case <-timeout:
			t.Fatalf("upstream got %q, waiting for %d bytes", b, want)
		}
	}
	return string(b)
}

// Checklist 1: data_processing_status is ignored; Envoy injects read_data.data
// whatever the status says, so an "UNMODIFIED" reply without the bytes loses
// them.
func TestExtProcIgnoresDataProcessingStatus(t *testing.T) {
	script := respond(func(req *netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse {
		r := &netextprocv3.ProcessingResponse{DataProcessingStatus: netextprocv3.ProcessingResponse_UNMODIFIED}
		switch string(req.GetReadData().GetData()) {
		case "abc":
			r.ReadData = &netextprocv3.Data{Data: []byte("XYZ")}
		case "def":
			r.ReadData = &netextprocv3.Data{}
		default:
			r.ReadData = req.GetReadData()
		}
		return []*netextprocv3.ProcessingResponse{r}
	})
	got := make(chan []byte, 100)
	ps := setupProc(t, script, recordHandler(got), nil)
	c := dial(t, ps.sim, "db")
	for _, chunk := range []string{"abc", "def", "ghi"} {
		mustWrite(t, c, chunk)
		recvReq(t, ps.proc.reqs) // one chunk per request
	}
	if s := collect(t, got, 6); s != "XYZghi" {
		t.Fatalf("upstream got %q, want %q", s, "XYZghi")
	}
	ps.sim.RequireNoViolations(t)
}

// Checklist 1: a reply with neither read_data nor write_data does not count:
// nothing is injected, the timer keeps running and fires (fail-closed).
func TestExtProcEmptyResponseIsNotAnAnswer(t *testing.T) {
	got := make(chan []byte, 100)
	closed := make(chan ConnInfo, 1)
	ps := setupProc(t, respond(func(*netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse {
		return []*netextprocv3.ProcessingResponse{{}}
	}), recordHandler(got), func(c *extprocv3.NetworkExternalProcessor) {
		c.MessageTimeout = ms(100)
	}, WithConnectionLog(func(ci ConnInfo) { closed <- ci }))
	c := dial(t, ps.sim, "db")
	mustWrite(t, c, "x")
	if rest, err := readToEOF(t, c); rest != "" || err != nil {
		t.Fatalf("client: %q, %v", rest, err)
	}
	if ci := <-closed; ci.CloseDetails != "ext_proc_message_timeout" {
		t.Errorf("close details %q", ci.CloseDetails)
	}
	if b, ok := <-got; ok {
		t.Errorf("upstream received %q", b)
	}
	st := ps.sim.Stats()
	for name, want := range map[string]int64{
		"network_ext_proc.ep.empty_response_received": 1,
		"network_ext_proc.ep.message_timeouts":        1,
		"network_ext_proc.ep.read_data_injected":      0,
	} {
		if v := st.Get(name); v != want {
			t.Errorf("%s = %d, want %d", name, v, want)
		}
	}
	v := ps.sim.Violations()
	if v[ViolationEmptyResponses] != 1 || v[ViolationTimeouts] != 1 || v[ViolationUnansweredChunks] != 1 {
		t.Errorf("violations %v", v)
	}
}

// Checklist 1: chunks are pipelined: a second chunk is sent while the first is
// unanswered. The processor answers nothing until it holds both chunks, so a
// sim that waited would deadlock.
func TestExtProcPipelinesChunksWithoutWaiting(t *testing.T) {
	first := make(chan struct{})
	script := func(ctx context.Context, recv <-chan *netextprocv3.ProcessingRequest, send func(*netextprocv3.ProcessingResponse) error) error {
		a := <-recv
		close(first)
		b := <-recv
		if b == nil {
			return nil
		}
		for _, r := range []*netextprocv3.ProcessingRequest{a, b} {
			if err := send(echoOf(r)); err != nil {
				return err
			}
		}
		return respond(echo)(ctx, recv, send)
	}
	got := make(chan []byte, 100)
	ps := setupProc(t, script, recordHandler(got), nil)
	c := dial(t, ps.sim, "db")
	mustWrite(t, c, "a")
	<-first
	mustWrite(t, c, "b")
	if s := collect(t, got, 2); s != "ab" {
		t.Fatalf("upstream got %q", s)
	}
	ps.sim.RequireNoViolations(t)
}

// Checklist 1: directions are independent: with a read chunk held at the
// processor, the server's greeting still flows through the write path.
func TestExtProcDirectionsAreIndependent(t *testing.T) {
	readSeen, release := make(chan struct{}), make(chan struct{})
	script := func(ctx context.Context, recv <-chan *netextprocv3.ProcessingRequest, send func(*netextprocv3.ProcessingResponse) error) error {
		var held []*netextprocv3.ProcessingRequest
		for {
			select {
			case req, ok := <-recv:
				if !ok {
					return nil
				}
				if req.GetReadData() != nil {
					held = append(held, req)
					if len(held) == 1 {
						close(readSeen)
					}
					continue
				}
				if err := send(echoOf(req)); err != nil {
					return err
				}
			case <-release:
				release = nil
				for _, r := range held {
					if err := send(echoOf(r)); err != nil {
						return err
					}
				}
				return respond(echo)(ctx, recv, send)
			}
		}
	}
	got := make(chan []byte, 100)
	ps := setupProc(t, script, func(c net.Conn) {
		_, _ = c.Write([]byte("hello"))
		recordHandler(got)(c)
	}, func(c *extprocv3.NetworkExternalProcessor) { c.MessageTimeout = durationpb.New(testTimeout) })
	c := dial(t, ps.sim, "db")
	mustWrite(t, c, "q")
	<-readSeen
	if s := readN(t, c, 5); s != "hello" {
		t.Fatalf("client got %q", s)
	}
	close(release)
	if s := collect(t, got, 1); s != "q" {
		t.Fatalf("upstream got %q", s)
	}
	ps.sim.RequireNoViolations(t)
}

// Checklist 1: an unsolicited read_data is injected (and counted).
func TestExtProcInjectsUnsolicitedResponses(t *testing.T) {
	script := respond(func(req *netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse {
		out := echo(req)
		if string(req.GetReadData().GetData()) == "a" {
			out = append(out, &netextprocv3.ProcessingResponse{ReadData: &netextprocv3.Data{Data: []byte("extra")}})
		}
		return out
	})
	got := make(chan []byte, 100)
	ps := setupProc(t, script, recordHandler(got), nil)
	c := dial(t, ps.sim, "db")
	mustWrite(t, c, "a")
	if s := collect(t, got, 6); s != "aextra" {
		t.Fatalf("upstream got %q", s)
	}
	mustWrite(t, c, "b")
	if s := collect(t, got, 1); s != "b" {
		t.Fatalf("upstream got %q after the unsolicited response", s)
	}
	if v := ps.sim.Violations()[ViolationUnsolicitedResponses]; v != 1 {
		t.Errorf("unsolicited = %d, want 1", v)
	}
	if v := ps.sim.Stats().Get("network_ext_proc.ep.read_data_injected"); v != 3 {
		t.Errorf("read_data_injected = %d, want 3", v)
	}
}

// Contract §1.2: the stream opens lazily, one per connection.
func TestExtProcStreamOpensOnFirstData(t *testing.T) {
	ps := setupProc(t, respond(echo), echoHandler, nil)
	c1 := dial(t, ps.sim, "db")
	<-ps.up.accepted
	if n := ps.sim.Stats().Get("network_ext_proc.ep.streams_started"); n != 0 {
		t.Fatalf("streams_started = %d before any byte", n)
	}
	mustWrite(t, c1, "1")
	readN(t, c1, 1)
	c2 := dial(t, ps.sim, "db")
	mustWrite(t, c2, "2")
	readN(t, c2, 1)
	mustWrite(t, c1, "3")
	readN(t, c1, 1)
	if n := ps.sim.Stats().Get("network_ext_proc.ep.streams_started"); n != 2 {
		t.Fatalf("streams_started = %d, want 2", n)
	}
}

// Contract §1.4: forwarding_namespaces sends connection metadata with each
// chunk; receiving_namespaces takes only the listed untyped namespaces back.
func TestExtProcMetadataForwardingAndReceiving(t *testing.T) {
	_, authAddr := startAuthorizer(t, func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		md, _ := structpb.NewStruct(map[string]any{"user": "alice"})
		return &authv3.CheckResponse{Status: &rpcstatus.Status{}, DynamicMetadata: md}, nil
	})
	sawUser := make(chan string, 10)
	script := respond(func(req *netextprocv3.ProcessingRequest) []*netextprocv3.ProcessingResponse {
		sawUser <- req.GetMetadata().GetFilterMetadata()[extAuthzNamespace].GetFields()["user"].GetStringValue()
		r := echoOf(req)
		r.DynamicMetadata, _ = structpb.NewStruct(map[string]any{
			"sluice.decision": map[string]any{"allow": true},
			"not.listed":      map[string]any{"x": 1},
			"sluice.scalar":   "not a struct",
		})
		return []*netextprocv3.ProcessingResponse{r}
	})
	proc, procAddr := startProcessor(t, script)
	_ = proc
	up := startUpstream(t, echoHandler)
	closed := make(chan ConnInfo, 1)
	s := newSim(t, WithConnectionLog(func(ci ConnInfo) { closed <- ci }))
	cfg := procConfig("processor", "ep")
	cfg.MetadataOptions = &extprocv3.MetadataOptions{
		ForwardingNamespaces: &extprocv3.MetadataOptions_MetadataNamespaces{Untyped: []string{extAuthzNamespace}},
		ReceivingNamespaces:  &extprocv3.MetadataOptions_MetadataNamespaces{Untyped: []string{"sluice.decision", "sluice.scalar"}},
	}
	if err := s.Apply([]*listenerv3.Listener{tcpListener(t, "db",
		extAuthz(t, &extauthzv3.ExtAuthz{StatPrefix: "az", GrpcService: grpcService("authz")}),
		extProc(t, cfg), tcpProxy(t, "upstream"))},
		[]*clusterv3.Cluster{staticCluster(t, "processor", procAddr, true), staticCluster(t, "authz", authAddr, true),
			staticCluster(t, "upstream", up.addr, false)}, nil); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s, "db")
	mustWrite(t, c, "x")
	readN(t, c, 1)
	if u := <-sawUser; u != "alice" {
		t.Fatalf("processor saw ext_authz user %q", u)
	}
	_ = c.Close()
	ci := <-closed
	fm := ci.DynamicMetadata.GetFilterMetadata()
	if fm["sluice.decision"].GetFields()["allow"].GetBoolValue() != true {
		t.Errorf("sluice.decision not received: %v", fm)
	}
	if _, ok := fm["not.listed"]; ok {
		t.Error("an unlisted namespace was taken")
	}
	if _, ok := fm["sluice.scalar"]; ok {
		t.Error("a non-struct value was taken")
	}
}
