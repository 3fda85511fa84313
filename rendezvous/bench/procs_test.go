package bench

import (
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The CPU clock reads the same account as /proc/PID/stat, without its
// 10 ms rounding, for this process and for another one.
func TestClockCPUAgreesWithProcStat(t *testing.T) {
	child := exec.Command("sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	// Some CPU of our own, so that there is something to read.
	sum := sha256.Sum256(nil)
	for range 200000 {
		sum = sha256.Sum256(sum[:])
	}
	for _, pid := range []int{os.Getpid(), child.Process.Pid} {
		// stat, clock, stat: /proc/PID/stat truncates user and system
		// time to ticks each, so it reads up to two ticks under the
		// clock, and never over it.
		before, err := statCPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		clock, err := clockCPU(pid)
		if err != nil {
			t.Fatalf("pid %d: the CPU clock: %v", pid, err)
		}
		after, err := statCPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		const tick = 10 * time.Millisecond
		if clock < before || clock > after+2*tick || clock <= 0 {
			t.Errorf("pid %d: CPU clock %v, /proc stat %v then %v", pid, clock, before, after)
		}
	}
}

// A rendezvous that cannot start is reported with the reason it gave, not
// as a bare "did not start".
func TestStartRendezvousSaysWhyItFailed(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "fails")
	script := "#!/bin/sh\necho 'gcn-punch rendezvous: listen udp: bind: address already in use' >&2\nexit 1\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	rp, err := startRendezvous(Options{Binary: bin}, 0)
	if err == nil {
		rp.stop()
		t.Fatal("started")
	}
	if !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error %q does not say why", err)
	}
}
