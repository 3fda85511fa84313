package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Date: time.Now().UTC().Format("2006-01-02"),
		UDPHashEntries: udpHashEntries(), OwnNetns: InOwnNetns(), ClientsPerGenerator: clientsPerGenerator(100000)}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// procCPU is a process's CPU time, user and system, of all its threads:
// from the process's CPU clock, to the nanosecond, else from /proc/PID/stat,
// which rounds to 10 ms ticks (a push through a tree of 10k costs the
// rendezvous 40-60 ms, so a tick was a fifth of it).
func procCPU(pid int) (time.Duration, error) {
	if d, err := clockCPU(pid); err == nil {
		return d, nil
	}
	return statCPU(pid)
}

// gensCPU is the CPU time of the generator processes, together.
func gensCPU(gens []*exec.Cmd) time.Duration {
	var sum time.Duration
	for _, g := range gens {
		if g.Process != nil {
			d, _ := procCPU(g.Process.Pid)
			sum += d
		}
	}
	return sum
}

// clockCPU reads pid's CPU-time clock: the id that clock_getcpuclockid(3)
// makes, (^pid << 3) | CPUCLOCK_SCHED (2), the scheduler's own account.
func clockCPU(pid int) (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(^int32(pid)<<3|2, &ts); err != nil {
		return 0, err
	}
	return time.Duration(ts.Nano()), nil
}

// statCPU is a process's user+system CPU time from /proc/PID/stat.
func statCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// procRSS is a process's resident set, from /proc/PID/status.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no VmRSS")
}

// rendezvousProc is a running rendezvous for one measurement.
type rendezvousProc struct {
	cmd   *exec.Cmd
	dir   string
	addr  netip.AddrPort
	key   wire.Key
	store string
	// exited is closed once the process has exited (and been waited for).
	exited <-chan struct{}
}

// startRendezvous starts an open rendezvous with --fanout k.
func startRendezvous(o Options, k int) (*rendezvousProc, error) {
	dir, err := os.MkdirTemp("", "gcn-bench")
	if err != nil {
		return nil, err
	}
	rp := &rendezvousProc{dir: dir, store: filepath.Join(dir, "store")}
	args := []string{"rendezvous", "--listen", "127.0.0.1:0", "--store", rp.store, "--open", "--fanout", strconv.Itoa(k)}
	if o.ProfileDir != "" {
		args = append(args, "--cpuprofile", filepath.Join(o.ProfileDir, fmt.Sprintf("rendezvous-%d-%d.prof", k, time.Now().UnixNano())))
	}
	rp.cmd = exec.Command(o.Binary, args...)
	log, _ := os.Create(filepath.Join(dir, "rendezvous.log"))
	rp.cmd.Stdout, rp.cmd.Stderr = log, log
	if err := rp.cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { rp.cmd.Wait(); close(exited) }()
	rp.exited = exited
	st := &store.Store{Dir: rp.store}
	for i := 0; i < 200; i++ {
		// The address is written after the keys, once the rendezvous serves.
		if rp.addr, err = st.RendezvousAddr(); err == nil {
			rp.key, err = st.ServerPublicKey()
			return rp, err
		}
		select {
		case <-exited:
			i = 200 // it will not start: say why below
		case <-time.After(20 * time.Millisecond):
		}
	}
	why := rp.logTail()
	rp.stop()
	return nil, fmt.Errorf("rendezvous did not start: %s", why)
}

// logTail is the last line the rendezvous logged, or why there is none.
func (rp *rendezvousProc) logTail() string {
	b, _ := os.ReadFile(filepath.Join(rp.dir, "rendezvous.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if l := lines[len(lines)-1]; l != "" {
		return l
	}
	return "it logged nothing"
}

// stop ends the rendezvous with SIGTERM (so that a CPU profile is written),
// and kills it if it has not exited within a few seconds.
func (rp *rendezvousProc) stop() {
	rp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rp.exited:
	case <-time.After(5 * time.Second):
		rp.cmd.Process.Kill()
		<-rp.exited
	}
	os.RemoveAll(rp.dir)
}

func (rp *rendezvousProc) hook(o Options, seq int) error {
	cmd := exec.Command(o.Binary, "hook", "--store", rp.store, "--repo-id", "chat.git")
	cmd.Stdin = strings.NewReader(fmt.Sprintf("%040x %040x refs/heads/main\n", seq, seq+1))
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil || errb.Len() > 0 {
		return fmt.Errorf("hook: %v %s", err, errb.String())
	}
	return nil
}

// waitIdle waits (at most 2 minutes) until the process uses less than one
// clock tick of CPU in 300 ms: the registration burst, and the record
// writes it caused, are over.
func waitIdle(pid int) {
	for i := 0; i < 400; i++ {
		c0, _ := procCPU(pid)
		time.Sleep(300 * time.Millisecond)
		if c1, _ := procCPU(pid); c1-c0 <= 10*time.Millisecond {
			return
		}
	}
}

// genTarget is what the simulated clients talk to, and how.
type genTarget struct {
	addr netip.AddrPort
	key  wire.Key
	peer bool // take part in fan-out trees
	echo bool // echo for the floor instead of speaking the protocol
}

// target is a rendezvous as the generators' target.
func (rp *rendezvousProc) target(peer bool) genTarget {
	return genTarget{addr: rp.addr, key: rp.key, peer: peer}
}

// stats asks the rendezvous for its counters.
func (rp *rendezvousProc) stats() (rendezvous.Stats, error) {
	var st rendezvous.Stats
	err := control.AskJSON((&store.Store{Dir: rp.store}).SocketPath(), "stats", 10*time.Second, &st)
	return st, err
}

// registerRate is how many registrations a second all generators make
// together (see startGenerators).
const registerRate = 3000

// generators starts enough load-generator processes for n clients. Writing
// a line to a generator's stdin starts its keepalives.
func startGenerators(ctx context.Context, o Options, t genTarget, n int, keepalive time.Duration) ([]*exec.Cmd, []<-chan genEvent, []io.WriteCloser, error) {
	var cmds []*exec.Cmd
	var evs []<-chan genEvent
	var starts []io.WriteCloser
	per := clientsPerGenerator(n)
	gens := (n + per - 1) / per
	for g := 0; n > 0; g++ {
		k := min(n, per)
		n -= k
		args := []string{"bench", "loadgen", "--server", t.addr.String(), "--server-key", t.key.String(), "--repo-id", "chat.git",
			"--clients", strconv.Itoa(k), "--first-ip", fmt.Sprintf("127.%d.0.1", 10+g)}
		if keepalive > 0 {
			args = append(args, "--keepalive", keepalive.String())
		}
		if t.peer {
			args = append(args, "--peer")
		}
		if gens == 1 && keepalive == 0 {
			// One process simulates every client: a thread per core, as
			// several processes would have. Simulated daemons stand for
			// separate machines, and a tree puts its forwarding on them:
			// on one thread a member's children waited for the rest of
			// its level, and at 100k the last levels missed their
			// deadlines. The floor and --fanout 0 get the same threads;
			// the keepalive load, which measures a steady trickle, stays
			// on one.
			args = append(args, "--workers", strconv.Itoa(runtime.NumCPU()))
		}
		if !t.echo {
			// All generators together register at most registerRate a
			// second: faster, the rendezvous's socket overflows with the
			// registrations' Challenges, answers and rechecks, and a
			// simulated client that lost its answer stays unproven.
			args = append(args, "--register-rate", strconv.Itoa(max(1, registerRate/gens)))
		}
		if t.echo {
			args = append(args, "--echo")
		}
		cmd := exec.CommandContext(ctx, o.Binary, args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			return cmds, evs, starts, err
		}
		in, err := cmd.StdinPipe()
		if err != nil {
			return cmds, evs, starts, err
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return cmds, evs, starts, err
		}
		cmds = append(cmds, cmd)
		evs = append(evs, readEvents(out))
		starts = append(starts, in)
	}
	return cmds, evs, starts, nil
}

func stopAll(cmds []*exec.Cmd) {
	for _, c := range cmds {
		c.Process.Kill()
		c.Wait()
	}
}

// await waits for one event of the kind from every generator and returns
// the latest timestamp among them.
func await(evs []<-chan genEvent, kind string, limit time.Duration) (int64, error) {
	var last int64
	deadline := time.After(limit)
	for _, ch := range evs {
		select {
		case e, ok := <-ch:
			if !ok {
				return 0, fmt.Errorf("a generator exited before %q", kind)
			}
			if e.Event != kind {
				return 0, fmt.Errorf("generator: %s %s", e.Event, e.Err)
			}
			last = max(last, e.LastUnixNano)
		case <-deadline:
			return 0, fmt.Errorf("timed out waiting for %q", kind)
		}
	}
	return last, nil
}

func countLines(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte{'\n'})
}

// daemonKnowsPosition asks a running daemon, on the control socket in its
// state directory, whether a rendezvous has told it where it starts.
func daemonKnowsPosition(stateDir string) bool {
	var st struct {
		Servers []struct {
			Repos []struct {
				Known bool `json:"known"`
			} `json:"repos"`
		} `json:"servers"`
	}
	if control.AskJSON(filepath.Join(stateDir, "daemon.sock"), "status", time.Second, &st) != nil {
		return false
	}
	for _, s := range st.Servers {
		for _, r := range s.Repos {
			if r.Known {
				return true
			}
		}
	}
	return false
}
