//go:build !linux

package punch

import "os"

// syncData makes a file's data durable; off Linux, with a full fsync.
func syncData(f *os.File) error { return f.Sync() }
