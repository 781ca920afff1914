package audit

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// DefaultRetentionInterval is how often serve runs retention.
const DefaultRetentionInterval = time.Hour

// OpenConfig opens the store cfg.Audit names, the way serve and the
// audit commands do.
//
// Signing key: audit.signing_key_file when set. Without it a postgres
// store is refused (the config validator says so first): replicas share
// the trail and must share a key verify can check. A sqlite store, the
// single-node demo, signs with a key generated at start and logs a
// warning: verify still checks every chain link and every signature
// against the key each checkpoint names, but cannot prove who signed, and
// whoever can write the file can re-sign it. Production sets the key.
//
// Read-only (pass ReadOnly()): no chain, no exporters; the key file's
// public half becomes the trusted key for Verify.
func OpenConfig(ctx context.Context, cfg *policies.Config, log *slog.Logger, extra ...Option) (Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := cfg.Audit
	probe := buildOptions(extra)
	opts := []Option{WithLogger(log), WithCheckpoints(a.CheckpointEvery, a.CheckpointInterval)}
	if a.CheckpointEvery <= 0 || a.CheckpointInterval <= 0 { // a Config not from Load
		opts = []Option{WithLogger(log)}
	}
	isPostgres := strings.HasPrefix(a.Store, "postgres://") || strings.HasPrefix(a.Store, "postgresql://")
	switch {
	case probe.readOnly && a.SigningKeyFile != "":
		pub, err := LoadPublicKey(a.SigningKeyFile)
		if err != nil {
			return nil, fmt.Errorf("audit.signing_key_file: %w", err)
		}
		opts = append(opts, WithTrustedKeys(pub))
	case probe.readOnly:
	case a.SigningKeyFile != "":
		key, err := LoadSigningKey(a.SigningKeyFile)
		if err != nil {
			return nil, fmt.Errorf("audit.signing_key_file: %w", err)
		}
		opts = append(opts, WithSigner(NewSigner(key)))
	case isPostgres:
		return nil, fmt.Errorf("audit.signing_key_file is required with a postgres audit store")
	default:
		s, err := EphemeralSigner()
		if err != nil {
			return nil, err
		}
		log.Warn("audit.signing_key_file is not set: audit checkpoints are signed with a key that lives only as long as this process; "+
			"sluice audit verify checks every chain but cannot prove who signed it. Set a key in production (sluice audit keygen --out FILE)",
			"key_id", KeyID(s.Public()))
		opts = append(opts, WithSigner(s))
	}
	var exps []Exporter
	if !probe.readOnly {
		var err error
		if exps, err = configExporters(ctx, cfg); err != nil {
			return nil, err
		}
		opts = append(opts, WithExporters(exps...))
	}
	s, err := Open(ctx, storeURL(cfg), append(opts, extra...)...)
	if err != nil {
		shutdownExporters(exps) // the store never took them over
		return nil, err
	}
	return s, nil
}

// shutdownExporters releases exporters no store runs (their files, their
// connections).
func shutdownExporters(exps []Exporter) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, e := range exps {
		_ = e.Shutdown(ctx)
	}
}

// storeURL resolves a relative sqlite path against the config file's
// directory, as every path in the config is: serve and `sluice audit
// verify` then open the same file wherever they are started.
func storeURL(cfg *policies.Config) string {
	u := cfg.Audit.Store
	if p, ok := strings.CutPrefix(u, "sqlite://"); ok && !filepath.IsAbs(p) && cfg.Source != "" {
		return "sqlite://" + filepath.Join(filepath.Dir(cfg.Source), p)
	}
	return u
}

func configExporters(ctx context.Context, cfg *policies.Config) ([]Exporter, error) {
	var out []Exporter
	x := cfg.Audit.Export
	if x.JSONL != "" {
		path := x.JSONL
		// Relative paths follow the config file, as every path in it does.
		if path != "-" && !filepath.IsAbs(path) && cfg.Source != "" {
			path = filepath.Join(filepath.Dir(cfg.Source), path)
		}
		j, err := NewJSONLExporter(path)
		if err != nil {
			return nil, fmt.Errorf("audit.export.jsonl: %w", err)
		}
		out = append(out, j)
	}
	if x.OTLPEndpoint != "" {
		o, err := NewOTLPExporter(ctx, OTLPOptions{Endpoint: x.OTLPEndpoint, Insecure: x.OTLPInsecure,
			ServiceName: cfg.Telemetry.ServiceName, Timeout: 10 * time.Second})
		if err != nil {
			shutdownExporters(out)
			return nil, fmt.Errorf("audit.export.otlp_endpoint: %w", err)
		}
		out = append(out, o)
	}
	return out, nil
}
