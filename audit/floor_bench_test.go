package audit

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// floorStore is the least a durable group commit can do on this disk, a
// measuring stick rather than a store: each batch of appends (their
// encoded events, as a store would have them) is written with one pwrite
// into a preallocated file and made durable with one fdatasync. No
// database, no index, no chain. Beside the real stores its waits show how
// much of their wait the machine and the harness set.
//
// Serial, a batch is written only once the last one's fdatasync has
// returned. Pipelined, the next batch is written while the last is being
// synced, as the SQLite store does with batches of pipelineMin or more;
// on the VM of BENCHMARKS.md that overlap alone raised the p99 at 10,000
// appends/s from about 1.3 ms to 7-12 ms ("Writing while the disk
// writes").
//
// Indexed (serial only), each batch is also inserted into a SQLite
// database on the same disk once it is durable and answered: the design of
// a log written by sluice with the index built behind it, off the commit
// path. The index is never synced by an append (synchronous=OFF, SQLite's
// own checkpoints); only its disk writes and its CPU meet the log's.
type floorStore struct {
	Store
	f         *os.File
	pipelined bool
	in        chan floorAppend
	done      chan struct{}

	index     *sql.DB
	toIndex   chan []floorAppend
	indexDone chan struct{}
}

type floorAppend struct {
	enc  encodedEvent
	done chan error
}

// floorSize is the preallocated log: written over from the start when
// full, so that no fdatasync has to record a new size.
const floorSize = 256 << 20

func newFloorStore(b *testing.B, pipelined, indexed bool) *floorStore {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "floor.log"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	zero := make([]byte, 1<<20)
	for off := int64(0); off < floorSize; off += int64(len(zero)) {
		if _, err := f.WriteAt(zero, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := fdatasync(f); err != nil {
		b.Fatal(err)
	}
	s := &floorStore{f: f, pipelined: pipelined, in: make(chan floorAppend, DefaultMaxBatch), done: make(chan struct{})}
	if indexed {
		s.openIndex(b)
	}
	go s.run()
	return s
}

// openIndex opens the SQLite index behind the log and starts the
// goroutine that fills it.
func (s *floorStore) openIndex(b *testing.B) {
	path := filepath.Join(b.TempDir(), "index.db")
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)")
	if err != nil {
		b.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(sqliteSchema); err != nil {
		b.Fatal(err)
	}
	insert, err := db.Prepare(insertEventSQL)
	if err != nil {
		b.Fatal(err)
	}
	s.index, s.toIndex, s.indexDone = db, make(chan []floorAppend, 1<<16), make(chan struct{})
	go func() {
		defer close(s.indexDone)
		var seq int64
		h := make([]byte, 32)
		for batch := range s.toIndex {
			tx, err := db.Begin()
			if err != nil {
				b.Error(err)
				continue
			}
			st := tx.Stmt(insert)
			for _, a := range batch {
				seq++
				row := eventRow{writer: "floor", seq: seq, hash: h, prev: h, body: string(a.enc.json), ix: a.enc.ix}
				if _, err := st.Exec(row.args()...); err != nil {
					b.Error(err)
				}
			}
			if err := tx.Commit(); err != nil {
				b.Error(err)
			}
		}
	}()
}

func (s *floorStore) Append(ctx context.Context, e Event) error {
	if e.Time.IsZero() {
		e.Time = time.Now() // as Store.Commit stamps it
	}
	enc, err := encodeEvent(e)
	if err != nil {
		return err
	}
	a := floorAppend{enc: enc, done: make(chan error, 1)}
	s.in <- a
	return <-a.done
}

// run writes batches and has each synced: by itself (serial), or by a
// second goroutine while it writes the next (pipelined).
func (s *floorStore) run() {
	defer close(s.done)
	syncs := make(chan []floorAppend)
	synced := make(chan struct{})
	go func() {
		defer close(synced)
		for batch := range syncs {
			err := fdatasync(s.f)
			for _, a := range batch {
				a.done <- err
			}
		}
	}()
	var off int64
	var buf []byte
	for a := range s.in {
		batch := []floorAppend{a}
	fill:
		for len(batch) < DefaultMaxBatch {
			select {
			case a, ok := <-s.in:
				if !ok {
					break fill
				}
				batch = append(batch, a)
			default:
				break fill
			}
		}
		buf = buf[:0]
		for _, a := range batch {
			buf = append(buf, a.enc.json...)
		}
		if off+int64(len(buf)) > floorSize {
			off = 0
		}
		_, err := s.f.WriteAt(buf, off)
		off += int64(len(buf))
		switch {
		case err == nil && s.pipelined:
			syncs <- batch
			continue
		case err == nil:
			err = fdatasync(s.f)
		}
		for _, a := range batch {
			a.done <- err
		}
		if s.toIndex != nil && err == nil {
			s.toIndex <- batch
		}
	}
	close(syncs)
	<-synced
}

func (s *floorStore) Close() error {
	close(s.in)
	<-s.done
	if s.index != nil {
		close(s.toIndex)
		<-s.indexDone
		s.index.Close()
	}
	return s.f.Close()
}

// burn keeps frac of one core busy, in slices of a millisecond, until the
// returned stop is called: other work on the same cores, as the gates and
// a store's own indexing would be.
func burn(frac float64) (stop func()) {
	quit := make(chan struct{})
	go func() {
		for {
			select {
			case <-quit:
				return
			default:
			}
			for t := time.Now(); time.Since(t) < time.Duration(frac*float64(time.Millisecond)); {
			}
			time.Sleep(time.Duration((1 - frac) * float64(time.Millisecond)))
		}
	}()
	return func() { close(quit) }
}
