package audit

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// TestSQLiteWALStaysBounded: under appends that never pause, the WAL is
// still started over. A background PASSIVE checkpoint alone never catches
// up with such a writer, and the WAL grew without bound (half a gigabyte
// in ten seconds at 20,000 events/s); the writer now finishes the
// checkpoint itself once the WAL passes walCatchUpFrames.
func TestSQLiteWALStaysBounded(t *testing.T) {
	defer func(n int, d time.Duration) { walCatchUpFrames, walCheckpointEvery = n, d }(walCatchUpFrames, walCheckpointEvery)
	walCatchUpFrames, walCheckpointEvery = 64, 50*time.Millisecond // 256 KiB; short rounds
	path := filepath.Join(t.TempDir(), "audit.db")
	s := open(t, "sqlite://"+path, newKey(t))
	defer s.Close()
	ev := statement("agent-1", "orders-db", "SELECT id, status, total FROM orders WHERE customer_id = $1 ORDER BY id DESC LIMIT 50", policies.ClassRead)
	var mu sync.Mutex
	appended, largest := 0, int64(0)
	appendFor(t, s, ev, 8, 1500*time.Millisecond, func() { // several checkpoint rounds
		mu.Lock()
		defer mu.Unlock()
		appended++
		if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > largest {
			largest = fi.Size()
		}
	})
	// Every append writes its row, 900 bytes or more, to the WAL; without
	// the writer's catch-up the WAL holds every one of them.
	t.Logf("%d appends, largest WAL %d KiB", appended, largest>>10)
	if unbounded := int64(appended) * 900; largest > unbounded {
		t.Errorf("WAL reached %d KiB after %d appends: not started over", largest>>10, appended)
	}
}

// TestSQLiteCheckpointWritesBack: the background checkpoint starts writing
// the pages it copied to the disk itself. SQLite flushes the database
// file only in a checkpoint that copies the whole WAL, which one running
// beside a busy writer never does; the copied pages then waited in the
// page cache for the writer's catch-up to flush them all at once (64-176
// ms, every append stalled). Here appends never pause, so no checkpoint
// can complete: without the checkpointer's own write-back the count stays
// at zero.
func TestSQLiteCheckpointWritesBack(t *testing.T) {
	defer func(d time.Duration) { walCheckpointEvery = d }(walCheckpointEvery)
	walCheckpointEvery = 20 * time.Millisecond
	s := open(t, "sqlite://"+filepath.Join(t.TempDir(), "audit.db"), newKey(t))
	defer s.Close()
	db := s.(*store).db.(*sqliteDB)
	ev := statement("agent-1", "orders-db", "SELECT 1", policies.ClassRead)
	appendFor(t, s, ev, 8, 500*time.Millisecond, nil) // many checkpoint rounds
	if n := db.writeBacks.Load(); n == 0 {
		t.Error("no checkpoint started writing the database file back")
	} else {
		t.Logf("%d pieces of the database file written back", n)
	}
}

// appendFor has writers goroutines append ev to s without a pause for d,
// calling each (when set) after every append.
func appendFor(t *testing.T, s Store, ev Event, writers int, d time.Duration, each func()) {
	ctx := context.Background()
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if err := s.Append(ctx, ev); err != nil {
					t.Error(err)
					return
				}
				if each != nil {
					each()
				}
			}
		}()
	}
	wg.Wait()
}

// TestSQLiteSyncHoldsTheWAL: sync keeps one descriptor of the WAL (which
// then hears of every failed writeback of it), and opens the file again
// only if the one at the WAL's path is another file.
func TestSQLiteSyncHoldsTheWAL(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	db, err := openSQLite(ctx, path, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.close()
	if err := db.sync(); err != nil {
		t.Fatal(err)
	}
	held := db.wal
	if err := db.sync(); err != nil {
		t.Fatal(err)
	}
	if db.wal != held {
		t.Fatal("a second sync opened the WAL again")
	}
	// Another file at the WAL's path: sync must flush that one.
	if err := os.Rename(path+"-wal", path+"-wal.old"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+"-wal", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := db.sync(); err != nil {
		t.Fatal(err)
	}
	now, err1 := db.wal.Stat()
	cur, err2 := os.Stat(path + "-wal")
	if err1 != nil || err2 != nil || !os.SameFile(now, cur) {
		t.Errorf("after the WAL was replaced, sync holds another file (%v, %v)", err1, err2)
	}
	// Put SQLite's WAL back before the store closes.
	if err := os.Rename(path+"-wal.old", path+"-wal"); err != nil {
		t.Fatal(err)
	}
}
