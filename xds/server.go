package xds

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	cplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	deltav3 "github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"

	"github.com/sluicehq/sluice/policies"
)

// Options configure a Server. The zero value works: logs are discarded and
// metrics go to a no-op meter.
type Options struct {
	Logger *slog.Logger
	// Meter records sluice_xds_* metrics (see the package doc).
	Meter metric.Meter
}

// Server publishes snapshots of the translated config to Envoy over ADS,
// state of the world and delta, and watches how Envoy takes them.
//
// Update may be called from any goroutine; calls are serialized. The
// snapshot cache belongs to go-control-plane; the Server only sets it.
type Server struct {
	log   *slog.Logger
	cache cachev3.SnapshotCache
	sotw  sotwv3.Server
	delta deltav3.Server
	track *tracker
	m     *metrics

	// version is the published snapshot's version, "" before the first.
	version atomic.Pointer[string]

	// mu serializes Update and guards what follows.
	mu   sync.Mutex
	seq  uint64 // snapshots published by this process
	hash string // content hash of the published resources
	node string // node the published snapshot is keyed by
	res  *Resources
	// mutate, set by tests only, changes the translated resources before
	// they are validated: the way to prove a bad resource is refused.
	mutate func(*Resources)
}

// Stats are the Server's counters since it was created.
type Stats struct {
	Streams   int64 // ADS streams opened, SotW and delta
	ACKs      int64 // responses Envoy accepted
	NACKs     int64 // responses Envoy rejected (every one, including repeats)
	Published int64 // snapshots published
	Refused   int64 // Updates refused (translation, validation, consistency)
}

// NewServer builds a Server with an empty snapshot cache. Call Update
// before Envoy connects: a request for a node with no snapshot is parked
// until one arrives.
func NewServer(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Meter == nil {
		opts.Meter = noop.NewMeterProvider().Meter("")
	}
	m, err := newMetrics(opts.Meter)
	if err != nil {
		return nil, fmt.Errorf("xds: metrics: %w", err)
	}
	s := &Server{log: opts.Logger, m: m}
	// ads=true: responses are ordered CDS, EDS, LDS, RDS, SDS... and a
	// request naming a resource the snapshot lacks waits instead of getting
	// a partial answer (envoy-contract.md section 7).
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger(opts.Logger))
	s.track = newTracker(opts.Logger, m)
	s.sotw = sotwv3.NewServer(context.Background(), s.cache, s.track)
	s.delta = deltav3.NewServer(context.Background(), s.cache, s.track)
	return s, nil
}

// Register serves StreamAggregatedResources (SotW) and
// DeltaAggregatedResources on g.
func (s *Server) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, adsService{s})
}

// adsService is the AggregatedDiscoveryService: both methods hand the
// stream to go-control-plane with the "any type" URL that marks ADS.
type adsService struct{ s *Server }

var _ discoverygrpc.AggregatedDiscoveryServiceServer = adsService{}

// StreamAggregatedResources serves state-of-the-world ADS.
func (a adsService) StreamAggregatedResources(st discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.s.sotw.StreamHandler(st, resource.AnyType)
}

// DeltaAggregatedResources serves incremental ADS.
func (a adsService) DeltaAggregatedResources(st discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.s.delta.DeltaStreamHandler(st, resource.AnyType)
}

// Version is the version of the published snapshot, "" before the first.
func (s *Server) Version() string {
	if v := s.version.Load(); v != nil {
		return *v
	}
	return ""
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Streams:   s.track.streams.Load(),
		ACKs:      s.track.acks.Load(),
		NACKs:     s.track.nacks.Load(),
		Published: s.m.publishedN.Load(),
		Refused:   s.m.refusedN.Load(),
	}
}

// NACKs is how many responses Envoy has rejected.
func (s *Server) NACKs() int64 { return s.track.nacks.Load() }

// Update translates cfg, validates every resource and publishes a new
// snapshot for node cfg.Envoy.Node. On any failure it logs, keeps the
// running snapshot and returns the error; it never publishes part of a
// config. Its signature fits policies.NewWatcher's apply.
//
// Versions are "<n>-<hash>": n counts snapshots this process published,
// hash is the first 12 hex digits of the resources' SHA-256. A config whose
// resources are identical to the published ones (a reload that changed
// only policies, say) publishes nothing and keeps the version, so Envoy is
// not sent the same resources again.
func (s *Server) Update(cfg *policies.Config) error {
	start := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	version, err := s.update(cfg)
	if err != nil {
		s.m.refused(context.Background())
		s.log.Error("xDS update refused; the running snapshot stays", "version", s.Version(), "err", err)
		return err
	}
	if version == "" {
		s.log.Debug("xDS resources unchanged; no new snapshot", "version", s.Version())
		return nil
	}
	s.m.published(context.Background())
	s.log.Info("xDS snapshot published", "version", version, "node", s.node,
		"listeners", len(s.res.Listeners), "clusters", len(s.res.Clusters),
		"routes", len(s.res.Routes), "secrets", len(s.res.Secrets),
		"duration", time.Since(start))
	return nil
}

// update does Update's work under s.mu. It returns the new version, or ""
// when nothing changed.
func (s *Server) update(cfg *policies.Config) (string, error) {
	if cfg == nil || cfg.Envoy.Node == "" {
		return "", fmt.Errorf("xds: no envoy.node to publish for")
	}
	node := cfg.Envoy.Node
	res, err := Translate(cfg)
	if err != nil {
		return "", err
	}
	if s.mutate != nil {
		s.mutate(res)
	}
	if err := res.Validate(); err != nil {
		return "", err
	}
	hash, err := res.Hash()
	if err != nil {
		return "", err
	}
	if hash == s.hash && node == s.node {
		return "", nil
	}
	version := fmt.Sprintf("%d-%s", s.seq+1, hash[:12])
	snap, err := res.Snapshot(version)
	if err != nil {
		return "", err
	}
	if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		return "", fmt.Errorf("xds: publish %s: %w", version, err)
	}
	if s.node != "" && s.node != node {
		// Envoys still announcing the old node id get nothing new.
		s.cache.ClearSnapshot(s.node)
		s.log.Warn("envoy.node changed; the old node's snapshot is cleared", "old", s.node, "new", node)
	}
	s.seq++
	s.hash, s.node, s.res = hash, node, res
	s.version.Store(&version)
	return version, nil
}

// cacheLogger adapts slog to go-control-plane's logger. Its Infof lines
// (stale nonces, watch opens) are per-request chatter, so they go to debug.
func cacheLogger(l *slog.Logger) cplog.Logger {
	l = l.With("source", "go-control-plane")
	debug := func(f string, a ...any) {
		if l.Enabled(context.Background(), slog.LevelDebug) {
			l.Debug(fmt.Sprintf(f, a...))
		}
	}
	return cplog.LoggerFuncs{
		DebugFunc: debug,
		InfoFunc:  debug,
		WarnFunc:  func(f string, a ...any) { l.Warn(fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { l.Error(fmt.Sprintf(f, a...)) },
	}
}
