package policies_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

func TestWatcherReloadsValidAndRefusesInvalid(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	applied := make(chan *policies.Config, 4)
	w := policies.NewWatcher(path, slog.New(slog.NewTextHandler(logs, nil)), func(c *policies.Config) error {
		applied <- c
		if c.Targets[0].Port == 15666 {
			return errors.New("port 15666 refused")
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for !cond() {
			select {
			case <-deadline:
				t.Fatalf("timed out waiting for %s; logs:\n%s", what, logs.String())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	next := func() *policies.Config {
		t.Helper()
		select {
		case c := <-applied:
			return c
		case <-time.After(10 * time.Second):
			t.Fatalf("no config applied; logs:\n%s", logs.String())
			return nil
		}
	}
	write := func(content string) {
		t.Helper()
		// Write then rename into place, as editors and ConfigMaps do.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	<-w.Ready()

	// 1. A valid change is applied.
	changed := strings.Replace(base, "port: 15432", "port: 15499", 1)
	write(changed)
	got := next()
	if got.Targets[0].Port != 15499 {
		t.Fatalf("applied config has port %d, want 15499", got.Targets[0].Port)
	}

	// 2. An invalid file is refused with its reason, nothing is applied.
	write(strings.Replace(changed, "port: 15499", "port: 0", 1))
	waitFor("rejection", func() bool { return w.Rejected() >= 1 })
	if !strings.Contains(logs.String(), "targets[0].port") {
		t.Errorf("the refusal log does not name the key:\n%s", logs.String())
	}
	select {
	case c := <-applied:
		t.Fatalf("invalid config was applied: %+v", c.Targets)
	default:
	}

	// 3. A config that apply refuses (as xDS does when translation fails)
	// is refused and counted; apply saw it but the watcher did not count it
	// as applied.
	write(strings.Replace(changed, "port: 15499", "port: 15666", 1))
	if c := next(); c.Targets[0].Port != 15666 {
		t.Fatalf("port %d, want 15666", c.Targets[0].Port)
	}
	waitFor("second rejection", func() bool { return w.Rejected() >= 2 })
	if !strings.Contains(logs.String(), "port 15666 refused") {
		t.Errorf("apply's reason is not logged:\n%s", logs.String())
	}

	// 4. Fixing the file applies again.
	write(strings.Replace(changed, "port: 15499", "port: 15500", 1))
	got = next()
	if got.Targets[0].Port != 15500 {
		t.Errorf("port %d, want 15500", got.Targets[0].Port)
	}
	// apply has returned the config to the test; the watcher counts it
	// after apply returns.
	waitFor("second applied version counted", func() bool { return w.Applied() >= 2 })
}
