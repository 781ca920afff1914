package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Store is a durable, tamper-evident, queryable audit trail. Both
// implementations (SQLite, Postgres) share everything above the SQL.
type Store interface {
	Sink
	// Commit appends e and returns it as stored, with its chain position.
	// Like Append, it returns only once the event is durable.
	Commit(ctx context.Context, e Event) (Record, error)
	// Query returns events newest first, one page at a time.
	Query(ctx context.Context, f Filter) (Page, error)
	// Verify checks every chain and every checkpoint signature.
	Verify(ctx context.Context) (*Report, error)
	// Prune removes events older than before, leaving for each chain a
	// signed checkpoint of its new base so that the rest still verifies.
	Prune(ctx context.Context, before time.Time) (PruneResult, error)
	// Writer is the id of this store's own chain ("" when read-only).
	Writer() string
	// Close writes a final checkpoint, waits for the exporters and closes
	// the database.
	Close() error
}

// Defaults for the writer.
const (
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 10 * time.Second
	// DefaultMaxBatch bounds one group commit.
	DefaultMaxBatch = 2048
	// DefaultCommitTimeout bounds one commit, so a hung database fails the
	// waiting appends instead of holding them past their own deadlines.
	DefaultCommitTimeout = 5 * time.Second
)

var (
	// ErrClosed is returned by Append after Close.
	ErrClosed = errors.New("audit: store is closed")
	// errReadOnly is returned by writes to a store opened read-only.
	errReadOnly = errors.New("audit: store is open read-only")
)

type options struct {
	signer             *Signer
	trusted            []ed25519.PublicKey
	writerID           string
	readOnly           bool
	checkpointEvery    int
	checkpointInterval time.Duration
	maxBatch           int
	commitTimeout      time.Duration
	now                func() time.Time
	log                *slog.Logger
	exporters          []Exporter
	sqlitePragmas      []string
	orphanAfter        time.Duration
}

// Option configures Open.
type Option func(*options)

// WithSigner signs checkpoints with s. A writable store needs one.
func WithSigner(s *Signer) Option { return func(o *options) { o.signer = s } }

// WithTrustedKeys adds public keys whose checkpoints Verify accepts (a
// rotated-out key, or the key of a read-only verifier). The signer's own
// key is always trusted. With no key at all, Verify checks each signature
// against the key the checkpoint names and says so in its report.
func WithTrustedKeys(k ...ed25519.PublicKey) Option {
	return func(o *options) { o.trusted = append(o.trusted, k...) }
}

// WithWriterID fixes this process's chain id (a replica name) instead of
// a random one per start. Two live processes must never share one. It is
// 1 to 128 of A-Z a-z 0-9 . _ - : (writerIDRe); Open refuses another.
func WithWriterID(id string) Option { return func(o *options) { o.writerID = id } }

// writerIDRe is what a writer id may be: text every column and body holds
// as it is (one with bytes that are not UTF-8 made verify call its
// checkpoints altered).
var writerIDRe = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// ReadOnly opens the store for query and verification only: no chain is
// started and Append fails.
func ReadOnly() Option { return func(o *options) { o.readOnly = true } }

// WithCheckpoints sets how often the writer seals its chain: after every
// n events or after d with unsealed events, whichever comes first.
func WithCheckpoints(n int, d time.Duration) Option {
	return func(o *options) { o.checkpointEvery, o.checkpointInterval = n, d }
}

// WithMaxBatch bounds how many appends one transaction commits.
func WithMaxBatch(n int) Option { return func(o *options) { o.maxBatch = n } }

// WithCommitTimeout bounds one commit.
func WithCommitTimeout(d time.Duration) Option { return func(o *options) { o.commitTimeout = d } }

// WithClock injects the clock that stamps events and checkpoints.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithLogger sets where the store reports exporter failures and the like.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithExporters ships every committed event to each exporter, from its own
// goroutine and cursor: a failing exporter never delays an Append.
func WithExporters(e ...Exporter) Option {
	return func(o *options) { o.exporters = append(o.exporters, e...) }
}

// Open opens the store a URL names: sqlite:///path/file.db (or
// sqlite://relative.db) or postgres://… / postgresql://….
func Open(ctx context.Context, url string, opts ...Option) (Store, error) {
	switch {
	case strings.HasPrefix(url, "sqlite://"):
		return OpenSQLite(ctx, strings.TrimPrefix(url, "sqlite://"), opts...)
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return OpenPostgres(ctx, url, opts...)
	}
	return nil, fmt.Errorf("audit store %q: expected sqlite://<path> or postgres://…", url)
}

// OpenSQLite opens the embedded store in one file (WAL mode), creating it.
func OpenSQLite(ctx context.Context, path string, opts ...Option) (Store, error) {
	o := buildOptions(opts)
	db, err := openSQLite(ctx, path, o.readOnly, o.sqlitePragmas)
	if err != nil {
		return nil, err
	}
	return finish(newStore(ctx, db, o))
}

// OpenPostgres opens the shared store in the database dsn names, creating
// its tables.
func OpenPostgres(ctx context.Context, dsn string, opts ...Option) (Store, error) {
	o := buildOptions(opts)
	db, err := openPostgres(ctx, dsn, o.readOnly)
	if err != nil {
		return nil, err
	}
	return finish(newStore(ctx, db, o))
}

// finish keeps a nil *store from becoming a non-nil Store.
func finish(s *store, err error) (Store, error) {
	if err != nil {
		return nil, err
	}
	return s, nil
}

func buildOptions(opts []Option) options {
	o := options{
		checkpointEvery: DefaultCheckpointEvery, checkpointInterval: DefaultCheckpointInterval,
		maxBatch: DefaultMaxBatch, commitTimeout: DefaultCommitTimeout, now: time.Now, orphanAfter: orphanAfter,
		log: slog.New(slog.DiscardHandler),
	}
	for _, f := range opts {
		f(&o)
	}
	if o.checkpointEvery <= 0 {
		o.checkpointEvery = DefaultCheckpointEvery
	}
	if o.checkpointInterval <= 0 {
		o.checkpointInterval = DefaultCheckpointInterval
	}
	if o.maxBatch <= 0 {
		o.maxBatch = DefaultMaxBatch
	}
	if o.commitTimeout <= 0 {
		o.commitTimeout = DefaultCommitTimeout
	}
	return o
}

// store is both implementations: a dialect under shared logic.
type store struct {
	db       dialect
	opts     options
	w        *writer // nil when read-only
	shippers []*shipper

	closeOnce sync.Once
	closeErr  error
}

func newStore(ctx context.Context, db dialect, o options) (_ *store, err error) {
	s := &store{db: db, opts: o}
	defer func() {
		if err != nil {
			db.close()
		}
	}()
	if o.signer != nil {
		s.opts.trusted = append(s.opts.trusted, o.signer.Public())
	}
	if o.readOnly {
		return s, nil
	}
	if o.signer == nil {
		return nil, fmt.Errorf("audit: a writable store needs a signing key (audit.signing_key_file): %w", errNoKey)
	}
	id := o.writerID
	if id != "" && !writerIDRe.MatchString(id) {
		return nil, fmt.Errorf("audit: writer id %q: expected 1 to 128 of A-Z a-z 0-9 . _ - :", id)
	}
	if id == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		id = hex.EncodeToString(b[:])
	}
	if s.w, err = startWriter(ctx, db, id, o); err != nil {
		return nil, err
	}
	for _, e := range o.exporters {
		sh := startShipper(db, e, id, o)
		s.shippers = append(s.shippers, sh)
		s.w.notify = append(s.w.notify, sh.wake)
	}
	go s.w.run()
	return s, nil
}

func (s *store) Writer() string {
	if s.w == nil {
		return ""
	}
	return s.w.id
}

func (s *store) Append(ctx context.Context, e Event) error {
	_, err := s.Commit(ctx, e)
	return err
}

func (s *store) Commit(ctx context.Context, e Event) (Record, error) {
	if s.w == nil {
		return Record{}, errReadOnly
	}
	if e.Time.IsZero() {
		e.Time = s.opts.now()
	}
	return s.w.append(ctx, e)
}

func (s *store) Close() error {
	s.closeOnce.Do(func() {
		if s.w != nil {
			s.closeErr = s.w.close()
		}
		for _, sh := range s.shippers {
			sh.stop()
		}
		if e := s.db.close(); s.closeErr == nil {
			s.closeErr = e
		}
	})
	return s.closeErr
}

var _ Store = (*store)(nil)
