package audit

import (
	"context"
	"errors"
	"fmt"
)

// rows is what both drivers' result sets have in common.
type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// querier runs SQL written with ? placeholders (the Postgres dialect
// rebinds them to $n).
type querier interface {
	query(ctx context.Context, q string, args ...any) (rows, error)
	exec(ctx context.Context, q string, args ...any) (int64, error)
}

// dialect is one database behind a Store. Everything above it (chains,
// verification, query, retention, export cursors) is shared SQL.
type dialect interface {
	querier
	name() string
	// commit writes events and checkpoints in one transaction. A dialect
	// that is also a deferredSync (SQLite) returns once the transaction is
	// written, before it is flushed to disk: it is durable only after the
	// sync that follows. Otherwise (Postgres, synchronous_commit on) it
	// returns once the commit is durable.
	commit(ctx context.Context, evs []eventRow, cps []checkpointRow) error
	// tx runs fn in one transaction; lockName serialises it across
	// replicas where the database can (Postgres advisory lock).
	tx(ctx context.Context, lockName string, fn func(querier) error) error
	// snapshot runs fn in a read-only transaction that sees the store as
	// it was at one moment, whatever commits meanwhile.
	snapshot(ctx context.Context, fn func(querier) error) error
	// ilike is the case-insensitive LIKE operator.
	ilike() string
	close() error
}

// deferredSync is a dialect whose commit returns once the transaction is
// written, before it is durable; sync makes every commit written so far
// durable. The writer then overlaps one batch's sync with the next
// batch's inserts when that batch is large enough (see awaitSync) and
// answers appends only after the sync (SQLite). A dialect without it is
// durable when commit returns (Postgres).
type deferredSync interface {
	sync() error
}

type eventRow struct {
	writer     string
	seq        int64
	hash, prev []byte
	body       string
	ix         index
}

type checkpointRow struct {
	writer, kind string
	seq          int64
	body         string
	sig          []byte
}

const (
	insertEventPrefix   = "INSERT INTO audit_events (writer, seq, hash, prev, body, " + indexColumns + ") VALUES "
	insertEventSQL      = insertEventPrefix + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
	eventColumns        = 16
	insertCheckpointSQL = "INSERT INTO audit_checkpoints (writer, kind, seq, body, sig) VALUES (?, ?, ?, ?, ?)"
)

func (r *eventRow) args() []any {
	return append([]any{r.writer, r.seq, r.hash, r.prev, r.body}, r.ix.args()...)
}

func (c *checkpointRow) args() []any { return []any{c.writer, c.kind, c.seq, c.body, c.sig} }

// ErrNotFound is returned for a chain or cursor the store does not hold.
var ErrNotFound = errors.New("not found")

// chainHead returns the last seq of writer's chain and its hash: from its
// newest event, or, when retention removed them all, from its newest
// checkpoint. ErrNotFound means the chain does not exist.
func chainHead(ctx context.Context, q querier, writer string) (int64, Hash, error) {
	var seq int64
	var hb []byte
	err := queryOne(ctx, q, "SELECT seq, hash FROM audit_events WHERE writer = ? ORDER BY seq DESC LIMIT 1", []any{writer}, &seq, &hb)
	if err == nil {
		h, _ := hashFrom(hb)
		return seq, h, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return 0, Hash{}, err
	}
	var body string
	if err := queryOne(ctx, q, "SELECT body FROM audit_checkpoints WHERE writer = ? ORDER BY seq DESC, id DESC LIMIT 1", []any{writer}, &body); err != nil {
		return 0, Hash{}, err
	}
	cp, err := decodeCheckpoint([]byte(body))
	if err != nil {
		return 0, Hash{}, fmt.Errorf("chain %s: newest checkpoint: %w", writer, err)
	}
	return cp.Seq, cp.Head, nil
}

// otherHeads returns the head of every chain in the store but self's.
func otherHeads(ctx context.Context, q querier, self string) ([]ChainHead, error) {
	ws, err := writers(ctx, q)
	if err != nil {
		return nil, err
	}
	var out []ChainHead
	for _, w := range ws {
		if w == self {
			continue
		}
		seq, head, err := chainHead(ctx, q, w)
		switch {
		case errors.Is(err, ErrNotFound): // removed meanwhile
			continue
		case err != nil:
			return nil, err
		}
		out = append(out, ChainHead{Writer: w, Seq: seq, Head: head})
	}
	return out, nil
}

// queryOne scans the first row into dest; ErrNotFound when there is none.
func queryOne(ctx context.Context, q querier, sql string, args []any, dest ...any) error {
	rs, err := q.query(ctx, sql, args...)
	if err != nil {
		return err
	}
	defer rs.Close()
	if !rs.Next() {
		if err := rs.Err(); err != nil {
			return err
		}
		return ErrNotFound
	}
	return rs.Scan(dest...)
}

// writers lists every chain the store knows, from events or checkpoints.
func writers(ctx context.Context, q querier) ([]string, error) {
	return queryStrings(ctx, q, eventWritersCTE+` SELECT writer FROM w WHERE writer IS NOT NULL
UNION SELECT writer FROM audit_checkpoints GROUP BY writer ORDER BY 1`)
}

// eventWritersCTE is w (writer): every writer of audit_events, and a last
// NULL row, found by a loose index scan of the primary key (writer, seq),
// one seek per chain, rather than by reading every event (GROUP BY did:
// seconds on a store holding months of events, at each start, verify and
// export sweep).
const eventWritersCTE = `WITH RECURSIVE w (writer) AS (
	SELECT min(writer) FROM audit_events
	UNION ALL
	SELECT (SELECT e.writer FROM audit_events e WHERE e.writer > w.writer ORDER BY e.writer LIMIT 1) FROM w WHERE w.writer IS NOT NULL
)`

// queryStrings returns the first column of every row.
func queryStrings(ctx context.Context, q querier, sql string, args ...any) ([]string, error) {
	rs, err := q.query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		var s string
		if err := rs.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rs.Err()
}

// storedCheckpoint is a checkpoint row as read back, before verification.
type storedCheckpoint struct {
	id           int64
	writer, kind string
	seq          int64
	body         string
	sig          []byte
}

func checkpointRows(ctx context.Context, q querier) ([]storedCheckpoint, error) {
	rs, err := q.query(ctx, "SELECT id, writer, kind, seq, body, sig FROM audit_checkpoints ORDER BY id")
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []storedCheckpoint
	for rs.Next() {
		var c storedCheckpoint
		if err := rs.Scan(&c.id, &c.writer, &c.kind, &c.seq, &c.body, &c.sig); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rs.Err()
}

// storedEvent is an event row as read back, before verification.
type storedEvent struct {
	seq        int64
	hash, prev []byte
	body       string
	ix         index
}

const selectEventSQL = "SELECT seq, hash, prev, body, " + indexColumns + " FROM audit_events"

func scanEvent(rs rows) (storedEvent, error) {
	var e storedEvent
	err := rs.Scan(append([]any{&e.seq, &e.hash, &e.prev, &e.body}, e.ix.dest()...)...)
	return e, err
}

// record decodes a stored event whose hash the caller trusts or checks.
func (e storedEvent) record() (Record, error) {
	r, err := decodeBody([]byte(e.body))
	if err != nil {
		return Record{}, err
	}
	r.Hash, _ = hashFrom(e.hash)
	return r, nil
}
