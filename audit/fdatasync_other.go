//go:build !linux

package audit

import "os"

// fdatasync is fsync where the system has no fdatasync.
func fdatasync(f *os.File) error { return f.Sync() }

// startWriteback does nothing where the system cannot start a file's
// writeback without waiting for it.
func startWriteback(*os.File, int64, int64) error { return nil }
