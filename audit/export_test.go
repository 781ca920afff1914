package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicehq/sluice/policies"
)

// receiver is an OTLP/gRPC logs endpoint (the real protocol, served by
// grpc-go) that refuses every request while down is set.
type receiver struct {
	collogs.UnimplementedLogsServiceServer
	down atomic.Bool
	mu   sync.Mutex
	seqs map[string]map[int64]bool // writer → seqs received
	n    int
	// truncated holds the seqs received with sluice.audit.truncated set,
	// and bodies their bodies' lengths.
	truncated map[int64]bool
	bodies    map[int64]int
	// tables holds, per seq, how many sluice.tables items arrived and the
	// longest one's length.
	tables map[int64][2]int
}

func (r *receiver) Export(_ context.Context, req *collogs.ExportLogsServiceRequest) (*collogs.ExportLogsServiceResponse, error) {
	if r.down.Load() {
		return nil, status.Error(codes.Unavailable, "receiver down")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rl := range req.ResourceLogs {
		for _, sl := range rl.ScopeLogs {
			for _, lr := range sl.LogRecords {
				var w string
				var seq int64
				var cut bool
				for _, a := range lr.Attributes {
					switch a.Key {
					case "sluice.audit.writer":
						w = a.Value.GetStringValue()
					case "sluice.audit.seq":
						seq = a.Value.GetIntValue()
					case "sluice.audit.truncated":
						cut = a.Value.GetBoolValue()
					case "sluice.tables":
						items := a.Value.GetArrayValue().GetValues()
						longest := 0
						for _, v := range items {
							longest = max(longest, len(v.GetStringValue()))
						}
						r.tables[seq] = [2]int{len(items), longest}
					}
				}
				r.truncated[seq] = cut
				r.bodies[seq] = len(lr.Body.GetStringValue())
				if r.seqs[w] == nil {
					r.seqs[w] = map[int64]bool{}
				}
				r.seqs[w][seq] = true
				r.n++
			}
		}
	}
	return &collogs.ExportLogsServiceResponse{}, nil
}

func (r *receiver) count(w string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seqs[w])
}

func startReceiver(t *testing.T) (*receiver, string) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{seqs: map[string]map[int64]bool{}, truncated: map[int64]bool{}, bodies: map[int64]int{}, tables: map[int64][2]int{}}
	srv := grpc.NewServer()
	collogs.RegisterLogsServiceServer(srv, r)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return r, lis.Addr().String()
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

func lines(t *testing.T, path string) []Record {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	// Only whole lines count: the exporter may be writing the next one
	// while a test polls the file. Every whole line must parse.
	var out []Record
	rd := bufio.NewReader(f)
	for {
		line, err := rd.ReadBytes('\n')
		if err != nil {
			return out // EOF, possibly after a line still being written
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("jsonl line %q: %v", line, err)
		}
		out = append(out, r)
	}
}

// testExportCatchUp: a receiver that is down never slows an Append; the
// exporter catches up when it is back, and after a restart the next
// process ships what the last one could not.
func testExportCatchUp(t *testing.T, e env) {
	url, _ := e.fresh(t)
	key := newKey(t)
	rcv, addr := startReceiver(t)
	rcv.down.Store(true)
	jsonl := filepath.Join(t.TempDir(), "audit.jsonl")
	exporters := func() []Exporter {
		o, err := NewOTLPExporter(context.Background(), OTLPOptions{Endpoint: addr, Insecure: true, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		j, err := NewJSONLExporter(jsonl)
		if err != nil {
			t.Fatal(err)
		}
		return []Exporter{o, j}
	}
	s1 := open(t, url, key, WithExporters(exporters()...))
	start := time.Now()
	for i := range 100 {
		ev := statement("agent", "orders-db", "SELECT 1", policies.ClassRead)
		ev.RequestID = string(rune('a' + i%26))
		if err := s1.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("100 appends took %s with the OTLP receiver down", d)
	}
	waitFor(t, "100 JSON lines", 10*time.Second, func() bool { return len(lines(t, jsonl)) == 100 })
	if got := lines(t, jsonl); got[0].Seq != 1 || got[99].Seq != 100 || got[0].Writer != s1.Writer() || got[0].Hash.IsZero() {
		t.Errorf("jsonl: first %+v, last %+v", got[0], got[99])
	}
	if rcv.count(s1.Writer()) != 0 {
		t.Fatal("the receiver is down but got records")
	}
	rcv.down.Store(false)
	waitFor(t, "OTLP catch-up", 20*time.Second, func() bool { return rcv.count(s1.Writer()) == 100 })

	// Down again; s1 appends and closes without shipping; s2 (another
	// process, another chain) ships s1's chain once it is idle.
	rcv.down.Store(true)
	for range 10 {
		if err := s1.Append(context.Background(), statement("agent", "orders-db", "SELECT 2", policies.ClassRead)); err != nil {
			t.Fatal(err)
		}
	}
	w1 := s1.Writer()
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	rcv.down.Store(false)
	s2 := open(t, url, key, WithExporters(exporters()...), func(o *options) { o.orphanAfter = 0 })
	defer s2.Close()
	waitFor(t, "the stopped chain's tail", 20*time.Second, func() bool { return rcv.count(w1) == 110 })
	if n := len(lines(t, jsonl)); n != 110 {
		t.Errorf("jsonl has %d lines, want 110", n)
	}
}

// TestOTLPExportSplitsAndCuts: records too large together, or alone, for a
// receiver's 4 MiB message are still shipped. Before, the shipper sent the
// same 512 records again and again ("received message larger than max")
// and the OTLP export of the chain stopped for good.
func TestOTLPExportSplitsAndCuts(t *testing.T) {
	rcv, addr := startReceiver(t)
	o, err := NewOTLPExporter(context.Background(), OTLPOptions{Endpoint: addr, Insecure: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, "sqlite://"+filepath.Join(t.TempDir(), "audit.db"), newKey(t), WithExporters(o))
	defer s.Close()
	ctx := context.Background()
	stmt := "SELECT " + strings.Repeat("x, ", 3400) + "1" // 10 KB
	var wg sync.WaitGroup
	for range 600 {
		wg.Go(func() {
			if err := s.Append(ctx, statement("agent", "orders-db", stmt, policies.ClassRead)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	huge := statement("agent", "orders-db", "SELECT '"+strings.Repeat("é", 3<<20)+"'", policies.ClassRead) // 6 MiB
	huge.Tables = make([]string, 1000)
	for i := range huge.Tables {
		huge.Tables[i] = strings.Repeat("t", 1000)
	}
	rec, err := s.Commit(ctx, huge)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "601 records at the receiver", 30*time.Second, func() bool { return rcv.count(s.Writer()) == 601 })
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if !rcv.truncated[rec.Seq] || rcv.bodies[rec.Seq] > otlpMaxField || rcv.bodies[rec.Seq] < otlpMaxField-1 {
		t.Errorf("the 6 MiB record arrived with truncated=%v and a body of %d bytes", rcv.truncated[rec.Seq], rcv.bodies[rec.Seq])
	}
	if got := rcv.tables[rec.Seq]; got != [2]int{otlpMaxListItems, otlpMaxItem} {
		t.Errorf("the record's 1,000 tables of 1,000 bytes arrived as %d, the longest %d bytes; want %d of at most %d",
			got[0], got[1], otlpMaxListItems, otlpMaxItem)
	}
	if rcv.truncated[1] || rcv.bodies[1] != len(stmt) {
		t.Errorf("a 10 KB record arrived with truncated=%v and a body of %d bytes", rcv.truncated[1], rcv.bodies[1])
	}
}
