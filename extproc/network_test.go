package extproc

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"github.com/jackc/pgx/v5/pgproto3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/policies"
)

const testConfig = `
server: { xds: 127.0.0.1:18000, authz: 127.0.0.1:9001, extproc: 127.0.0.1:9002, api: 127.0.0.1:8080 }
envoy: { node: t }
identity:
  issuers: [{ issuer: https://idp.example.com, audiences: [sluice] }]
targets:
  - { name: orders-db, kind: postgres, port: 15432, upstream: "127.0.0.1:5432", database: orders, credentials: { user: app } }
  - { name: off-db, kind: postgres, port: 15433, upstream: "127.0.0.1:5432", database: orders, credentials: { user: app }, disabled: true }
policies:
  - { name: p, targets: [orders-db], principals: { groups: [agents] }, allow: [read] }
`

type fakeVerifier struct{}

func (fakeVerifier) Verify(_ context.Context, raw string) (authz.Verified, error) {
	if raw == "good" {
		return authz.Verified{Principal: policies.Principal{Subject: "agent-1", Groups: []string{"agents"}}}, nil
	}
	return authz.Verified{}, &authz.TokenError{Code: authz.TokenMalformed, Reason: "token is not a JWT"}
}

type sink struct {
	mu     sync.Mutex
	events []audit.Event
	fail   bool
}

func (s *sink) Append(_ context.Context, e audit.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return errors.New("down")
	}
	s.events = append(s.events, e)
	return nil
}

func (s *sink) kinds() []audit.Kind {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []audit.Kind
	for _, e := range s.events {
		out = append(out, e.Kind)
	}
	return out
}

// dialServer serves what register registers on a loopback gRPC server
// for the test's life, and returns a client connection to it with a
// context for the test's streams (10 s).
func dialServer(t *testing.T, register func(*grpc.Server)) (*grpc.ClientConn, context.Context) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return cc, ctx
}

// stream starts a server and opens one Process stream, as Envoy does per
// connection.
func stream(t *testing.T, rec *sink) netextprocv3.NetworkExternalProcessor_ProcessClient {
	t.Helper()
	cfg, err := policies.Load("t.yaml", []byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewNetworkServer(NetworkOptions{Config: cfg, Verifier: fakeVerifier{}, Audit: rec, Gate: postgres.MarkerGate{}})
	if err != nil {
		t.Fatal(err)
	}
	cc, ctx := dialServer(t, srv.Register)
	st, err := netextprocv3.NewNetworkExternalProcessorClient(cc).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func metadata(target string) *corev3.Metadata {
	if target == "" {
		return nil
	}
	s, _ := structpb.NewStruct(map[string]any{"target": target, "source": "127.0.0.1:40000"})
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataNamespace: s}}
}

func startup(t *testing.T) []byte {
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "agent-1"}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNetworkRefusesWithoutTarget: a connection whose target cannot be
// known is closed at its first chunk, with nothing sent upstream.
func TestNetworkRefusesWithoutTarget(t *testing.T) {
	for name, target := range map[string]string{"no metadata": "", "unknown target": "nope", "disabled target": "off-db"} {
		t.Run(name, func(t *testing.T) {
			rec := &sink{}
			st := stream(t, rec)
			if err := st.Send(&netextprocv3.ProcessingRequest{ReadData: &netextprocv3.Data{Data: startup(t)}, Metadata: metadata(target)}); err != nil {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetConnectionStatus() != netextprocv3.ProcessingResponse_CLOSE || resp.GetReadData() != nil {
				t.Errorf("response %v, want CLOSE", resp)
			}
			if k := rec.kinds(); len(k) != 0 {
				t.Errorf("audit %v for a connection that never started", k)
			}
		})
	}
}

// TestNetworkAuditDownAtStart: a session whose start cannot be recorded
// does not start.
func TestNetworkAuditDownAtStart(t *testing.T) {
	rec := &sink{fail: true}
	st := stream(t, rec)
	st.Send(&netextprocv3.ProcessingRequest{ReadData: &netextprocv3.Data{Data: startup(t)}, Metadata: metadata("orders-db")})
	resp, err := st.Recv()
	if err != nil || resp.GetConnectionStatus() != netextprocv3.ProcessingResponse_CLOSE {
		t.Fatalf("response %v, %v; want CLOSE", resp, err)
	}
}

// TestNetworkOneAnswerPerChunk: every chunk gets one response of its own
// direction, pipelined chunks in order, an empty chunk an empty (present)
// answer; the session's events are start, then end once Envoy closes the
// stream.
func TestNetworkOneAnswerPerChunk(t *testing.T) {
	rec := &sink{}
	st := stream(t, rec)
	sm := startup(t)
	auth, _ := (&pgproto3.AuthenticationCleartextPassword{}).Encode(nil)
	reqs := []*netextprocv3.ProcessingRequest{
		{ReadData: &netextprocv3.Data{Data: sm[:3]}, Metadata: metadata("orders-db")},
		{ReadData: &netextprocv3.Data{Data: sm[3:]}, Metadata: metadata("orders-db")},
		{WriteData: &netextprocv3.Data{Data: auth}, Metadata: metadata("orders-db")},
		{ReadData: &netextprocv3.Data{}, Metadata: metadata("orders-db")},
	}
	for _, r := range reqs { // sent without waiting, as Envoy does
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range reqs {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if (r.ReadData != nil) != (resp.GetReadData() != nil) || (r.WriteData != nil) != (resp.GetWriteData() != nil) {
			t.Fatalf("chunk %d answered with %v", i, resp)
		}
		if resp.GetConnectionStatus() != netextprocv3.ProcessingResponse_CONTINUE {
			t.Fatalf("chunk %d: %v", i, resp)
		}
	}
	st.CloseSend()
	if _, err := st.Recv(); err == nil {
		t.Fatal("the server answered after the last chunk")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.kinds()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if k := rec.kinds(); len(k) != 2 || k[0] != audit.KindSessionStart || k[1] != audit.KindSessionEnd {
		t.Errorf("audit %v", k)
	}
}

// TestNetworkStreamCancelled: Envoy resets the stream (connection gone);
// the session ends and says so.
func TestNetworkStreamCancelled(t *testing.T) {
	rec := &sink{}
	cfg, _ := policies.Load("t.yaml", []byte(testConfig))
	srv, _ := NewNetworkServer(NetworkOptions{Config: cfg, Verifier: fakeVerifier{}, Audit: rec, Gate: postgres.MarkerGate{}})
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(lis)
	defer g.Stop()
	cc, _ := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer cc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := netextprocv3.NewNetworkExternalProcessorClient(cc).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&netextprocv3.ProcessingRequest{ReadData: &netextprocv3.Data{Data: startup(t)}, Metadata: metadata("orders-db")})
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.kinds()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.events) != 2 || rec.events[1].Kind != audit.KindSessionEnd || rec.events[1].Reason != "envoy cancelled the stream" {
		t.Errorf("events %+v", rec.events)
	}
}
