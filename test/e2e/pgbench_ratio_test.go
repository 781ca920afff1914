package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/extproc"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/envoysim/envoysim"
	"github.com/sluicehq/sluice/test/testenv"
	"github.com/sluicehq/sluice/xds"
)

// TestPgbenchTPSRatios measures pgbench's TPS on paths to one Postgres,
// in one run, so that the ratios hold on a noisy machine:
//
//   - direct: pgbench to Postgres, as the target role (SCRAM);
//   - passthrough: envoysim with sluice's listener (postgres_proxy,
//     ext_authz, network ext_proc, tcp_proxy), the ext_proc being a
//     processor that answers every chunk with its own bytes;
//   - sluice: the same listener with sluice's network ext_proc, the policy
//     gate and a SQLite audit store, wired as serve wires them;
//   - sluice-noaudit, for the analysis: the same with every audit event
//     discarded, which shows what the durable store adds.
//
// It is a load run, not a check, so it is skipped unless SLUICE_PGBENCH=1.
// SLUICE_PGBENCH_SECONDS (default 5) is each run's -T,
// SLUICE_PGBENCH_ROUNDS (default 3) how many times each path runs each
// script (interleaved; the table shows medians),
// SLUICE_PGBENCH_MODES (default "simple") the query modes, and
// SLUICE_PGBENCH_CPUPROFILE a file name prefix for CPU profiles of this
// process (the stand-in and sluice) over each gateway path's first run
// (PREFIX.passthrough, PREFIX.sluice, PREFIX.sluice-noaudit). Run with -v
// for the table:
//
//	SLUICE_PGBENCH=1 go test ./test/e2e/ -run TestPgbenchTPSRatios -v -timeout 20m
func TestPgbenchTPSRatios(t *testing.T) {
	if os.Getenv("SLUICE_PGBENCH") != "1" {
		t.Skip("a load run of about two minutes per query mode: set SLUICE_PGBENCH=1 to run it")
	}
	envInt := func(name string, def, max int) int {
		s := os.Getenv(name)
		if s == "" {
			return def
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > max {
			t.Fatalf("%s=%q: want 1..%d", name, s, max)
		}
		return n
	}
	seconds, rounds := envInt("SLUICE_PGBENCH_SECONDS", 5, 120), envInt("SLUICE_PGBENCH_ROUNDS", 3, 20)
	modes := []string{"simple"}
	if s := os.Getenv("SLUICE_PGBENCH_MODES"); s != "" {
		modes = strings.Split(s, ",")
	}
	const clients, threads = 4, 2

	pg := testenv.StartPostgres(t)
	pg.CreateDatabase("orders")
	pg.SetAuth(t, "app", upstreamPassword, testenv.AuthSCRAM)
	initPgbench(t, pg)
	idp := testenv.StartOIDC(t)
	idp.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents"}})
	t.Setenv("SLUICE_E2E_ORDERS_PASSWORD", upstreamPassword)

	pass := startBenchGateway(t, pg, idp, benchGatewayOptions{
		config: pgbenchPolicies,
		sink:   func(*testing.T, *policies.Config) audit.Sink { return &recordingSink{} },
		processor: func(*policies.Config, *authz.Server, audit.Sink, authz.GrantStore) (netextprocv3.NetworkExternalProcessorServer, error) {
			return passThroughProcessor{}, nil
		},
	})
	// The gate's Decide (analysis, decision, durable audit append) and
	// the audit Append alone are timed on both sluice paths.
	var memGate, fullGate, memAudit, fullAudit benchLatencies
	auditDB := filepath.Join(t.TempDir(), "audit.db")
	var store audit.Store
	full := startBenchGateway(t, pg, idp, benchGatewayOptions{
		config: "audit: { store: \"sqlite://" + auditDB + "\" }\n" + pgbenchPolicies,
		sink: func(t *testing.T, cfg *policies.Config) audit.Sink {
			var err error
			store, err = audit.OpenConfig(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { store.Close() })
			return &benchTimedSink{Sink: store, l: &fullAudit}
		},
		processor: func(cfg *policies.Config, v *authz.Server, sink audit.Sink, g authz.GrantStore) (netextprocv3.NetworkExternalProcessorServer, error) {
			return extproc.NewNetworkServer(extproc.NetworkOptions{Config: cfg, Verifier: v, Audit: sink, Gate: benchTimedGate(pgbenchPolicyGate(cfg, g, sink), &fullGate)})
		},
	})

	// The same, with the audit discarded: what the durable store adds.
	mem := startBenchGateway(t, pg, idp, benchGatewayOptions{
		config: pgbenchPolicies,
		sink: func(*testing.T, *policies.Config) audit.Sink {
			return &benchTimedSink{Sink: &benchDiscardSink{}, l: &memAudit}
		},
		processor: func(cfg *policies.Config, v *authz.Server, sink audit.Sink, g authz.GrantStore) (netextprocv3.NetworkExternalProcessorServer, error) {
			return extproc.NewNetworkServer(extproc.NetworkOptions{Config: cfg, Verifier: v, Audit: sink, Gate: benchTimedGate(pgbenchPolicyGate(cfg, g, sink), &memGate)})
		},
	})

	paths := []struct {
		key, name   string
		target      pgbenchTarget
		sim         *envoysim.Sim
		gate, audit *benchLatencies
	}{
		{"direct", "direct", pgbenchTarget{port: strconv.Itoa(pg.Port), user: "app", db: "orders", password: upstreamPassword}, nil, nil, nil},
		{"passthrough", "envoysim + pass-through ext_proc", pgbenchTarget{port: pass.port, user: "app", db: "orders", password: upstreamPassword}, pass.sim, nil, nil},
		{"sluice", "envoysim + sluice (policy gate, SQLite audit)", pgbenchTarget{port: full.port, user: "agent-1", db: "anything", password: idp.Token(t, "agent-1")},
			full.sim, &fullGate, &fullAudit},
		{"sluice-noaudit", "envoysim + sluice, audit discarded (for analysis)", pgbenchTarget{port: mem.port, user: "agent-1", db: "anything", password: idp.Token(t, "agent-1")},
			mem.sim, &memGate, &memAudit},
	}

	// One CPU profile per gateway path, of its first run.
	profileBase, profiled := os.Getenv("SLUICE_PGBENCH_CPUPROFILE"), map[string]bool{}

	// How contended the machine was: load average and pressure stall
	// information, at the start and the end.
	t.Logf("before: %s", machineLoad())
	defer func() { t.Logf("after: %s", machineLoad()) }()

	// Warm Postgres's buffers and each path's connections once.
	for _, p := range paths {
		if _, err := runPgbench(p.target, "-S", "-c", "1", "-T", "1"); err != nil {
			t.Fatalf("warm-up on %s: %v", p.name, err)
		}
	}

	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "script\tmode\tpath\tTPS\tlatency avg ms\tconnect ms\tratio to direct [min-max]\tratio to pass-through\t"+
		"CPU µs/txn: go process\tpgbench\tpostgres\tgate Decide mean/p50/p99 ms\taudit Append mean/p50/p99 ms\t\n")
	for _, mode := range modes {
		for _, s := range pgbenchScripts {
			// Rounds interleave the paths, so that drift in the machine's
			// load falls on every path alike; each ratio is to the same
			// round's direct run, and the table shows medians.
			runs := make([][]benchRun, len(paths))
			for _, p := range paths {
				if p.gate != nil {
					p.gate.reset()
					p.audit.reset()
				}
			}
			for round := range rounds {
				var direct, pass float64
				for i, p := range paths {
					if p.target.user == "agent-1" {
						// A session ends with its token (5 minutes here):
						// each run logs in with a fresh one.
						p.target.password = idp.Token(t, "agent-1")
					}
					r := runBenchPath(t, pg, p.target, profileBase, p.key, profiled, s.flag, "-M", mode,
						"-c", strconv.Itoa(clients), "-j", strconv.Itoa(threads), "-T", strconv.Itoa(seconds))
					switch i {
					case 0:
						direct = r.tps
					case 1:
						pass = r.tps
					}
					r.ratio, r.ratioPass = r.tps/direct, r.tps/pass
					runs[i] = append(runs[i], r)
					t.Logf("round %d %s -M %s %s: tps %.0f, ratio %.3f", round+1, s.flag, mode, p.key, r.tps, r.ratio)
				}
			}
			for i, p := range paths {
				rs := runs[i]
				med := func(f func(benchRun) float64) float64 {
					v := make([]float64, len(rs))
					for j, r := range rs {
						v[j] = f(r)
					}
					slices.Sort(v)
					return v[len(v)/2]
				}
				lo := slices.MinFunc(rs, func(a, b benchRun) int { return cmpFloat(a.ratio, b.ratio) }).ratio
				hi := slices.MaxFunc(rs, func(a, b benchRun) int { return cmpFloat(a.ratio, b.ratio) }).ratio
				gate, aud, toPass := "-", "-", "-"
				if i > 0 {
					toPass = fmt.Sprintf("%.3f", med(func(r benchRun) float64 { return r.ratioPass }))
				}
				if p.gate != nil {
					gate, aud = p.gate.summary(), p.audit.summary()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.3f\t%.1f\t%.3f [%.3f-%.3f]\t%s\t%.0f\t%.0f\t%.0f\t%s\t%s\t\n", s.flag, mode, p.name,
					med(func(r benchRun) float64 { return r.tps }), med(func(r benchRun) float64 { return r.latencyMs }),
					med(func(r benchRun) float64 { return r.connectMs }),
					med(func(r benchRun) float64 { return r.ratio }), lo, hi, toPass,
					med(func(r benchRun) float64 { return r.goCPU }), med(func(r benchRun) float64 { return r.pgbenchCPU }),
					med(func(r benchRun) float64 { return r.postgresCPU }), gate, aud)
			}
		}
	}
	tw.Flush()
	t.Logf("pgbench -n -c %d -j %d -T %d, scale 1, %d rounds (medians), %d CPUs\n%s", clients, threads, seconds, rounds, runtime.NumCPU(), table.String())

	for _, p := range paths {
		if p.sim != nil {
			p.sim.RequireNoViolations(t)
		}
	}
	if store != nil {
		page, err := store.Query(context.Background(), audit.Filter{Kind: audit.KindStatement, Limit: 1})
		if err != nil || len(page.Records) == 0 {
			t.Errorf("the SQLite audit store holds no statement: %v", err)
		}
	}
}

// benchRun is one pgbench run on one path; CPU times are per transaction
// in microseconds.
type benchRun struct {
	tps, latencyMs, connectMs float64
	// ratio and ratioPass are to the same round's direct and
	// pass-through runs.
	ratio, ratioPass               float64
	goCPU, pgbenchCPU, postgresCPU float64
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// runBenchPath runs pgbench once against target, with a CPU profile of
// this process to profileBase.key when it is the path's first run, and
// fails t unless every transaction succeeded.
func runBenchPath(t *testing.T, pg *testenv.Postgres, target pgbenchTarget, profileBase, key string, profiled map[string]bool, args ...string) benchRun {
	t.Helper()
	var prof *os.File
	if profileBase != "" && key != "direct" && !profiled[key] {
		profiled[key] = true
		var err error
		if prof, err = os.Create(profileBase + "." + key); err != nil {
			t.Fatal(err)
		}
		defer prof.Close()
		if err := pprof.StartCPUProfile(prof); err != nil {
			t.Fatal(err)
		}
	}
	cpu0 := benchProcessCPU()
	pg0, pgErr0 := postgresCPU(pg)
	res, err := runPgbench(target, args...)
	cpu := benchProcessCPU() - cpu0
	if prof != nil {
		pprof.StopCPUProfile()
	}
	// The backends exit just after pgbench; their time counts once the
	// postmaster has reaped them.
	time.Sleep(300 * time.Millisecond)
	pg1, pgErr1 := postgresCPU(pg)
	if err != nil {
		t.Fatalf("pgbench %v on %s: %v\n%s", args, key, err, res.output)
	}
	if res.processed <= 0 || res.failed != 0 {
		t.Fatalf("pgbench %v on %s: %d processed, %d failed\n%s", args, key, res.processed, res.failed, res.output)
	}
	perTxn := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(res.processed) }
	r := benchRun{tps: res.tps, latencyMs: res.latencyMs, connectMs: res.connectMs, goCPU: perTxn(cpu), pgbenchCPU: perTxn(res.cpu), postgresCPU: perTxn(pg1 - pg0)}
	if pgErr0 != nil || pgErr1 != nil {
		r.postgresCPU = -1
	}
	return r
}

// machineLoad is the load average and the CPU and I/O pressure stall
// averages (the share of time some task waited for a CPU or for I/O).
func machineLoad() string {
	var b strings.Builder
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&b, "loadavg %s", strings.Join(strings.Fields(string(la))[:3], " "))
	}
	for _, r := range []string{"cpu", "io"} {
		if psi, err := os.ReadFile("/proc/pressure/" + r); err == nil {
			line, _, _ := strings.Cut(string(psi), "\n")
			fmt.Fprintf(&b, "; %s pressure %s", r, strings.Join(strings.Fields(line)[1:4], " "))
		}
	}
	return b.String()
}

// benchProcessCPU is this process's user+system time: the stand-in, the
// processors and sluice's services all run in it; Postgres and pgbench do
// not.
func benchProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// postgresCPU is the CPU time of a Postgres cluster: the postmaster's,
// its exited children's (backends, reaped by it) and its live children's
// (background workers, and backends not yet gone), from /proc.
func postgresCPU(pg *testenv.Postgres) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(pg.SocketDir, "data", "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		return 0, err
	}
	// Fields after the command: state(3) ppid(4) ... utime(14) stime(15)
	// cutime(16) cstime(17), counted from 1 over the whole line.
	stat := func(path string) (ppid int, self, children int64, ok bool) {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0, 0, 0, false
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // f[0] is field 3
		if len(f) < 15 {
			return 0, 0, 0, false
		}
		n := func(i int) int64 { v, _ := strconv.ParseInt(f[i-3], 10, 64); return v }
		return int(n(4)), n(14) + n(15), n(16) + n(17), true
	}
	_, self, reaped, ok := stat(fmt.Sprintf("/proc/%d/stat", pid))
	if !ok {
		return 0, fmt.Errorf("postmaster %d: no /proc entry", pid)
	}
	ticks := self + reaped
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		if ppid, t, _, ok := stat("/proc/" + d.Name() + "/stat"); ok && ppid == pid {
			ticks += t
		}
	}
	const userHZ = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// benchLatencies collects durations (of gate decisions, audit appends).
type benchLatencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *benchLatencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *benchLatencies) reset() {
	l.mu.Lock()
	l.d = l.d[:0]
	l.mu.Unlock()
}

// summary is "mean/p50/p99" in milliseconds.
func (l *benchLatencies) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return "-"
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	ms := func(q float64) float64 { return float64(s[int(q*float64(len(s)-1))]) / 1e6 }
	return fmt.Sprintf("%.2f/%.2f/%.2f", float64(sum)/float64(len(s))/1e6, ms(0.5), ms(0.99))
}

// benchTimedGate times each decision of g.
func benchTimedGate(g postgres.Gate, l *benchLatencies) postgres.Gate {
	return postgres.GateFunc(func(ctx context.Context, st postgres.Statement) postgres.Verdict {
		t0 := time.Now()
		v := g.Decide(ctx, st)
		l.add(time.Since(t0))
		return v
	})
}

// benchTimedSink times each statement event's Append.
type benchTimedSink struct {
	audit.Sink
	l *benchLatencies
}

func (s *benchTimedSink) Append(ctx context.Context, e audit.Event) error {
	t0 := time.Now()
	err := s.Sink.Append(ctx, e)
	if e.Kind == audit.KindStatement {
		s.l.add(time.Since(t0))
	}
	return err
}

// benchDiscardSink accepts every event and keeps none.
type benchDiscardSink struct{}

func (benchDiscardSink) Append(context.Context, audit.Event) error { return nil }

// passThroughProcessor is a network ext_proc that changes nothing: every chunk is
// answered with exactly its bytes and end_of_stream, in its direction, as
// Envoy's own integration tests do (envoy-contract.md section 1). It
// measures what the stand-in and one gRPC round trip per chunk cost.
type passThroughProcessor struct {
	netextprocv3.UnimplementedNetworkExternalProcessorServer
}

func (passThroughProcessor) Process(stream netextprocv3.NetworkExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		var resp *netextprocv3.ProcessingResponse
		if d := req.GetReadData(); d != nil {
			resp = &netextprocv3.ProcessingResponse{ReadData: &netextprocv3.Data{Data: d.GetData(), EndOfStream: d.GetEndOfStream()}}
		} else if d := req.GetWriteData(); d != nil {
			resp = &netextprocv3.ProcessingResponse{WriteData: &netextprocv3.Data{Data: d.GetData(), EndOfStream: d.GetEndOfStream()}}
		} else {
			continue // no chunk, nothing asked
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// benchGateway is envoysim serving one Postgres target (orders-db, on pg) from
// sluice's xDS, with sluice's ext_authz and the given network ext_proc.
type benchGateway struct {
	sim  *envoysim.Sim
	port string
}

type benchGatewayOptions struct {
	// config is appended to pgPathConfig: policies, audit.
	config string
	// sink is the audit sink of ext_authz and of the processor.
	sink func(t *testing.T, cfg *policies.Config) audit.Sink
	// processor is the network ext_proc service; v is the authz server
	// (the token verifier serve shares), g the grant store.
	processor func(cfg *policies.Config, v *authz.Server, sink audit.Sink, g authz.GrantStore) (netextprocv3.NetworkExternalProcessorServer, error)
}

// startBenchGateway is startPGPathWith's wiring for a Postgres and an OIDC
// provider that already run, with the processor chosen by the caller and
// without the stand-in's per-chunk log (which would be measured too).
func startBenchGateway(t *testing.T, pg *testenv.Postgres, idp *testenv.OIDCProvider, o benchGatewayOptions) *benchGateway {
	t.Helper()
	xdsSrv, err := xds.NewServer(xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := serveGRPC(t, xdsSrv.Register)
	authzLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	extprocLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policies.Load("e2e-pgbench.yaml", []byte(fmt.Sprintf(pgPathConfig, xdsAddr, authzLis.Addr(), extprocLis.Addr(),
		freePort(t), idp.Issuer, freePort(t), pg.Port, o.config)))
	if err != nil {
		t.Fatal(err)
	}
	sink := o.sink(t, cfg)
	store := authz.GrantsFrom(grants.NewEmbeddedStore())
	authzSrv, err := authz.NewServer(cfg, authz.Options{Grants: store, Audit: sink})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := o.processor(cfg, authzSrv, sink, store)
	if err != nil {
		t.Fatal(err)
	}
	serveGRPCOn(t, authzLis, authzSrv.Register)
	serveGRPCOn(t, extprocLis, func(g *grpc.Server) { netextprocv3.RegisterNetworkExternalProcessorServer(g, proc) })
	if err := xdsSrv.Update(cfg); err != nil {
		t.Fatal(err)
	}
	sim := startSim(t, xdsAddr, "orders-db", envoysim.WithNode(&corev3.Node{Id: "e2e-pg"}), envoysim.WithCloseThroughFilterManager(true))
	_, port, _ := net.SplitHostPort(sim.ListenerAddr("orders-db"))
	return &benchGateway{sim: sim, port: port}
}
