package audit

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// benchWriters are the concurrent appenders each benchmark runs with: one
// session, a busy node, a saturated one, and 256 to show how group commit
// scales when more appends are in flight than the budget's 64.
var benchWriters = []int{1, 8, 64, 256}

// BenchmarkAppendSQLite measures durable appends (WAL, synchronous=FULL,
// group commit) to a file on the machine's disk.
func BenchmarkAppendSQLite(b *testing.B) {
	for _, n := range benchWriters {
		b.Run(fmt.Sprintf("writers=%d", n), func(b *testing.B) {
			s := open(b, "sqlite://"+filepath.Join(b.TempDir(), "audit.db"), newKey(b))
			defer s.Close()
			benchAppend(b, s, n)
		})
	}
}

// BenchmarkAppendPostgres measures durable appends to a local Postgres 15
// with fsync on and synchronous_commit on.
func BenchmarkAppendPostgres(b *testing.B) {
	pg := testenv.StartPostgres(b, testenv.WithFsync())
	for i, n := range benchWriters {
		b.Run(fmt.Sprintf("writers=%d", n), func(b *testing.B) {
			s := open(b, pg.CreateDatabase(fmt.Sprintf("bench_%d_%d", i, time.Now().UnixNano())), newKey(b))
			defer s.Close()
			benchAppend(b, s, n)
		})
	}
}

// benchAppend runs b.N appends from n goroutines and reports the rate and
// the distribution of the time each Append waited for its commit.
func benchAppend(b *testing.B, s Store, n int) {
	ev := statement("agent-1", "orders-db", "SELECT id, status, total FROM orders WHERE customer_id = $1 ORDER BY id DESC LIMIT 50", policies.ClassRead)
	ev.MaskedColumns = []string{"customers.email"}
	var next atomic.Int64
	waits := make([][]time.Duration, n)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for g := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for next.Add(1) <= int64(b.N) {
				t := time.Now()
				if err := s.Append(ctx, ev); err != nil {
					b.Error(err)
					return
				}
				waits[g] = append(waits[g], time.Since(t))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(waits...)
	slices.Sort(all)
	pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(0, "ns/op")
}
