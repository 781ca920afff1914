package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const postgresSchema = `
CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_events (
	writer TEXT NOT NULL, seq BIGINT NOT NULL,
	hash BYTEA NOT NULL, prev BYTEA NOT NULL, body TEXT NOT NULL,
	time_ns BIGINT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, client TEXT NOT NULL,
	on_behalf_of TEXT NOT NULL, target TEXT NOT NULL, decision TEXT NOT NULL, classes TEXT NOT NULL,
	grant_id TEXT NOT NULL, request TEXT NOT NULL, reason TEXT NOT NULL,
	PRIMARY KEY (writer, seq));
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time_ns);
CREATE INDEX IF NOT EXISTS audit_events_target ON audit_events (target, time_ns);
CREATE INDEX IF NOT EXISTS audit_events_grant ON audit_events (grant_id) WHERE grant_id <> '';
CREATE TABLE IF NOT EXISTS audit_checkpoints (
	id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, writer TEXT NOT NULL, kind TEXT NOT NULL,
	seq BIGINT NOT NULL, body TEXT NOT NULL, sig BYTEA NOT NULL);
CREATE INDEX IF NOT EXISTS audit_checkpoints_writer ON audit_checkpoints (writer, seq);
CREATE TABLE IF NOT EXISTS audit_export_cursors (
	exporter TEXT NOT NULL, writer TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (exporter, writer));
INSERT INTO audit_meta (key, value) VALUES ('schema_version', '1') ON CONFLICT (key) DO NOTHING;
`

// postgresDB is the shared store: several sluice replicas write their own
// chains into one database.
type postgresDB struct{ pool *pgxpool.Pool }

func openPostgres(ctx context.Context, dsn string, readOnly bool) (*postgresDB, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	// An event is durable when its COMMIT returns: never let a server or
	// role default of synchronous_commit=off (or local) weaken that.
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	cfg.ConnConfig.RuntimeParams["application_name"] = "sluice-audit"
	if readOnly {
		cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	db := &postgresDB{pool: pool}
	if !readOnly {
		// Replicas starting together would race on CREATE TABLE IF NOT
		// EXISTS; one advisory lock makes schema creation one at a time.
		err = db.tx(ctx, "schema", func(q querier) error {
			_, err := q.exec(ctx, postgresSchema)
			return err
		})
	} else {
		var n int
		err = queryOne(ctx, db, "SELECT count(*) FROM audit_meta", nil, &n)
	}
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: audit schema: %w", err)
	}
	return db, nil
}

func (d *postgresDB) name() string  { return "postgres" }
func (d *postgresDB) ilike() string { return "ILIKE" }
func (d *postgresDB) close() error  { d.pool.Close(); return nil }

// rebind turns ? placeholders into $1, $2, …; the SQL here has no ? in
// literals.
func rebind(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

type pgQ struct {
	query_ func(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	exec_  func(ctx context.Context, sql string, args ...any) (int64, error)
}

func (q pgQ) query(ctx context.Context, s string, args ...any) (rows, error) {
	rs, err := q.query_(ctx, rebind(s), args...)
	if err != nil {
		return nil, err
	}
	return rs, nil
}

func (q pgQ) exec(ctx context.Context, s string, args ...any) (int64, error) {
	return q.exec_(ctx, rebind(s), args...)
}

func poolQ(p *pgxpool.Pool) pgQ {
	return pgQ{query_: p.Query, exec_: func(ctx context.Context, s string, args ...any) (int64, error) {
		tag, err := p.Exec(ctx, s, args...)
		return tag.RowsAffected(), err
	}}
}

func txQ(tx pgx.Tx) pgQ {
	return pgQ{query_: tx.Query, exec_: func(ctx context.Context, s string, args ...any) (int64, error) {
		tag, err := tx.Exec(ctx, s, args...)
		return tag.RowsAffected(), err
	}}
}

func (d *postgresDB) query(ctx context.Context, s string, args ...any) (rows, error) {
	return poolQ(d.pool).query(ctx, s, args...)
}

func (d *postgresDB) exec(ctx context.Context, s string, args ...any) (int64, error) {
	return poolQ(d.pool).exec(ctx, s, args...)
}

// snapshot reads in one REPEATABLE READ, READ ONLY transaction: every
// statement in it sees the same committed state.
func (d *postgresDB) snapshot(ctx context.Context, fn func(querier) error) error {
	return pgx.BeginTxFunc(ctx, d.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		return fn(txQ(tx))
	})
}

func (d *postgresDB) tx(ctx context.Context, lockName string, fn func(querier) error) error {
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if lockName != "" {
			h := fnv.New64a()
			h.Write([]byte("sluice-audit:" + lockName))
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(h.Sum64())); err != nil {
				return err
			}
		}
		return fn(txQ(tx))
	})
}

// insertUnnestSQL inserts a whole batch as one statement: one array per
// column.
const insertUnnestSQL = "INSERT INTO audit_events (writer, seq, hash, prev, body, " + indexColumns + ") " +
	"SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bytea[], $5::text[], $6::bigint[], $7::text[], $8::text[], " +
	"$9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[])"

// commit writes a batch in one round trip and one transaction, returning
// once Postgres has committed it (ReadyForQuery follows the commit).
//
// A batch of events alone, nearly every group commit, is loaded with COPY
// in binary format: the rows go as they are, with no arrays to build, send
// and take apart again (INSERT … SELECT FROM unnest(…)). With 64 appends in
// flight on 2 vCPUs that is about a third less CPU per event, on the
// server and in sluice alike, which raised throughput by about half. A
// batch that carries a checkpoint needs a second statement in the same
// transaction; see commitPipelined.
//
// Tried and measured slower: writing batch k+1 on a second connection
// while batch k's COMMIT is in flight, committing it once k's succeeded.
// That adds a round trip per batch (the COMMIT that must wait) and splits
// the appends in flight into smaller batches. With the CPU as the limit
// (2 vCPUs, 64 appenders, the server on the same cores) it cost 10–20 %
// more CPU per event, gave no more throughput and a worse p99, with INSERT
// and with COPY alike.
func (d *postgresDB) commit(ctx context.Context, evs []eventRow, cps []checkpointRow) error {
	if len(cps) == 0 && len(evs) > 0 {
		return d.copyEvents(ctx, evs)
	}
	return d.commitPipelined(ctx, evs, cps)
}

// copyEventsSQL loads events in Postgres's binary COPY format. A single
// statement sent as a simple query runs in its own transaction, which the
// server commits (synchronous_commit=on: WAL flushed) before it sends
// ReadyForQuery; CopyFrom returns only after that.
const copyEventsSQL = "COPY audit_events (writer, seq, hash, prev, body, " + indexColumns + ") FROM STDIN (FORMAT binary)"

// copyEvents sends the COPY and its data without waiting in between
// (pgconn streams the data right after the query), so it is one round
// trip like the pipeline.
func (d *postgresDB) copyEvents(ctx context.Context, evs []eventRow) error {
	data := appendCopyEvents(make([]byte, 0, copyEventsSize(evs)), evs)
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	tag, err := conn.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(data), copyEventsSQL)
	if err != nil {
		return err
	}
	if n := tag.RowsAffected(); n != int64(len(evs)) {
		return fmt.Errorf("postgres: COPY reported %d rows for a batch of %d events", n, len(evs))
	}
	return nil
}

// commitPipelined sends the batch's statements in one pipeline ending in
// one Sync: Postgres runs them as one implicit transaction and commits it
// before it answers ReadyForQuery, which SendBatch's Close waits for. One
// round trip per group commit, instead of BEGIN, INSERT, COMMIT each
// waiting on the last.
func (d *postgresDB) commitPipelined(ctx context.Context, evs []eventRow, cps []checkpointRow) error {
	b := &pgx.Batch{}
	if len(evs) > 0 {
		b.Queue(insertUnnestSQL, unnestArgs(evs)...)
	}
	for i := range cps {
		b.Queue(rebind(insertCheckpointSQL), cps[i].args()...)
	}
	br := d.pool.SendBatch(ctx, b)
	for range b.Len() {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return err
		}
	}
	return br.Close()
}

// Postgres's binary COPY format: a signature, a flags word and a header
// extension length (both zero), then per row the number of fields and
// each field as a length and its binary value, then -1 as a field count.
// text is its UTF-8 bytes, bytea its bytes, bigint 8 bytes big-endian.
var copyHeader = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

const copyTrailer = 0xffff // a field count of -1

// copyEventsSize is the exact length appendCopyEvents writes.
func copyEventsSize(evs []eventRow) int {
	n := len(copyHeader) + 2
	for i := range evs {
		e := &evs[i]
		x := &e.ix
		n += 2 + eventColumns*4 + 2*8 + len(e.writer) + len(e.hash) + len(e.prev) + len(e.body) +
			len(x.Kind) + len(x.Subject) + len(x.Client) + len(x.OnBehalfOf) + len(x.Target) +
			len(x.Decision) + len(x.Classes) + len(x.GrantID) + len(x.Request) + len(x.Reason)
	}
	return n
}

// appendCopyEvents encodes evs as COPY data for copyEventsSQL's columns.
func appendCopyEvents(b []byte, evs []eventRow) []byte {
	b = append(b, copyHeader...)
	for i := range evs {
		e := &evs[i]
		x := &e.ix
		b = binary.BigEndian.AppendUint16(b, eventColumns)
		b = appendCopyBytes(b, e.writer)
		b = appendCopyInt8(b, e.seq)
		b = appendCopyBytes(b, e.hash)
		b = appendCopyBytes(b, e.prev)
		b = appendCopyBytes(b, e.body)
		b = appendCopyInt8(b, x.TimeNS)
		for _, s := range [...]string{x.Kind, x.Subject, x.Client, x.OnBehalfOf, x.Target, x.Decision, x.Classes, x.GrantID, x.Request, x.Reason} {
			b = appendCopyBytes(b, s)
		}
	}
	return binary.BigEndian.AppendUint16(b, copyTrailer)
}

func appendCopyBytes[T string | []byte](b []byte, v T) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

func appendCopyInt8(b []byte, v int64) []byte {
	b = binary.BigEndian.AppendUint32(b, 8)
	return binary.BigEndian.AppendUint64(b, uint64(v))
}

func unnestArgs(evs []eventRow) []any {
	n := len(evs)
	var (
		writer, body                                 = make([]string, n), make([]string, n)
		seq, timeNS                                  = make([]int64, n), make([]int64, n)
		hash, prev                                   = make([][]byte, n), make([][]byte, n)
		kind, subject, client, obo, target, decision = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		classes, grantID, request, reason            = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	)
	for i, e := range evs {
		writer[i], seq[i], hash[i], prev[i], body[i] = e.writer, e.seq, e.hash, e.prev, e.body
		x := e.ix
		timeNS[i], kind[i], subject[i], client[i], obo[i], target[i] = x.TimeNS, x.Kind, x.Subject, x.Client, x.OnBehalfOf, x.Target
		decision[i], classes[i], grantID[i], request[i], reason[i] = x.Decision, x.Classes, x.GrantID, x.Request, x.Reason
	}
	return []any{writer, seq, hash, prev, body, timeNS, kind, subject, client, obo, target, decision, classes, grantID, request, reason}
}
