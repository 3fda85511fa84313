package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// onSmallTmpfs puts the world's store on a 1 MiB tmpfs of its own, so that
// the test can fill it: a real full disk, not a simulated error.
func onSmallTmpfs(w *world) {
	if os.Geteuid() != 0 {
		w.t.Skip("needs root: it mounts a 1 MiB tmpfs to fill")
	}
	if err := os.MkdirAll(w.store, 0o700); err != nil {
		w.t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", w.store).CombinedOutput(); err != nil {
		w.t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	w.t.Cleanup(func() { exec.Command("umount", "-l", w.store).Run() })
}

// fill writes a filler file until the file system refuses (bounded by its
// size), and returns a function that frees the space again.
func fill(t *testing.T, dir string) (free func()) {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for range (1 << 20) / len(chunk) * 2 {
		if _, err = f.Write(chunk); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("the tmpfs did not fill: %v", err)
	}
	return func() { os.Remove(path) }
}

// pushSeqs are the sequence numbers of the pushes a daemon handled (resync
// notices, which carry no ref, left out).
func (d *daemon) pushSeqs() []int { return d.handled(true) }

// pushOut pushes one commit and returns what the push printed (the hook's
// lines among it).
func (w *world) pushOut() string {
	w.t.Helper()
	n := w.pushes.Add(1)
	run(w.t, w.clone, "git", "commit", "-q", "--allow-empty", "-m", "message "+strconv.FormatInt(n, 10))
	return run(w.t, w.clone, "git", "push", "origin", "HEAD:refs/heads/main")
}

// pushUntil pushes until the output says what is wanted (a full disk is
// noticed only when the log's last page is full): at most 60 pushes.
func (w *world) pushUntil(want string) string {
	w.t.Helper()
	for range 60 {
		if out := w.pushOut(); strings.Contains(out, want) {
			return out
		}
	}
	w.t.Fatalf("60 pushes, and none said %q", want)
	return ""
}

// A full disk under the store loses no event of a push that succeeded
// (issue 14, item 6). Before, the hook said "no space left on device" and
// the event was gone for good. Now the rendezvous holds the events in
// memory, delivers them, and writes them once there is room; with the
// rendezvous killed as well, the hook gives the numbers out itself (the
// sequence mark is rewritten in place), sends the events directly, and no
// number is ever given out twice.
func TestE2EDiskFullLosesNoPush(t *testing.T) {
	w := newWorld(t, true, onSmallTmpfs)
	alice := w.startDaemon("alice", w.listen)
	alice.ready(t)
	w.push()
	w.push()
	alice.wantExactly(t, 2)
	st, err := store.Open(w.store)
	if err != nil {
		t.Fatal(err)
	}
	logged := func() []uint64 {
		evs, _ := st.ReadLog("chat.git", 0)
		var seqs []uint64
		for _, e := range evs {
			seqs = append(seqs, e.Seq)
		}
		return seqs
	}

	// The disk fills: the next pushes are held by the rendezvous and delivered.
	free := fill(t, w.store)
	out := w.pushUntil("the rendezvous holds events")
	n := int(w.pushes.Load())
	alice.wantExactly(t, n)
	if got := logged(); len(got) != n-1 {
		t.Fatalf("the log has %v with the disk full, want 1..%d", got, n-1)
	}
	t.Logf("push %d found the disk full: %s", n, strings.TrimSpace(out))
	// Room again: the held event reaches the log within the retry time.
	free()
	if !poll(3*rendezvous.HeldRetry, func() bool { return len(logged()) == n }) {
		t.Fatalf("held event %d not written after space returned: log %v\n%s", n, logged(), w.rv.logText())
	}
	w.push()
	alice.wantExactly(t, n+1)

	// Full again, and the rendezvous killed: the hook gives the number
	// out itself and sends the event directly.
	free = fill(t, w.store)
	w.rv.kill(syscall.SIGKILL)
	w.pushUntil("rendezvous is not reachable")
	lost := int(w.pushes.Load())
	if !poll(10*time.Second, func() bool { return len(alice.pushSeqs()) == lost }) {
		t.Fatalf("the directly sent event %d did not arrive: %v", lost, alice.pushSeqs())
	}
	// Room again, the rendezvous back: the next push follows the lost one.
	free()
	w.startRendezvous()
	w.push()
	if !poll(30*time.Second, func() bool { return len(alice.pushSeqs()) == lost+1 }) {
		t.Fatalf("alice has %v, want 1..%d", alice.pushSeqs(), lost+1)
	}
	if log := w.rv.logText(); !strings.Contains(log, "held in memory by a rendezvous that stopped") {
		t.Fatalf("the restarted rendezvous did not say that event %d was lost to the log:\n%s", lost, log)
	}
	got := alice.pushSeqs()
	for i, s := range got {
		if s != i+1 {
			t.Fatalf("alice handled %v, want 1..%d once each in order", got, lost+1)
		}
	}
	// The log never reuses a number: it lacks the lost one and goes on after it.
	seqs := logged()
	if len(seqs) != lost || seqs[len(seqs)-2] != uint64(lost-1) || seqs[len(seqs)-1] != uint64(lost+1) {
		t.Fatalf("log %v: want 1..%d without %d, then %d", seqs, lost-1, lost, lost+1)
	}
}
