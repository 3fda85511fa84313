package store

import (
	"os"
	"syscall"
)

// Inode identifies a file, so that a log or messages file replaced by a rewrite is read again.
func Inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
