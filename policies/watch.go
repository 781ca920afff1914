package policies

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// ReloadDebounce is how long the watcher waits after the last change event
// before reading the file: editors write a file in several steps (truncate,
// write, rename), and reading mid-way would refuse a half-written file.
const ReloadDebounce = 150 * time.Millisecond

// Watcher reloads a config file when it changes. A valid new file is handed
// to apply; a file that fails to load, or that apply refuses, is logged with
// its reason and the running config stays.
//
// The watcher owns nothing but its counters; apply is called from Run's
// goroutine only, one call at a time.
type Watcher struct {
	path  string
	log   *slog.Logger
	apply func(*Config) error

	last     [sha256.Size]byte
	ready    chan struct{}
	applied  atomic.Int64
	rejected atomic.Int64
}

// NewWatcher watches path. The caller has already loaded and applied the
// current file; the watcher calls apply for each later, valid version.
func NewWatcher(path string, log *slog.Logger, apply func(*Config) error) *Watcher {
	w := &Watcher{path: path, log: log, apply: apply, ready: make(chan struct{})}
	if b, err := os.ReadFile(path); err == nil {
		w.last = sha256.Sum256(b)
	}
	return w
}

// Ready is closed once Run watches the file: a change after that is seen.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Applied counts versions that were loaded and applied.
func (w *Watcher) Applied() int64 { return w.applied.Load() }

// Rejected counts versions that were refused (invalid, or refused by apply).
// A version is counted after its reason is logged.
func (w *Watcher) Rejected() int64 { return w.rejected.Load() }

// Run watches until ctx is done. It watches the file's directory, not the
// file, so that an editor's or Kubernetes' rename-into-place is seen.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config watch: %w", err)
	}
	defer fw.Close()
	dir := filepath.Dir(w.path)
	if err := fw.Add(dir); err != nil {
		return fmt.Errorf("config watch %s: %w", dir, err)
	}
	close(w.ready)
	base := filepath.Base(w.path)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			// A Kubernetes ConfigMap swaps a ..data symlink; any event in the
			// directory may change what path resolves to, so every event
			// re-arms the timer, and the content hash below drops no-ops.
			if filepath.Base(ev.Name) == base || filepath.Base(ev.Name) == "..data" {
				timer.Reset(ReloadDebounce)
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			w.log.Warn("config watch error", "path", w.path, "err", err)
		case <-timer.C:
			w.reload()
		}
	}
}

// reload loads the file once and applies it if it changed.
func (w *Watcher) reload() {
	data, err := os.ReadFile(w.path)
	if err != nil {
		w.log.Error("config reload refused; keeping the running config", "path", w.path, "err", err)
		w.rejected.Add(1)
		return
	}
	sum := sha256.Sum256(data)
	if bytes.Equal(sum[:], w.last[:]) {
		return
	}
	cfg, err := Load(w.path, data)
	if err == nil {
		err = w.apply(cfg)
	}
	if err != nil {
		w.log.Error("config reload refused; keeping the running config", "path", w.path, "err", err)
		w.rejected.Add(1)
		return
	}
	w.last = sum
	w.log.Info("config reloaded", "path", w.path, "sha256", fmt.Sprintf("%x", sum[:8]))
	w.applied.Add(1)
}
