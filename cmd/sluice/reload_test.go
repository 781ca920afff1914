package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/telemetry"
)

// failingStore is an audit store whose appends can be made to fail.
type failingStore struct {
	audit.Store
	fail atomic.Bool
}

func (s *failingStore) Append(ctx context.Context, e audit.Event) error {
	if s.fail.Load() {
		return errors.New("audit store down (test)")
	}
	return s.Store.Append(ctx, e)
}

// TestReloadRefusedWhenUnrecorded: a reload whose record cannot be made
// does not take effect; the running config stays, and the next reload,
// recorded, does.
func TestReloadRefusedWhenUnrecorded(t *testing.T) {
	demo, err := os.ReadFile("../../policies/examples/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(demo)
	for old, nw := range map[string]string{
		"127.0.0.1:18000": freeAddr(t), "127.0.0.1:9001": freeAddr(t),
		"127.0.0.1:9002": freeAddr(t), "127.0.0.1:8080": freeAddr(t),
	} {
		text = strings.Replace(text, old, nw, 1)
	}
	dir := t.TempDir()
	cfg, err := policies.Load(filepath.Join(dir, "sluice.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	tel, err := telemetry.Setup(ctx, cfg.Telemetry, "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	inner, err := audit.OpenConfig(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inner.Close() })
	store := &failingStore{Store: inner}
	s, err := newServer(cfg, log, tel, store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, b := range s.grpcServers {
			b.srv.Stop()
			b.lis.Close()
		}
		s.apiLis.Close()
		s.stopGrants()
	})

	next, err := policies.Load(cfg.Source, []byte(text+"\n# edited\n"))
	if err != nil {
		t.Fatal(err)
	}
	store.fail.Store(true)
	if err := s.apply(next); err == nil || !strings.Contains(err.Error(), "could not be recorded") {
		t.Fatalf("reload with the audit store down: %v, want it refused", err)
	}
	if s.config() != cfg {
		t.Fatal("an unrecorded reload took effect")
	}
	store.fail.Store(false)
	if err := s.apply(next); err != nil {
		t.Fatal(err)
	}
	if s.config() != next {
		t.Fatal("a recorded reload did not take effect")
	}
}
