package punch

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncData makes a file's data durable without its metadata (fdatasync):
// the journal only grows, so its size is all the metadata that matters, and
// fdatasync writes that too.
func syncData(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
