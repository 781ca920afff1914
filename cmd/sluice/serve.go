package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/extproc"
	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/telemetry"
	"github.com/sluicehq/sluice/xds"
)

// shutdownGrace bounds how long serve waits for in-flight calls on stop.
const shutdownGrace = 10 * time.Second

func serveCmd(ctx context.Context, args []string, stderr io.Writer) error {
	path, err := configFlag("serve", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := policies.LoadFile(path)
	if err != nil {
		return err
	}
	log := telemetry.NewLogger(cfg.Telemetry, stderr)
	tel, err := telemetry.Setup(ctx, cfg.Telemetry, Version())
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := tel.Shutdown(sctx); err != nil {
			log.Warn("telemetry shutdown", "err", err)
		}
	}()
	// The audit store opens first and closes last: nothing is decided
	// that cannot be recorded, and the final checkpoint is signed after
	// every server has stopped.
	store, err := audit.OpenConfig(ctx, cfg, log.With("component", "audit"))
	if err != nil {
		return fmt.Errorf("audit.store: %w", err)
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("audit store close", "err", err)
		}
	}()
	s, err := newServer(cfg, log, tel, store)
	if err != nil {
		return err
	}
	if err := s.recordConfig(cfg, "loaded at start", nil); err != nil {
		return fmt.Errorf("audit: record the config: %w", err)
	}
	return s.run(ctx, path)
}

// server is one running sluice: its listeners, gRPC servers and API.
// It is built by newServer (which binds every address, so a port conflict
// is reported before anything is served) and run by run.
type server struct {
	log    *slog.Logger
	tel    *telemetry.Telemetry
	xds    *xds.Server
	authz  *authz.Server
	grants grants.Store
	// stopGrants ends the grant cache's subscription and the webhook.
	stopGrants context.CancelFunc
	grantsAPI  *grants.API
	netproc    *extproc.NetworkServer
	gate       *extproc.PolicyGate
	httpproc   *extproc.HTTPServer
	audit      audit.Store
	// cfg is the running config, swapped by apply on reload.
	cfg    atomic.Pointer[policies.Config]
	health *health.Server
	ready  atomic.Bool

	// listeners and the servers behind them, in start order.
	grpcServers []boundGRPC
	api         *http.Server
	apiLis      net.Listener
}

type boundGRPC struct {
	name string // which config keys this address serves
	lis  net.Listener
	srv  *grpc.Server
}

func newServer(cfg *policies.Config, log *slog.Logger, tel *telemetry.Telemetry, store audit.Store) (_ *server, err error) {
	s := &server{log: log, tel: tel, health: health.NewServer(), audit: store}
	s.cfg.Store(cfg)
	var opened []net.Listener
	defer func() {
		if err != nil {
			for _, l := range opened {
				l.Close()
			}
			if s.stopGrants != nil {
				s.stopGrants()
			}
		}
	}()
	listen := func(key, addr string) (net.Listener, error) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", key, addr, err)
		}
		opened = append(opened, l)
		return l, nil
	}

	s.xds, err = xds.NewServer(xds.Options{Logger: log.With("component", "xds"), Meter: tel.Meter("xds")})
	if err != nil {
		return nil, err
	}
	if err := s.xds.Update(cfg); err != nil {
		return nil, fmt.Errorf("initial xDS snapshot: %w", err)
	}

	// One gRPC server per distinct address: authz and extproc may share one.
	byAddr := map[string]int{} // address → index in s.grpcServers
	for _, a := range []struct{ key, addr string }{
		{"server.xds", cfg.Server.XDS},
		{"server.authz", cfg.Server.Authz},
		{"server.extproc", cfg.Server.ExtProc},
	} {
		if i, ok := byAddr[a.addr]; ok {
			s.grpcServers[i].name += "+" + a.key
			continue
		}
		l, err := listen(a.key, a.addr)
		if err != nil {
			return nil, err
		}
		// Stop (when the grace period ends) still waits for the handlers to
		// return, so that the records they make on their way out
		// (session.end, the results of runs a session ended) reach the
		// audit store before it closes; run then waits for the records
		// they left in the background (a finished run's result, an
		// http.response) within the grace period.
		g := grpc.NewServer(append(tel.GRPCServerOptions(), grpc.WaitForHandlers(true))...)
		healthpb.RegisterHealthServer(g, s.health)
		reflection.Register(g)
		s.grpcServers = append(s.grpcServers, boundGRPC{name: a.key, lis: l, srv: g})
		byAddr[a.addr] = len(s.grpcServers) - 1
	}
	s.xds.Register(s.grpcServers[byAddr[cfg.Server.XDS]].srv)

	s.grants, err = openGrants(cfg)
	if err != nil {
		return nil, err
	}
	// Decisions read grants through a cache kept exact by the store's
	// events; it lives as long as the process.
	grantCtx, cancelGrants := context.WithCancel(context.Background())
	s.stopGrants = cancelGrants
	// Every new pending request, opened through the API or by a refusal,
	// is announced to the approvers' webhook.
	webhook := grants.NewWebhook(grantCtx, grants.WebhookOptions{Config: s.config, Logger: log.With("component", "grants-webhook")})
	s.grants = grants.Notifying(s.grants, webhook)
	cached := grants.NewActiveCache(grantCtx, s.grants, log.With("component", "grants"))
	sink := store
	// Grants lapse without a transition: record each expiry.
	go (&grants.ExpiryRecorder{Store: s.grants, Audit: sink, Log: log.With("component", "grants-expiry")}).Run(grantCtx)
	s.authz, err = authz.NewServer(cfg, authz.Options{
		Logger: log.With("component", "authz"), Meter: tel.Meter("authz"),
		Grants: authz.GrantsFrom(cached), Audit: sink,
	})
	if err != nil {
		return nil, err
	}
	s.authz.Register(s.grpcServers[byAddr[cfg.Server.Authz]].srv)
	// One analyser (and its cache) serves the statement gate and the
	// fingerprints of one-statement grant requests, so both agree.
	analyzer := sql.New()
	s.grantsAPI = grants.NewAPI(grants.APIOptions{
		Store: cached, Authenticate: s.authenticate, Config: s.config, Audit: sink,
		Fingerprint: func(stmt string) (string, error) { return fingerprint(analyzer, stmt) },
		Logger:      log.With("component", "grants-api"),
	})
	// Postgres connections: the network ext_proc session verifies the
	// agent's token with the authz server's verifier (one token cache) and
	// gates every statement by policy, auditing it before it runs.
	s.gate = &extproc.PolicyGate{Analyzer: analyzer, Config: s.config, Grants: authz.AuditedGrants(cached, sink), Audit: sink, Now: time.Now,
		// Column rules hold through views: sluice reads each target's
		// views from the target itself.
		Views: &extproc.ViewCatalog{Config: s.config, Log: log.With("component", "view-catalog")}}
	s.netproc, err = extproc.NewNetworkServer(extproc.NetworkOptions{
		Config: cfg, Verifier: s.authz, Audit: sink, Logger: log.With("component", "extproc"), Gate: s.gate,
	})
	if err != nil {
		return nil, err
	}
	s.netproc.Register(s.grpcServers[byAddr[cfg.Server.ExtProc]].srv)
	// HTTP targets: each request/response pair is recorded before the
	// response reaches the agent, and JSON responses are masked as the
	// ext_authz decision (forwarded as metadata) says.
	s.httpproc, err = extproc.NewHTTPServer(extproc.HTTPOptions{Config: cfg, Audit: sink, Logger: log.With("component", "extproc-http")})
	if err != nil {
		return nil, err
	}
	s.httpproc.Register(s.grpcServers[byAddr[cfg.Server.ExtProc]].srv)

	s.apiLis, err = listen("server.api", cfg.Server.API)
	if err != nil {
		return nil, err
	}
	s.api = &http.Server{
		Handler:           tel.HTTPHandler(s.apiMux(), "sluice-api"),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

func (s *server) apiMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.tel.MetricsHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "xds_version": s.xds.Version()})
	})
	for _, route := range []string{"/v1/grants", "/v1/grants/", "/v1/openapi.yaml"} {
		mux.Handle(route, s.grantsAPI.Handler())
	}
	mux.Handle("GET /v1/audit", audit.NewQueryAPI(audit.QueryAPIOptions{
		Store: s.audit, Record: s.audit, Authenticate: s.authenticate,
		AuditorGroups: func() []string { return s.config().Auditors.Groups },
		Log:           s.log.With("component", "audit-api"),
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found", "reason": "no such endpoint: " + r.Method + " " + r.URL.Path})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// recordConfig records, durably, that cfg is about to be applied (reason
// says why), or that it was refused (failure).
func (s *server) recordConfig(cfg *policies.Config, reason string, failure error) error {
	ctx, cancel := context.WithTimeout(context.Background(), configAuditTimeout)
	defer cancel()
	e := audit.Event{Kind: audit.KindConfigReload, Request: "apply " + cfg.Source, Digest: cfg.Digest,
		Decision: "allow", Reason: reason}
	if failure != nil {
		e.Decision, e.Reason, e.Error = "deny", reason, failure.Error()
	}
	return s.audit.Append(ctx, e)
}

// configAuditTimeout bounds the wait for a config change's audit record.
const configAuditTimeout = 5 * time.Second

// apply takes a reloaded config, recorded first (a reload that cannot be
// recorded is refused, and the running config stays): xDS first, since
// it refuses what Envoy would refuse; only then does the decision use the
// new policies. A refusal from here on is recorded as well, saying which
// parts already run the new config (a refusal after xDS took it leaves
// Envoy on the new one).
func (s *server) apply(cfg *policies.Config) error {
	if err := s.recordConfig(cfg, "reloaded", nil); err != nil {
		return fmt.Errorf("the reload could not be recorded in the audit trail: %w", err)
	}
	stages := []struct {
		name   string
		update func(*policies.Config) error
	}{{"xds", s.xds.Update}, {"authz", s.authz.Update}, {"extproc-postgres", s.netproc.Update}, {"extproc-http", s.httpproc.Update}}
	for i, st := range stages {
		if err := st.update(cfg); err != nil {
			reason := "refused by " + st.name
			if i > 0 {
				var took []string
				for _, p := range stages[:i] {
					took = append(took, p.name)
				}
				reason += "; already applied to " + strings.Join(took, ", ")
			}
			if rerr := s.recordConfig(cfg, reason, err); rerr != nil {
				s.log.Error("config refusal not recorded", "err", rerr)
			}
			return fmt.Errorf("%s: %w", st.name, err)
		}
	}
	s.cfg.Store(cfg)
	return nil
}

// fingerprint is what a one-statement grant is scoped to: the statement's
// pg_query fingerprint, the same the gate computes when it runs.
func fingerprint(a *sql.Analyzer, stmt string) (string, error) {
	an := a.Analyze(stmt)
	switch {
	case len(an.Statements) != 1:
		return "", fmt.Errorf("a statement grant covers exactly one statement; this text has %d", len(an.Statements))
	case an.Statements[0].Err != nil:
		return "", fmt.Errorf("the statement does not parse: %v", an.Statements[0].Err)
	}
	return an.Statements[0].Fingerprint(), nil
}

// config returns the running config.
func (s *server) config() *policies.Config { return s.cfg.Load() }

// authenticate verifies an API caller's bearer token with the same
// verifier (and token cache) as ext_authz.
func (s *server) authenticate(r *http.Request) (policies.Principal, error) {
	raw, ok := grants.BearerToken(r)
	if !ok {
		return policies.Principal{}, errors.New("send your OIDC access token as Authorization: Bearer <token>")
	}
	v, err := s.authz.Verify(r.Context(), raw)
	var te *authz.TokenError
	if errors.As(err, &te) && te.Code == authz.TokenIssuerUnavailable {
		return policies.Principal{}, fmt.Errorf("%w: %s", grants.ErrAuthUnavailable, te.Reason)
	}
	return v.Principal, err
}

// openGrants opens the grant store the config names.
func openGrants(cfg *policies.Config) (grants.Store, error) {
	opts := []grants.Option{grants.WithMaxDuration(cfg.Grants.MaxDuration)}
	if cfg.Grants.Store == "embedded" {
		return grants.NewEmbeddedStore(opts...), nil
	}
	st, err := grants.OpenRedis(cfg.Grants.Store, opts...)
	if err != nil {
		return nil, fmt.Errorf("grants.store: %w", err)
	}
	return st, nil
}

// run serves until ctx is done or a server fails, then stops everything.
func (s *server) run(ctx context.Context, configPath string) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, b := range s.grpcServers {
		g.Go(func() error {
			s.log.Info("serving gRPC", "serves", b.name, "addr", b.lis.Addr().String())
			if err := b.srv.Serve(b.lis); err != nil {
				return fmt.Errorf("%s: %w", b.name, err)
			}
			return nil
		})
	}
	g.Go(func() error {
		s.log.Info("serving API", "addr", s.apiLis.Addr().String())
		if err := s.api.Serve(s.apiLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("server.api: %w", err)
		}
		return nil
	})
	watcher := policies.NewWatcher(configPath, s.log.With("component", "config"), s.apply)
	g.Go(func() error { return watcher.Run(ctx) })
	g.Go(func() error {
		retention := func() time.Duration { return s.config().Audit.Retention }
		audit.RunRetention(ctx, s.audit, retention, audit.DefaultRetentionInterval, nil, s.log.With("component", "audit-retention"))
		return nil
	})

	s.ready.Store(true)
	s.health.Resume()
	s.log.Info("sluice started", "version", Version(), "config", configPath, "xds_version", s.xds.Version())

	<-ctx.Done()
	s.log.Info("sluice stopping")
	s.ready.Store(false)
	s.health.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	_ = s.api.Shutdown(sctx)
	for _, b := range s.grpcServers {
		stopGracefully(sctx, b.srv)
	}
	// The handlers have returned; the records they left in the background
	// (results, responses) are appended before the store closes.
	for _, w := range []interface{ Wait(context.Context) error }{s.gate, s.httpproc} {
		if err := w.Wait(sctx); err != nil {
			s.log.Warn("audit records still in flight at shutdown", "err", err)
		}
	}
	s.stopGrants()
	if c, ok := s.grants.(io.Closer); ok {
		_ = c.Close()
	}
	return g.Wait()
}

// stopGracefully lets in-flight RPCs finish, but ADS streams never end on
// their own, so it forces a stop when the grace period runs out.
func stopGracefully(ctx context.Context, g *grpc.Server) {
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		g.Stop()
	}
}
