package rendezvous

import (
	"os"
	"syscall"
)

// inode identifies a log file, so that a log replaced by compaction is re-read.
func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
