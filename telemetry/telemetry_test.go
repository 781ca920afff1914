package telemetry_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	colmetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/telemetry"
)

func serveHealth(t *testing.T, tel *telemetry.Telemetry) healthpb.HealthClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(tel.GRPCServerOptions()...)
	healthpb.RegisterHealthServer(g, health.NewServer())
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}

// TestGRPCAndHTTPMetricsReachPrometheus: a gRPC call and an HTTP request
// through the instrumented servers show up on /metrics, under the service
// name from the config.
func TestGRPCAndHTTPMetricsReachPrometheus(t *testing.T) {
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, policies.Telemetry{ServiceName: "sluice-test"}, "v0.0.0-test")
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(ctx)

	if _, err := serveHealth(t, tel).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(tel.HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), "api"))
	defer api.Close()
	if resp, err := http.Get(api.URL + "/v1/anything"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}

	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`rpc_method="grpc.health.v1.Health/Check"`,
		`http_server_request_duration_seconds`,
		`service_name="sluice-test"`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

// collector is a real OTLP/gRPC trace and metrics receiver on loopback.
type collector struct {
	coltrace.UnimplementedTraceServiceServer
	mu      sync.Mutex
	spans   []string
	metrics []string
}

type metricsCollector struct {
	colmetrics.UnimplementedMetricsServiceServer
	c *collector
}

func (m metricsCollector) Export(_ context.Context, req *colmetrics.ExportMetricsServiceRequest) (*colmetrics.ExportMetricsServiceResponse, error) {
	m.c.mu.Lock()
	defer m.c.mu.Unlock()
	for _, rm := range req.ResourceMetrics {
		for _, sm := range rm.ScopeMetrics {
			for _, x := range sm.Metrics {
				m.c.metrics = append(m.c.metrics, x.Name)
			}
		}
	}
	return &colmetrics.ExportMetricsServiceResponse{}, nil
}

func (c *collector) Export(_ context.Context, req *coltrace.ExportTraceServiceRequest) (*coltrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				c.spans = append(c.spans, s.Name)
			}
		}
	}
	return &coltrace.ExportTraceServiceResponse{}, nil
}

func TestOTLPExportsSpansAndMetrics(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{}
	g := grpc.NewServer()
	coltrace.RegisterTraceServiceServer(g, col)
	colmetrics.RegisterMetricsServiceServer(g, metricsCollector{c: col})
	go g.Serve(lis)
	defer g.Stop()

	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, policies.Telemetry{ServiceName: "sluice-test", OTLPEndpoint: lis.Addr().String(), OTLPInsecure: true}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := serveHealth(t, tel).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	// The server ends its span and records its duration after the client
	// has its answer (gRPC's stats End event), so flush until they are in.
	received := func() bool {
		col.mu.Lock()
		defer col.mu.Unlock()
		return len(col.spans) > 0 && strings.Contains(strings.Join(col.metrics, ","), "rpc.server.call.duration")
	}
	for deadline := time.Now().Add(10 * time.Second); !received() && time.Now().Before(deadline); {
		for _, p := range []any{tel.TracerProvider, tel.MeterProvider} {
			if f, ok := p.(interface{ ForceFlush(context.Context) error }); ok {
				_ = f.ForceFlush(ctx)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := tel.Shutdown(ctx); err != nil { // flushes the batcher
		t.Fatal(err)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.spans) == 0 || col.spans[0] != "grpc.health.v1.Health/Check" {
		t.Errorf("collector received spans %v, want the health Check span", col.spans)
	}
	if !strings.Contains(strings.Join(col.metrics, ","), "rpc.server.call.duration") {
		t.Errorf("collector received metrics %v, want rpc.server.call.duration", col.metrics)
	}
}

func TestLoggerFormatAndLevel(t *testing.T) {
	var buf bytes.Buffer
	log := telemetry.NewLogger(policies.Telemetry{LogLevel: "warn", LogFormat: "json"}, &buf)
	log.Info("hidden")
	log.Warn("shown", "k", "v")
	out := buf.String()
	if strings.Contains(out, "hidden") || !strings.Contains(out, `"msg":"shown"`) || !strings.Contains(out, `"k":"v"`) {
		t.Errorf("unexpected log output: %s", out)
	}
	buf.Reset()
	telemetry.NewLogger(policies.Telemetry{LogLevel: "debug", LogFormat: "text"}, &buf).Debug("dbg")
	if !strings.Contains(buf.String(), "msg=dbg") {
		t.Errorf("text debug log missing: %q", buf.String())
	}
}
