package audit

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	// modernc.org/sqlite is SQLite transpiled to Go: no cgo, so the one
	// static sluice binary and its tests build anywhere Go does, and it
	// exposes the WAL, synchronous and fdatasync controls durability needs.
	"modernc.org/sqlite"
)

const sqliteSchema = `
CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_events (
	writer TEXT NOT NULL, seq INTEGER NOT NULL,
	hash BLOB NOT NULL, prev BLOB NOT NULL, body TEXT NOT NULL,
	time_ns INTEGER NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, client TEXT NOT NULL,
	on_behalf_of TEXT NOT NULL, target TEXT NOT NULL, decision TEXT NOT NULL, classes TEXT NOT NULL,
	grant_id TEXT NOT NULL, request TEXT NOT NULL, reason TEXT NOT NULL,
	PRIMARY KEY (writer, seq));
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time_ns);
CREATE INDEX IF NOT EXISTS audit_events_target ON audit_events (target, time_ns);
CREATE INDEX IF NOT EXISTS audit_events_grant ON audit_events (grant_id) WHERE grant_id <> '';
CREATE TABLE IF NOT EXISTS audit_checkpoints (
	id INTEGER PRIMARY KEY AUTOINCREMENT, writer TEXT NOT NULL, kind TEXT NOT NULL,
	seq INTEGER NOT NULL, body TEXT NOT NULL, sig BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS audit_checkpoints_writer ON audit_checkpoints (writer, seq);
CREATE TABLE IF NOT EXISTS audit_export_cursors (
	exporter TEXT NOT NULL, writer TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (exporter, writer));
INSERT INTO audit_meta (key, value) VALUES ('schema_version', '1') ON CONFLICT (key) DO NOTHING;
`

// sqliteDB is the embedded store: one file in WAL mode. Writes go through
// one connection (the store's writer goroutine and retention share it, so
// they never wait on SQLite's lock); reads use a pool that WAL lets run
// beside the writer.
type sqliteDB struct {
	path string
	w    *sql.DB // one connection; nil when read-only
	r    *sql.DB
	// ckpt copies the WAL into the database file from its own connection,
	// so that no COMMIT an append waits on also pays for a checkpoint
	// (SQLite's automatic checkpoint runs inside the committing call).
	ckpt     *sql.DB
	stopCkpt chan struct{}
	ckptDone chan struct{}
	// dbFile is the database file, whose writing to the disk the
	// checkpointer starts after each checkpoint that copied pages (see
	// writeBack); writeBacks counts the pieces started.
	dbFile     *os.File
	writeBacks atomic.Int64

	stmtMu sync.Mutex
	stmts  map[int]*sql.Stmt // n-row INSERTs prepared on w

	walMu   sync.Mutex
	wal     *os.File    // the WAL as sync holds it (see walFile)
	walInfo os.FileInfo // wal's identity, taken when it was opened

	// catchUp asks the writer to finish the checkpointer's work (see
	// checkpointWAL): set when a background checkpoint left a large WAL.
	catchUp atomic.Bool
}

// walCheckpointEvery is how often the WAL is folded into the database
// file, whose copied pages writeBack then sends to the disk over the next
// interval. A round is one SQLite call that copies the interval's pages
// with a pread and a pwrite each: at 10,000 events/s and 200 ms, 7 ms of
// which 4 ms in the kernel, all of it on one of the runtime's Ps, which on
// two cores is half of what the appenders and the writer can run on.
// Shorter rounds hold it for less at a time: at 10,000 events/s the p99
// append wait was 6.7-9.5 ms at 100 ms against 8.9-13.8 ms at 200 ms, and
// at 5,000/s 4.0-4.9 against 4.9-5.4 ms, with the same closed-loop
// throughput (BENCHMARKS.md, "Audit", "The checkpoint's share of a P").
// 50 ms was worse (41 and 49 ms), as it was before writeBack existed
// (22 ms against 15-16 ms at 200 ms, and 36 ms at 1 s).
var walCheckpointEvery = 100 * time.Millisecond // a variable for tests

// walCatchUpFrames is the WAL length (in 4 KiB frames, 64 MiB) past which
// the writer finishes a checkpoint itself. A PASSIVE checkpoint running
// beside a writer that never pauses never catches up with it, and SQLite
// starts the WAL over only once a checkpoint has copied all of it: under
// a sustained 20,000 events/s the WAL grew by ~50 MB/s, half a gigabyte in
// ten seconds. A catch-up copies what the last background checkpoint
// missed and flushes both files: 3-6 ms of writer time, since the
// background checkpoint flushes the database file just before it asks
// (it was 64-176 ms when the pages of every round were left to it). The
// WAL file then stays within about this size plus what is written while
// a catch-up is pending, and is rewritten in place rather than grown. A
// variable for tests.
var walCatchUpFrames = 16384

// openSQLite opens (creating unless readOnly) the database file at path.
// pragmas are extra "name(value)" settings, for tests (max_page_count).
func openSQLite(ctx context.Context, path string, readOnly bool, pragmas []string) (*sqliteDB, error) {
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("sqlite: bad database path %q", path)
	}
	// Linux builds of SQLite sync with fdatasync; this transpiled one keeps
	// fsync unless told. fdatasync flushes the data and the size needed to
	// read it back, so durability is the same and a commit costs about
	// half. The switch is process-wide; nothing else in sluice uses SQLite.
	_, _ = sqlite.Fdatasync(true)
	q := url.Values{}
	// synchronous=NORMAL: in WAL mode a COMMIT writes the WAL but does not
	// fsync it; the writer calls sync (an fdatasync of the WAL) before it
	// answers any append, so an acknowledged batch survives power loss,
	// not just a crash, exactly as with synchronous=FULL. Doing the fsync
	// ourselves lets it overlap the next batch's inserts (see deferredSync).
	for _, p := range append([]string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(NORMAL)", "wal_autocheckpoint(0)"}, pragmas...) {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	dsn := path + "?" + q.Encode()
	if readOnly {
		// Opening would create an empty file where the store is not.
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("sqlite: no audit store: %w", err)
		}
	}
	db := &sqliteDB{path: path}
	var err error
	if !readOnly {
		if db.w, err = sql.Open("sqlite", dsn); err != nil {
			return nil, err
		}
		db.w.SetMaxOpenConns(1)
		db.w.SetMaxIdleConns(1)
		db.w.SetConnMaxIdleTime(0)
		if _, err := db.w.ExecContext(ctx, sqliteSchema); err != nil {
			db.w.Close()
			return nil, fmt.Errorf("sqlite %s: create schema: %w", path, err)
		}
		cq := url.Values{}
		cq.Add("_pragma", "busy_timeout(10000)")
		cq.Add("_pragma", "synchronous(FULL)")
		if db.ckpt, err = sql.Open("sqlite", path+"?"+cq.Encode()); err != nil {
			db.w.Close()
			return nil, err
		}
		db.ckpt.SetMaxOpenConns(1)
		if db.dbFile, err = os.Open(path); err != nil {
			db.ckpt.Close()
			db.w.Close()
			return nil, err
		}
		db.stopCkpt, db.ckptDone = make(chan struct{}), make(chan struct{})
		go db.checkpointWAL()
	}
	rq := url.Values{}
	rq.Add("_pragma", "busy_timeout(10000)")
	rq.Add("_pragma", "query_only(1)")
	if db.r, err = sql.Open("sqlite", path+"?"+rq.Encode()); err != nil {
		db.close()
		return nil, err
	}
	db.r.SetMaxOpenConns(4)
	var n int
	if err := db.r.QueryRowContext(ctx, "SELECT count(*) FROM audit_meta").Scan(&n); err != nil {
		db.close()
		return nil, fmt.Errorf("sqlite %s: not an audit store: %w", path, err)
	}
	return db, nil
}

func (d *sqliteDB) name() string { return "sqlite" }

// sync makes every transaction committed so far durable: it flushes the
// WAL file, which holds them all (the checkpointer syncs the database
// file itself before the WAL can be reused).
func (d *sqliteDB) sync() error {
	if d.w == nil {
		return errReadOnly
	}
	f, err := d.walFile()
	if err != nil {
		return err
	}
	return fdatasync(f)
}

// walFile returns the WAL, opened by the first sync and held until close.
// A descriptor held from then on is told of every failed writeback of the
// file, even one that SQLite's own fsync (in a checkpoint) reported first;
// one opened afterwards would not be, and the sync it made would succeed.
// It also saves an open and a close per sync (about 5 % of the CPU at
// 5,000 events/s), for one stat of the path. SQLite removes the WAL only
// when its last connection closes, and the writer's stays open; if the
// file at the path is another one all the same, that one is opened.
func (d *sqliteDB) walFile() (*os.File, error) {
	d.walMu.Lock()
	defer d.walMu.Unlock()
	path := d.path + "-wal"
	if d.wal != nil {
		if cur, err := os.Stat(path); err == nil && os.SameFile(d.walInfo, cur) {
			return d.wal, nil
		}
		d.wal.Close()
		d.wal, d.walInfo = nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	d.wal, d.walInfo = f, fi
	return f, nil
}

func (d *sqliteDB) ilike() string { return "LIKE" } // ASCII case-insensitive in SQLite

func (d *sqliteDB) checkpointWAL() {
	defer close(d.ckptDone)
	t := time.NewTicker(walCheckpointEvery)
	defer t.Stop()
	lastCopied, writtenTo := 0, int64(0)
	if fi, err := d.dbFile.Stat(); err == nil {
		writtenTo = fi.Size() // what was there at open is on the disk
	}
	for {
		select {
		case <-d.stopCkpt:
			return
		case <-t.C:
			if d.catchUp.Load() {
				// The writer is finishing this round itself; a checkpoint
				// here would hold the lock it needs.
				continue
			}
			// PASSIVE never waits for, nor blocks, the writer; a failure
			// only means the WAL grows until the next try.
			var busy, frames, copied int
			if err := d.ckpt.QueryRow("PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &copied); err != nil {
				continue
			}
			switch {
			case frames >= walCatchUpFrames:
				// The writer's catch-up must make every page copied so
				// far durable before the WAL starts over. Flushed now, the
				// pages of this round are (those of earlier rounds were
				// written back already), so the catch-up itself has only
				// the frames written since to copy and flush: 3-6 ms
				// rather than the 23-40 ms it took after a write-back
				// round (whose interval of new frames it had to copy). An
				// error here is SQLite's too: Linux reports a failed
				// writeback to every open file of it, so the catch-up's own
				// flush fails and the WAL, holding every frame, is kept.
				_ = fdatasync(d.dbFile)
				if fi, err := d.dbFile.Stat(); err == nil {
					writtenTo = fi.Size()
				}
				d.catchUp.Store(true)
			case copied != lastCopied:
				d.writeBack(&writtenTo)
			}
			lastCopied = copied
		}
	}
}

// writeBack starts writing to the disk what the last checkpoint copied
// into the database file, in writeBackChunk pieces spread over one
// checkpoint interval, beginning writeBackSlack before where the last
// round ended (the file grows at its end, where new pages and the pages
// last appended to are). *from is where the last round ended.
//
// SQLite flushes the database file only in a checkpoint that copies the
// whole WAL, and beside a writer that never pauses a PASSIVE checkpoint
// never does: the pages it copied stayed dirty in the page cache until
// the writer's catch-up (or the kernel's writeback, 30 s later) flushed
// them all at once, and the catch-up took 64-176 ms while every append
// waited. Flushing them after each checkpoint (one fdatasync of a few
// megabytes) made the catch-up 2-6 ms, but the WAL's fdatasync waited
// behind each of those flushes five times a second. Only the round that
// asks for a catch-up flushes now (checkpointWAL). Writing the pages in
// small pieces instead keeps the disk's queue short whenever the WAL is
// flushed (BENCHMARKS.md, "Audit": at 20,000 events/s offered, p99 17-27
// ms against 23-31 ms with the flush and 170-302 ms with neither; closed
// loop at 64 writers 7-10 ms against 14.6-15.6 ms and 6.7-7.7 ms). Pieces of
// 16 KiB measured worse, 256 KiB the same. None of this makes anything
// durable, and nothing relies on it: the catch-up's flush still covers
// every page.
func (d *sqliteDB) writeBack(from *int64) {
	fi, err := d.dbFile.Stat()
	if err != nil {
		return
	}
	end := fi.Size()
	start := max(0, min(*from, end)-writeBackSlack) &^ (writeBackChunk - 1)
	*from = end
	pieces := (end - start + writeBackChunk - 1) / writeBackChunk
	gap := walCheckpointEvery / time.Duration(max(pieces, 1))
	pace := time.NewTimer(0)
	defer pace.Stop()
	for off := start; off < end; off += writeBackChunk {
		select {
		case <-d.stopCkpt:
			return
		case <-pace.C:
		}
		if startWriteback(d.dbFile, off, writeBackChunk) != nil {
			return
		}
		d.writeBacks.Add(1)
		pace.Reset(gap)
	}
}

// writeBackChunk and writeBackSlack shape writeBack's rounds.
const (
	writeBackChunk = 64 << 10
	writeBackSlack = 1 << 20
)

func (d *sqliteDB) close() error {
	var err error
	if d.ckpt != nil {
		close(d.stopCkpt)
		<-d.ckptDone
		_, _ = d.ckpt.Exec("PRAGMA wal_checkpoint(TRUNCATE)")
		d.ckpt.Close()
		d.dbFile.Close()
	}
	d.walMu.Lock()
	if d.wal != nil {
		d.wal.Close()
		d.wal, d.walInfo = nil, nil
	}
	d.walMu.Unlock()
	if d.w != nil {
		for _, st := range d.stmts {
			_ = st.Close()
		}
		err = d.w.Close()
	}
	if d.r != nil {
		if e := d.r.Close(); err == nil {
			err = e
		}
	}
	return err
}

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }

type sqlQuerier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
}

type sqliteQ struct{ sqlQuerier }

func (q sqliteQ) query(ctx context.Context, s string, args ...any) (rows, error) {
	rs, err := q.QueryContext(ctx, s, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rs}, nil
}

func (q sqliteQ) exec(ctx context.Context, s string, args ...any) (int64, error) {
	res, err := q.ExecContext(ctx, s, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (d *sqliteDB) query(ctx context.Context, s string, args ...any) (rows, error) {
	return sqliteQ{d.r}.query(ctx, s, args...)
}

func (d *sqliteDB) exec(ctx context.Context, s string, args ...any) (int64, error) {
	if d.w == nil {
		return 0, errReadOnly
	}
	return sqliteQ{d.w}.exec(ctx, s, args...)
}

// snapshot reads in one deferred transaction on a reader connection: in
// WAL mode it sees the database as of its first read until it ends. It
// never blocks the writer; the WAL only grows meanwhile, since the
// checkpoints (PASSIVE) cannot copy past a reader's snapshot.
func (d *sqliteDB) snapshot(ctx context.Context, fn func(querier) error) error {
	tx, err := d.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	return fn(sqliteQ{tx})
}

func (d *sqliteDB) tx(ctx context.Context, _ string, fn func(querier) error) error {
	if d.w == nil {
		return errReadOnly
	}
	tx, err := d.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(sqliteQ{tx}); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

func (d *sqliteDB) commit(ctx context.Context, evs []eventRow, cps []checkpointRow) error {
	if d.catchUp.Load() {
		// Between two of its own transactions the writer copies what the
		// background checkpoint did not (the frames written while it ran),
		// so the checkpoint is complete and this commit starts the WAL
		// over. If another checkpoint held the lock (busy), the next
		// commit tries again; any other shortfall (a reader still on an
		// older snapshot, an error) is left to the checkpointer's next
		// round, so that the writer does not pay for a checkpoint on
		// every commit while, say, an audit query runs.
		var busy, frames, copied int
		err := d.w.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &copied)
		if err != nil || busy == 0 {
			d.catchUp.Store(false)
		}
	}
	// Multi-row INSERTs: one statement step per sqliteInsertRows events
	// instead of one per event, each statement prepared once (parsing a
	// 64-row INSERT cost a fifth of a commit's CPU). They are prepared
	// before the transaction takes the one writer connection.
	full, rest := d.prepared(ctx, sqliteInsertRows), d.prepared(ctx, len(evs)%sqliteInsertRows)
	if full.err != nil || rest.err != nil {
		return errors.Join(full.err, rest.err)
	}
	return d.tx(ctx, "", func(q querier) error {
		tx := q.(sqliteQ).sqlQuerier.(*sql.Tx)
		args := make([]any, 0, sqliteInsertRows*eventColumns)
		for len(evs) > 0 {
			n := min(len(evs), sqliteInsertRows)
			args = args[:0]
			for i := range evs[:n] {
				args = append(args, evs[i].args()...)
			}
			st := full.st
			if n < sqliteInsertRows {
				st = rest.st
			}
			if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...); err != nil {
				return err
			}
			evs = evs[n:]
		}
		for i := range cps {
			if _, err := tx.ExecContext(ctx, insertCheckpointSQL, cps[i].args()...); err != nil {
				return err
			}
		}
		return nil
	})
}

// preparedInsert is an n-row INSERT prepared on the writer connection, or
// why it could not be.
type preparedInsert struct {
	st  *sql.Stmt
	err error
}

// prepared returns the n-row INSERT (nothing for n = 0), prepared the
// first time it is needed. The one writer connection keeps it, so a
// transaction's StmtContext reuses it without preparing again.
func (d *sqliteDB) prepared(ctx context.Context, n int) preparedInsert {
	if n == 0 {
		return preparedInsert{}
	}
	d.stmtMu.Lock()
	defer d.stmtMu.Unlock()
	if st := d.stmts[n]; st != nil {
		return preparedInsert{st: st}
	}
	st, err := d.w.PrepareContext(ctx, multiInsertSQL(n))
	if err != nil {
		return preparedInsert{err: err}
	}
	if d.stmts == nil {
		d.stmts = make(map[int]*sql.Stmt)
	}
	d.stmts[n] = st
	return preparedInsert{st: st}
}

// sqliteInsertRows bounds one multi-row INSERT: 64 rows of 16 columns
// stay far below SQLite's 32766 bound variables.
const sqliteInsertRows = 64

var multiInsert = map[int]string{}
var multiInsertMu sync.Mutex

// multiInsertSQL is INSERT … VALUES (…), … for n events.
func multiInsertSQL(n int) string {
	multiInsertMu.Lock()
	defer multiInsertMu.Unlock()
	if q, ok := multiInsert[n]; ok {
		return q
	}
	row := "(?" + strings.Repeat(", ?", eventColumns-1) + ")"
	q := insertEventPrefix + row + strings.Repeat(", "+row, n-1)
	multiInsert[n] = q
	return q
}
