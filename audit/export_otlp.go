package audit

import (
	"context"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	otellog "go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// OTLPExporter sends records as OpenTelemetry log records over OTLP/gRPC.
//
// The SDK's usual pipeline (a BatchProcessor) reports export errors to a
// global handler and drops what it could not send; the shipper needs the
// error to keep its cursor. So records are built by an SDK Logger whose
// only processor collects them, and handed to the OTLP exporter directly:
// Export's error is the exporter's.
type OTLPExporter struct {
	exp      sdklog.Exporter
	provider *sdklog.LoggerProvider
	logger   otellog.Logger
	mu       sync.Mutex // one Export at a time: the collector is shared
	col      collector
}

// OTLPOptions configures NewOTLPExporter.
type OTLPOptions struct {
	// Endpoint is host:port of an OTLP/gRPC receiver.
	Endpoint string
	Insecure bool
	// ServiceName is the service.name resource attribute.
	ServiceName string
	Timeout     time.Duration
}

// NewOTLPExporter connects lazily: an unreachable receiver fails Export,
// not construction.
func NewOTLPExporter(ctx context.Context, o OTLPOptions) (*OTLPExporter, error) {
	opts := []otlploggrpc.Option{otlploggrpc.WithEndpoint(o.Endpoint),
		// The shipper retries from its cursor; the exporter's own retry
		// would only hold a batch longer.
		otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: false})}
	if o.Insecure {
		opts = append(opts, otlploggrpc.WithInsecure())
	}
	if o.Timeout > 0 {
		opts = append(opts, otlploggrpc.WithTimeout(o.Timeout))
	}
	exp, err := otlploggrpc.New(ctx, opts...)
	if err != nil {
		return nil, err
	}
	name := o.ServiceName
	if name == "" {
		name = "sluice"
	}
	x := &OTLPExporter{exp: exp}
	x.provider = sdklog.NewLoggerProvider(
		sdklog.WithResource(resource.NewSchemaless(semconv.ServiceName(name))),
		sdklog.WithProcessor(&x.col))
	x.logger = x.provider.Logger("github.com/sluicehq/sluice/audit")
	return x, nil
}

// Name keys the exporter's cursor.
func (x *OTLPExporter) Name() string { return "otlp" }

// Export sends recs in OTLP requests of at most about otlpMaxRequest
// bytes each, in order. A receiver refuses a message over its limit (4 MiB
// by gRPC's default) and the shipper would send the same batch again and
// again: 512 records of 10 KB statements stopped the export for good. On
// an error the requests already sent are sent again with the rest.
func (x *OTLPExporter) Export(ctx context.Context, recs []Record) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.col.take()
	size := 0
	for _, r := range recs {
		lr, n := logRecord(r)
		if size > 0 && size+n > otlpMaxRequest {
			if err := x.exp.Export(ctx, x.col.take()); err != nil {
				return err
			}
			size = 0
		}
		x.logger.Emit(ctx, lr)
		size += n
	}
	return x.exp.Export(ctx, x.col.take())
}

// OTLP size limits. A record is at most about 2 MiB, after otlpMaxField
// (the body and each string attribute, ~25 of them) and otlpMaxListItems
// of otlpMaxItem (each list attribute, 4 of them), so a request of one
// record still fits a 4 MiB receiver.
const (
	otlpMaxRequest   = 2 << 20
	otlpMaxField     = 64 << 10
	otlpMaxListItems = 256
	otlpMaxItem      = 256
)

// Shutdown closes the connection.
func (x *OTLPExporter) Shutdown(ctx context.Context) error {
	_ = x.provider.Shutdown(ctx)
	return x.exp.Shutdown(ctx)
}

// logRecord is r as an OTLP log record, and about how many bytes it adds
// to a request. A body or attribute over the limits above is cut at a
// UTF-8 boundary and the record carries sluice.audit.truncated: the whole
// record stays in the store, found by its writer, seq and hash.
func logRecord(r Record) (otellog.Record, int) {
	size, truncated := 64, false
	cut := func(v string, max int) string {
		if len(v) > max {
			v, truncated = strings.ToValidUTF8(v[:max], ""), true
		}
		size += len(v) + 16
		return v
	}
	var lr otellog.Record
	lr.SetTimestamp(r.Time)
	lr.SetObservedTimestamp(r.Time)
	lr.SetEventName("sluice.audit." + string(r.Kind))
	lr.SetSeverity(otellog.SeverityInfo)
	if r.Decision == "deny" || r.Error != "" {
		lr.SetSeverity(otellog.SeverityWarn)
	}
	lr.SetBody(attribute.StringValue(cut(r.Request, otlpMaxField)))
	kv := func(k, v string) attribute.KeyValue { return attribute.String(k, cut(v, otlpMaxField)) }
	attrs := []attribute.KeyValue{
		kv("sluice.audit.writer", r.Writer), attribute.Int64("sluice.audit.seq", r.Seq),
		kv("sluice.audit.hash", r.Hash.String()), kv("sluice.audit.prev", r.Prev.String()),
		kv("sluice.audit.kind", string(r.Kind)), kv("enduser.id", r.Principal.Subject),
	}
	opt := func(k, v string) {
		if v != "" {
			attrs = append(attrs, kv(k, v))
		}
	}
	opt("sluice.session_id", r.SessionID)
	opt("sluice.request_id", r.RequestID)
	opt("sluice.principal.issuer", r.Principal.Issuer)
	opt("sluice.principal.client", r.Principal.Client)
	opt("sluice.principal.on_behalf_of", r.Principal.OnBehalfOf)
	opt("sluice.actor", r.Actor)
	opt("sluice.target", r.Target)
	opt("client.address", r.Source)
	opt("sluice.decision", r.Decision)
	opt("sluice.reason", r.Reason)
	opt("sluice.grant_id", r.GrantID)
	opt("error.message", r.Error)
	opt("db.response.status_code", r.SQLState)
	opt("sluice.digest", r.Digest)
	opt("sluice.fingerprint", r.Fingerprint)
	if r.HTTPStatus != 0 {
		attrs = append(attrs, attribute.Int("http.response.status_code", r.HTTPStatus))
	}
	list := func(k string, vs []string) {
		if len(vs) == 0 {
			return
		}
		if len(vs) > otlpMaxListItems {
			vs, truncated = vs[:otlpMaxListItems], true
		}
		items := make([]string, len(vs))
		for i, v := range vs {
			items[i] = cut(v, otlpMaxItem)
		}
		attrs = append(attrs, attribute.StringSlice(k, items))
	}
	list("enduser.groups", r.Principal.Groups)
	list("sluice.classes", classNames(r.Classes))
	list("sluice.tables", r.Tables)
	list("sluice.masked_columns", r.MaskedColumns)
	if r.Rows != 0 || r.Bytes != 0 || r.Duration != 0 {
		attrs = append(attrs, attribute.Int64("sluice.rows", r.Rows), attribute.Int64("sluice.bytes", r.Bytes),
			attribute.Int64("sluice.duration_ns", int64(r.Duration)))
	}
	if truncated {
		attrs = append(attrs, attribute.Bool("sluice.audit.truncated", true))
	}
	lr.AddAttributes(attrs...)
	return lr, size
}

// collector is the Processor that keeps what the Logger emits.
type collector struct {
	mu   sync.Mutex
	recs []sdklog.Record
}

func (c *collector) take() []sdklog.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.recs
	c.recs = nil
	return out
}

func (c *collector) OnEmit(_ context.Context, r *sdklog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, r.Clone())
	return nil
}

func (c *collector) Enabled(context.Context, sdklog.EnabledParameters) bool { return true }
func (c *collector) Shutdown(context.Context) error                         { return nil }
func (c *collector) ForceFlush(context.Context) error                       { return nil }

var (
	_ Exporter         = (*OTLPExporter)(nil)
	_ sdklog.Processor = (*collector)(nil)
)
