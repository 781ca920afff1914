package extproc

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/policies"
)

// ViewCatalog tells the gate what the relations a statement reads are, so
// that column rules hold through views (design.md section 6). The parser
// sees only names: "SELECT * FROM v_customers" reads customers.email
// through a view no rule names. For each postgres target the catalog reads
// every relation's name and kind from the target itself (a connection of
// its own with the target's credentials, not through Envoy) and analyses
// each view's definition (pg_get_viewdef) into column lineage. A source
// that names a view then stands also for the sources of the view's column,
// through views over views.
//
// It fails closed. A name the catalog does not hold (a view created since
// the last load, a temporary table, a typo) reloads the catalog, at most
// once per MinReload, and a name still unknown may carry anything: it
// matches every column rule. A target whose catalog cannot be read masks
// every column a rule could name, until a load succeeds.
//
// Safe for concurrent use.
type ViewCatalog struct {
	// Config returns the running config, for the target's address and
	// credentials.
	Config func() *policies.Config
	// TTL is how long a load is trusted (default 30 s); MinReload is the
	// least time between loads that an unknown name triggers (default 1 s).
	TTL, MinReload time.Duration
	// Timeout bounds one load: connect and query (default 5 s).
	Timeout time.Duration
	Log     *slog.Logger
	Now     func() time.Time

	mu       sync.Mutex
	targets  map[string]*targetCatalog
	analyzer *sql.Analyzer // for view definitions; uncached, off the statements' LRU
}

type targetCatalog struct {
	mu       sync.Mutex // one load at a time
	rels     *Relations
	failures int // loads failed in a row
}

// Relations is one target's relations as one load saw them.
type Relations struct {
	at     time.Time
	source string                 // upstream/database/user it was read from
	err    error                  // the load failed: every named source is Unknown
	retry  time.Duration          // after a failure, when to try again
	byName map[string][]*relation // lower-cased name
}

type relation struct {
	schema, name string
	view         bool     // a view or materialized view outside the system schemas
	columns      []string // a view's columns, in order
	lineage      sql.Lineage
	broken       bool // its definition could not be analysed: its columns are Unknown
}

// maxViewDepth bounds the expansion of views over views.
const maxViewDepth = 16

// catalogSQL lists every relation a query can read, and for views and
// materialized views outside the system schemas, their columns and
// definition. System views (pg_stat_activity, information_schema) count
// as tables: no column rule names what is inside them.
const catalogSQL = `SELECT n.nspname, c.relname,
	c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AS expand,
	CASE WHEN c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
		THEN pg_get_viewdef(c.oid) END,
	CASE WHEN c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
		THEN array(SELECT a.attname::text FROM pg_attribute a
			WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')`

func (vc *ViewCatalog) defaults() {
	if vc.TTL <= 0 {
		vc.TTL = 30 * time.Second
	}
	if vc.MinReload <= 0 {
		vc.MinReload = time.Second
	}
	if vc.Timeout <= 0 {
		vc.Timeout = 5 * time.Second
	}
	if vc.Now == nil {
		vc.Now = time.Now
	}
	if vc.Log == nil {
		vc.Log = slog.New(slog.DiscardHandler)
	}
	if vc.analyzer == nil {
		vc.analyzer = sql.New(sql.WithCacheSize(0))
	}
}

// Relations returns the target's relations, loaded within TTL and
// holding every name in names if a reload can make it so. It never
// returns nil: a failed load yields Relations that mask everything.
func (vc *ViewCatalog) Relations(ctx context.Context, target string, names []string) *Relations {
	vc.mu.Lock()
	vc.defaults()
	if vc.targets == nil {
		vc.targets = make(map[string]*targetCatalog)
	}
	tc := vc.targets[target]
	if tc == nil {
		tc = &targetCatalog{}
		vc.targets[target] = tc
	}
	vc.mu.Unlock()

	t, ok := vc.Config().Target(target)
	if !ok || t.Kind != policies.KindPostgres {
		return &Relations{err: fmt.Errorf("no postgres target %q", target)}
	}
	source := t.Upstream + "/" + t.Database + "/" + t.Credentials.User

	tc.mu.Lock()
	defer tc.mu.Unlock()
	now := vc.Now()
	if r := tc.rels; r != nil && r.source == source {
		age := now.Sub(r.at)
		if r.err != nil && age < r.retry {
			return r // failed just now: everything stays masked until the retry
		}
		if r.err == nil && (age < vc.MinReload || age < vc.TTL && r.holds(names)) {
			return r // names it lacks stay unknown until MinReload has passed
		}
	}
	r := vc.load(ctx, t)
	r.at, r.source = vc.Now(), source
	if r.err != nil {
		// Back off (MinReload, doubling, up to TTL): a target sluice
		// cannot reach must not make every statement wait for a connect.
		tc.failures++
		r.retry = min(vc.MinReload<<min(tc.failures-1, 16), vc.TTL)
		vc.Log.Warn("view catalog not loaded; masking every column a rule could name", "target", target,
			"err", r.err, "retry_in", r.retry)
	} else {
		tc.failures = 0
	}
	tc.rels = r
	return r
}

// Invalidate drops what is known of the target, so the next statement
// loads it again: the gate calls it after DDL ran through the gateway.
func (vc *ViewCatalog) Invalidate(target string) {
	vc.mu.Lock()
	tc := vc.targets[target]
	vc.mu.Unlock()
	if tc != nil {
		tc.mu.Lock()
		tc.rels = nil
		tc.mu.Unlock()
	}
}

func (vc *ViewCatalog) load(ctx context.Context, t *policies.Target) *Relations {
	ctx, cancel := context.WithTimeout(ctx, vc.Timeout)
	defer cancel()
	conn, err := connectTarget(ctx, t)
	if err != nil {
		return &Relations{err: err}
	}
	defer conn.Close(context.Background())
	// With only pg_catalog on the search path, pg_get_viewdef qualifies
	// every relation a view reads, so its lineage names the exact schema.
	if _, err := conn.Exec(ctx, "SET search_path = pg_catalog"); err != nil {
		return &Relations{err: fmt.Errorf("reading the catalog: %w", err)}
	}
	rows, err := conn.Query(ctx, catalogSQL, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return &Relations{err: fmt.Errorf("reading the catalog: %w", err)}
	}
	r := &Relations{byName: make(map[string][]*relation)}
	for rows.Next() {
		var schema, name string
		var expand bool
		var def *string
		var cols []string
		if err := rows.Scan(&schema, &name, &expand, &def, &cols); err != nil {
			rows.Close()
			return &Relations{err: fmt.Errorf("reading the catalog: %w", err)}
		}
		rel := &relation{schema: schema, name: name, view: expand, columns: cols}
		if expand {
			rel.lineage, rel.broken = vc.viewLineage(def)
		}
		key := strings.ToLower(name)
		r.byName[key] = append(r.byName[key], rel)
	}
	if err := rows.Err(); err != nil {
		return &Relations{err: fmt.Errorf("reading the catalog: %w", err)}
	}
	return r
}

// viewLineage analyses a view's definition; broken when it cannot.
func (vc *ViewCatalog) viewLineage(def *string) (sql.Lineage, bool) {
	if def == nil {
		return nil, true
	}
	a := vc.analyzer.Analyze(*def)
	if len(a.Statements) != 1 || a.Statements[0].Err != nil || a.Statements[0].Columns == nil {
		return nil, true
	}
	return a.Statements[0].Columns, false
}

// connectTarget opens a connection to a postgres target as sluice: its
// upstream address, database and credentials, and, for a target Envoy
// speaks TLS to, the same TLS: the client certificate, and the server
// verified against upstream_ca_file (targetTLS). Other targets get TLS
// when the server offers it, unverified, as libpq's default.
func connectTarget(ctx context.Context, t *policies.Target) (*pgx.Conn, error) {
	host, port, err := net.SplitHostPort(t.Upstream)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", t.Upstream, err)
	}
	mode := "sslmode=prefer"
	if t.UpstreamTLS() {
		mode = "sslmode=disable" // TLSConfig below, with no clear-text fallback
	}
	pc, err := pgx.ParseConfig(mode)
	if err != nil {
		return nil, err
	}
	if t.UpstreamTLS() {
		if pc.TLSConfig, err = targetTLS(t, host); err != nil {
			return nil, err
		}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: port: %w", t.Upstream, err)
	}
	pc.Host, pc.Port, pc.Database, pc.User = host, uint16(p), t.Database, t.Credentials.User
	pc.RuntimeParams = map[string]string{"application_name": "sluice-catalog"}
	if ref := t.Credentials.Password(); !ref.IsZero() {
		pw, err := ref.Resolve()
		if err != nil {
			return nil, fmt.Errorf("target password: %w", err)
		}
		pc.Password = pw
	}
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", t.Upstream, err)
	}
	return conn, nil
}

// holds reports whether every name is a relation the load saw.
func (r *Relations) holds(names []string) bool {
	for _, n := range names {
		if _, ok := r.byName[strings.ToLower(n)]; !ok {
			return false
		}
	}
	return true
}

// Err is why the load failed, nil when it did not.
func (r *Relations) Err() error { return r.err }

// Expand returns src and every source a value read through it may come
// from: the sources of a view's column, through views over views. A
// relation the catalog does not hold, or a catalog that failed to load,
// adds the Unknown source.
func (r *Relations) Expand(src sql.Source) []sql.Source {
	return r.expand(nil, src, 0)
}

func (r *Relations) expand(out []sql.Source, src sql.Source, depth int) []sql.Source {
	out = append(out, src)
	if src.Unknown {
		return out
	}
	if r == nil || r.err != nil || depth > maxViewDepth {
		return append(out, sql.UnknownSource)
	}
	found := false
	for _, rel := range r.byName[strings.ToLower(src.Table)] {
		if src.Schema != "" && !strings.EqualFold(src.Schema, rel.schema) {
			continue
		}
		found = true
		if !rel.view {
			continue
		}
		if rel.broken {
			out = append(out, sql.UnknownSource)
			continue
		}
		for i, col := range rel.columns {
			if src.Column != "*" && !strings.EqualFold(src.Column, col) {
				continue
			}
			srcs, star := rel.lineage.FieldIn(i, len(rel.columns))
			for _, s := range srcs {
				if star && !s.Unknown && s.Column == "*" {
					s.Column = col
				}
				out = r.expand(out, s, depth+1)
			}
		}
	}
	if !found {
		out = append(out, sql.UnknownSource)
	}
	return out
}

// sourceNames returns the relation names the analysis's result columns come
// from.
func sourceNames(a *sql.Analysis) []string {
	var names []string
	if a == nil {
		return nil
	}
	for _, st := range a.Statements {
		for _, s := range st.Columns.Sources() {
			if !s.Unknown && s.Table != "" {
				names = append(names, s.Table)
			}
		}
	}
	return names
}
