package punch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrStateLocked says that another daemon runs on the state directory.
var ErrStateLocked = errors.New("another gcn-punch daemon runs on this state directory")

// LockState takes the state directory for this process: two daemons on one
// directory would share one key, and each would take the other's
// notifications. It holds an exclusive lock on STATE/daemon.lock, which
// holds the PID, until release (or the process's end: the kernel drops
// the lock, so a crash leaves nothing to clean up). A second daemon gets
// ErrStateLocked naming the first one's PID.
func LockState(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "daemon.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		pid := strings.TrimSpace(string(b[:n]))
		if _, perr := strconv.Atoi(pid); perr != nil {
			pid = "unknown"
		}
		return nil, fmt.Errorf("%w (%s, PID %s): stop it first (systemctl --user stop gcn-punch, or kill %s), or give this one its own --state", ErrStateLocked, dir, pid, pid)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}
