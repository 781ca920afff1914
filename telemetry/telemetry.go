// Package telemetry sets up sluice's traces, metrics and logs: OpenTelemetry
// providers for every gRPC service and the HTTP API, a Prometheus-format
// /metrics handler on the API address, OTLP/gRPC export when configured, and
// a log/slog logger.
//
// Everything here is built from one policies.Telemetry and handed to the
// servers explicitly; nothing is registered globally, so tests can run many
// sluice instances in one process.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/sluicehq/sluice/policies"
)

// OTLPExportInterval is how often metrics are pushed to an OTLP endpoint.
const OTLPExportInterval = 15 * time.Second

// Telemetry holds the providers one sluice process uses.
type Telemetry struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Registry is the Prometheus registry behind MetricsHandler.
	Registry *prometheus.Registry

	shutdown []func(context.Context) error
}

// Setup builds the providers. version is reported as service.version.
func Setup(ctx context.Context, cfg policies.Telemetry, version string) (*Telemetry, error) {
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.name", cfg.ServiceName),
		attribute.String("service.version", version),
	))
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}

	t := &Telemetry{Registry: prometheus.NewRegistry()}
	t.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	promExp, err := otelprom.New(otelprom.WithRegisterer(t.Registry))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mopts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(promExp)}
	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}

	if cfg.OTLPEndpoint != "" {
		// The exporters dial lazily: an unreachable collector never blocks
		// startup or a request; spans and points are dropped after retries.
		tro := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint)}
		mo := []otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpoint(cfg.OTLPEndpoint)}
		if cfg.OTLPInsecure {
			tro = append(tro, otlptracegrpc.WithInsecure())
			mo = append(mo, otlpmetricgrpc.WithInsecure())
		}
		tr, err := otlptracegrpc.New(ctx, tro...)
		if err != nil {
			return nil, fmt.Errorf("otlp trace exporter: %w", err)
		}
		me, err := otlpmetricgrpc.New(ctx, mo...)
		if err != nil {
			return nil, fmt.Errorf("otlp metric exporter: %w", err)
		}
		topts = append(topts, sdktrace.WithBatcher(tr))
		mopts = append(mopts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(me, sdkmetric.WithInterval(OTLPExportInterval))))
	}

	mp := sdkmetric.NewMeterProvider(mopts...)
	tp := sdktrace.NewTracerProvider(topts...)
	t.MeterProvider, t.TracerProvider = mp, tp
	t.shutdown = append(t.shutdown, tp.Shutdown, mp.Shutdown)
	return t, nil
}

// Meter returns a meter for one sluice component, e.g. "xds".
func (t *Telemetry) Meter(component string) metric.Meter {
	return t.MeterProvider.Meter("github.com/sluicehq/sluice/" + component)
}

// MetricsHandler serves every metric in Prometheus text format.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{})
}

// GRPCServerOptions instrument a gRPC server with traces and metrics.
func (t *Telemetry) GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(t.TracerProvider),
		otelgrpc.WithMeterProvider(t.MeterProvider),
		otelgrpc.WithPropagators(propagation.TraceContext{}),
	))}
}

// HTTPHandler instruments an HTTP handler with traces and metrics.
func (t *Telemetry) HTTPHandler(h http.Handler, operation string) http.Handler {
	return otelhttp.NewHandler(h, operation,
		otelhttp.WithTracerProvider(t.TracerProvider),
		otelhttp.WithMeterProvider(t.MeterProvider),
		otelhttp.WithPropagators(propagation.TraceContext{}),
	)
}

// Shutdown flushes and stops the exporters.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}

// NewLogger builds the process logger from the telemetry config.
func NewLogger(cfg policies.Telemetry, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated at load
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
