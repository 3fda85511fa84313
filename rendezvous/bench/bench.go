package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/wire"
)

// Options configure `gcn-punch bench`.
type Options struct {
	Binary        string        // the gcn-punch binary to measure
	Sizes         []int         // fan-out sizes, e.g. 1000, 10000, 100000
	KeepaliveAt   []int         // keepalive-load sizes, e.g. 10000, 100000
	Runs          int           // repetitions; figures are medians with the spread
	Window        time.Duration // keepalive-load measuring window
	LatencyPushes int           // pushes for the latency measurement
	PollSample    int           // real git fetches for the polling baseline
	Progress      io.Writer     // progress lines
}

// perGenerator keeps each generator under the 20 000 open files a process
// may have here when the limit cannot be raised.
const perGenerator = 15000

// clientsPerGenerator is how many clients one generator process simulates:
// all of them when the open-file limit can be raised to fit (root may), so
// that the generators' own scheduling costs as little as possible on the
// machine the rendezvous is measured on; else perGenerator.
func clientsPerGenerator(n int) int {
	need := uint64(n) + 256 // the sockets, plus the process's own files
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return perGenerator
	}
	if lim.Cur >= need {
		return n
	}
	want := syscall.Rlimit{Cur: need, Max: max(lim.Max, need)}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) != nil {
		return min(n, perGenerator)
	}
	return n // the children inherit the raised limit
}

// Spread is a median with its range over the runs.
type Spread struct {
	Median, Min, Max float64
}

func spread(xs []float64) Spread {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return Spread{}
	}
	return Spread{Median: s[len(s)/2], Min: s[0], Max: s[len(s)-1]}
}

// FanOut is one size's fan-out figures.
type FanOut struct {
	Clients           int    `json:"clients"`
	AllAckedMillis    Spread `json:"all_acked_ms"`
	CPUMicrosPerRecip Spread `json:"cpu_us_per_recipient"`
	RSSBytesPerClient Spread `json:"rss_bytes_per_idle_client"`
}

// Latency is hook start → --exec start.
type Latency struct {
	Pushes    int    `json:"pushes"`
	P50Millis Spread `json:"p50_ms"`
	P99Millis Spread `json:"p99_ms"`
}

// KeepaliveLoad is the rendezvous's CPU while clients keep alive.
type KeepaliveLoad struct {
	Clients        int     `json:"clients"`
	IntervalSec    float64 `json:"interval_s"`
	WindowSec      float64 `json:"window_s"`
	CPUPercentCore Spread  `json:"cpu_percent_of_one_core"`
}

// Polling is the baseline users run today: git fetch every 60 s.
type Polling struct {
	IntervalSec         float64         `json:"interval_s"`
	MeanLatencySec      float64         `json:"expected_mean_latency_s"`
	WorstLatencySec     float64         `json:"worst_latency_s"`
	CPUMillisPerFetch   Spread          `json:"cpu_ms_per_fetch"`
	Sample              int             `json:"sample_fetches"`
	CPUSecPerMinutePerN map[int]float64 `json:"server_cpu_s_per_minute"`
}

// Machine says where the figures were measured.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Date      string `json:"date"`
	// UDPHashEntries is the UDP socket hash table's size where the bench
	// ran; OwnNetns says it ran in a namespace of its own (see netns.go).
	UDPHashEntries int  `json:"udp_hash_entries"`
	OwnNetns       bool `json:"own_netns"`
}

// Results is everything `gcn-punch bench --json` prints.
type Results struct {
	Machine   Machine         `json:"machine"`
	Runs      int             `json:"runs"`
	FanOut    []FanOut        `json:"fan_out"`
	Latency   Latency         `json:"latency"`
	Keepalive []KeepaliveLoad `json:"keepalive_load"`
	Polling   Polling         `json:"polling_baseline"`
}

func (o *Options) progress(format string, a ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", a...)
	}
}

// Run measures everything.
func Run(ctx context.Context, o Options) (Results, error) {
	r := Results{Machine: machine(), Runs: o.Runs}
	for _, n := range o.Sizes {
		var ms, cpu, rss []float64
		for run := 0; run < o.Runs; run++ {
			f, err := fanOutOnce(ctx, o, n)
			if err != nil {
				return r, fmt.Errorf("fan-out %d: %w", n, err)
			}
			o.progress("fan-out %d, run %d: all acked in %.1f ms, %.2f µs CPU per recipient, %.0f B RSS per client", n, run+1, f[0], f[1], f[2])
			ms, cpu, rss = append(ms, f[0]), append(cpu, f[1]), append(rss, f[2])
		}
		r.FanOut = append(r.FanOut, FanOut{Clients: n, AllAckedMillis: spread(ms), CPUMicrosPerRecip: spread(cpu), RSSBytesPerClient: spread(rss)})
	}
	var p50s, p99s []float64
	for run := 0; run < o.Runs; run++ {
		p50, p99, err := latencyOnce(ctx, o)
		if err != nil {
			return r, fmt.Errorf("latency: %w", err)
		}
		o.progress("latency, run %d: p50 %.2f ms, p99 %.2f ms", run+1, p50, p99)
		p50s, p99s = append(p50s, p50), append(p99s, p99)
	}
	r.Latency = Latency{Pushes: o.LatencyPushes, P50Millis: spread(p50s), P99Millis: spread(p99s)}
	for _, n := range o.KeepaliveAt {
		var pct []float64
		for run := 0; run < o.Runs; run++ {
			p, err := keepaliveOnce(ctx, o, n)
			if err != nil {
				return r, fmt.Errorf("keepalive load %d: %w", n, err)
			}
			o.progress("keepalives from %d clients, run %d: %.2f%% of one core", n, run+1, p)
			pct = append(pct, p)
		}
		r.Keepalive = append(r.Keepalive, KeepaliveLoad{Clients: n, IntervalSec: 25, WindowSec: o.Window.Seconds(), CPUPercentCore: spread(pct)})
	}
	p, err := pollingBaseline(ctx, o)
	if err != nil {
		return r, fmt.Errorf("polling baseline: %w", err)
	}
	r.Polling = p
	return r, nil
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Date: time.Now().UTC().Format("2006-01-02"),
		UDPHashEntries: udpHashEntries(), OwnNetns: InOwnNetns()}
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

// procCPU is a process's user+system CPU time, from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
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
}

func startRendezvous(o Options) (*rendezvousProc, error) {
	dir, err := os.MkdirTemp("", "gcn-bench")
	if err != nil {
		return nil, err
	}
	rp := &rendezvousProc{dir: dir, store: filepath.Join(dir, "store")}
	rp.cmd = exec.Command(o.Binary, "rendezvous", "--listen", "127.0.0.1:0", "--store", rp.store, "--open")
	log, _ := os.Create(filepath.Join(dir, "rendezvous.log"))
	rp.cmd.Stdout, rp.cmd.Stderr = log, log
	if err := rp.cmd.Start(); err != nil {
		return nil, err
	}
	for i := 0; i < 200; i++ {
		a, err1 := os.ReadFile(filepath.Join(rp.store, "rendezvous.addr"))
		k, err2 := os.ReadFile(filepath.Join(rp.store, "server.pub"))
		if err1 == nil && err2 == nil {
			if rp.addr, err = netip.ParseAddrPort(strings.TrimSpace(string(a))); err == nil {
				rp.key, err = wire.ParseKey(string(k))
			}
			return rp, err
		}
		time.Sleep(20 * time.Millisecond)
	}
	rp.stop()
	return nil, errors.New("rendezvous did not start")
}

func (rp *rendezvousProc) stop() {
	rp.cmd.Process.Kill()
	rp.cmd.Wait()
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

// generators starts enough load-generator processes for n clients. Writing
// a line to a generator's stdin starts its keepalives.
func startGenerators(ctx context.Context, o Options, rp *rendezvousProc, n int, keepalive time.Duration) ([]*exec.Cmd, []<-chan genEvent, []io.WriteCloser, error) {
	var cmds []*exec.Cmd
	var evs []<-chan genEvent
	var starts []io.WriteCloser
	per := clientsPerGenerator(n)
	for g := 0; n > 0; g++ {
		k := min(n, per)
		n -= k
		args := []string{"bench", "loadgen", "--server", rp.addr.String(), "--server-key", rp.key.String(), "--repo-id", "chat.git",
			"--clients", strconv.Itoa(k), "--first-ip", fmt.Sprintf("127.%d.0.1", 10+g)}
		if keepalive > 0 {
			args = append(args, "--keepalive", keepalive.String())
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

// fanOutOnce returns ms until all acked, µs CPU per recipient, RSS bytes per idle client.
func fanOutOnce(ctx context.Context, o Options, n int) ([3]float64, error) {
	var res [3]float64
	rp, err := startRendezvous(o)
	if err != nil {
		return res, err
	}
	defer rp.stop()
	time.Sleep(300 * time.Millisecond)
	pid := rp.cmd.Process.Pid
	rss0, err := procRSS(pid)
	if err != nil {
		return res, err
	}
	gens, evs, _, err := startGenerators(ctx, o, rp, n, 0)
	defer stopAll(gens)
	if err != nil {
		return res, err
	}
	if _, err := await(evs, "registered", 5*time.Minute); err != nil {
		return res, err
	}
	waitIdle(pid)
	rss1, _ := procRSS(pid)
	cpu0, _ := procCPU(pid)
	t0 := time.Now()
	if err := rp.hook(o, 1); err != nil {
		return res, err
	}
	last, err := await(evs, "notified", 2*time.Minute)
	if err != nil {
		return res, err
	}
	time.Sleep(200 * time.Millisecond) // the last acks reach the rendezvous
	cpu1, _ := procCPU(pid)
	res[0] = float64(time.Unix(0, last).Sub(t0).Microseconds()) / 1000
	res[1] = float64((cpu1 - cpu0).Microseconds()) / float64(n)
	res[2] = float64(rss1-rss0) / float64(n)
	return res, nil
}

// keepaliveOnce returns the rendezvous's CPU % of one core while n clients
// keep alive every 25 s.
func keepaliveOnce(ctx context.Context, o Options, n int) (float64, error) {
	rp, err := startRendezvous(o)
	if err != nil {
		return 0, err
	}
	defer rp.stop()
	gens, evs, starts, err := startGenerators(ctx, o, rp, n, 25*time.Second)
	defer stopAll(gens)
	if err != nil {
		return 0, err
	}
	if _, err := await(evs, "registered", 5*time.Minute); err != nil {
		return 0, err
	}
	pid := rp.cmd.Process.Pid
	waitIdle(pid) // past the registration burst and its record writes
	for _, s := range starts {
		io.WriteString(s, "keepalive\n")
	}
	time.Sleep(time.Second)
	cpu0, _ := procCPU(pid)
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(o.Window):
	}
	cpu1, _ := procCPU(pid)
	return 100 * (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds(), nil
}

// latencyOnce returns p50 and p99 (ms) from the hook starting to the
// daemon's --exec program starting, over LatencyPushes pushes.
func latencyOnce(ctx context.Context, o Options) (float64, float64, error) {
	rp, err := startRendezvous(o)
	if err != nil {
		return 0, 0, err
	}
	defer rp.stop()
	out := filepath.Join(rp.dir, "exec.times")
	prog := filepath.Join(rp.dir, "on-push")
	// bash's $EPOCHREALTIME: the program's first act records the time.
	os.WriteFile(prog, []byte("#!/bin/bash\necho \"$EPOCHREALTIME $GCN_SEQ\" >> "+out+"\n"), 0o755)
	d := exec.CommandContext(ctx, o.Binary, "daemon", "--server", rp.addr.String(), "--server-key", rp.key.String(),
		"--repo-id", "chat.git", "--state", filepath.Join(rp.dir, "state"), "--exec", prog, "--no-desktop")
	if err := d.Start(); err != nil {
		return 0, 0, err
	}
	defer func() { d.Process.Kill(); d.Wait() }()
	for i := 0; i < 200; i++ {
		if daemonKnowsPosition(filepath.Join(rp.dir, "state")) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	starts := make([]time.Time, o.LatencyPushes+1)
	for i := 1; i <= o.LatencyPushes; i++ {
		starts[i] = time.Now()
		if err := rp.hook(o, i); err != nil {
			return 0, 0, err
		}
		// One push at a time: wait for its exec, bounded.
		for j := 0; j < 500 && countLines(out) < i; j++ {
			time.Sleep(time.Millisecond)
		}
	}
	b, _ := os.ReadFile(out)
	var lat []float64
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		sec, err1 := strconv.ParseFloat(f[0], 64)
		seq, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil || seq < 1 || seq > o.LatencyPushes {
			continue
		}
		lat = append(lat, (sec-float64(starts[seq].UnixNano())/1e9)*1000)
	}
	if len(lat) != o.LatencyPushes {
		return 0, 0, fmt.Errorf("%d of %d pushes reached --exec", len(lat), o.LatencyPushes)
	}
	sort.Float64s(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

func countLines(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte{'\n'})
}

// pollingBaseline measures real `git fetch` runs against a test repository
// with one new commit each time, as a 60 s polling loop would see.
func pollingBaseline(ctx context.Context, o Options) (Polling, error) {
	p := Polling{IntervalSec: 60, MeanLatencySec: 30, WorstLatencySec: 60, Sample: o.PollSample, CPUSecPerMinutePerN: map[int]float64{}}
	dir, err := os.MkdirTemp("", "gcn-bench-poll")
	if err != nil {
		return p, err
	}
	defer os.RemoveAll(dir)
	env := append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_AUTHOR_NAME=b", "GIT_AUTHOR_EMAIL=b@example.invalid",
		"GIT_COMMITTER_NAME=b", "GIT_COMMITTER_EMAIL=b@example.invalid")
	git := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %v: %v %s", args, err, out)
		}
		return nil
	}
	bare, pusher, poller := filepath.Join(dir, "chat.git"), filepath.Join(dir, "pusher"), filepath.Join(dir, "poller")
	for _, a := range [][]string{{"init", "-q", "--bare", bare}, {"clone", "-q", bare, pusher},
		{"-C", pusher, "commit", "-q", "--allow-empty", "-m", "0"}, {"-C", pusher, "push", "-q", "origin", "HEAD:main"},
		{"clone", "-q", bare, poller}} {
		if err := git(a...); err != nil {
			return p, err
		}
	}
	var cpu []float64
	for i := 0; i < o.PollSample; i++ {
		if err := git("-C", pusher, "commit", "-q", "--allow-empty", "-m", strconv.Itoa(i+1)); err != nil {
			return p, err
		}
		if err := git("-C", pusher, "push", "-q", "origin", "HEAD:main"); err != nil {
			return p, err
		}
		cmd := exec.CommandContext(ctx, "git", "-C", poller, "fetch", "-q", "origin")
		cmd.Env = env
		if err := cmd.Run(); err != nil {
			return p, err
		}
		// The fetch's rusage includes git-upload-pack, the server's side.
		cpu = append(cpu, float64((cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime()).Microseconds())/1000)
	}
	p.CPUMillisPerFetch = spread(cpu)
	for _, n := range o.Sizes {
		p.CPUSecPerMinutePerN[n] = float64(n) * p.CPUMillisPerFetch.Median / 1000
	}
	return p, nil
}

// daemonKnowsPosition asks a running daemon, on the control socket in its
// state directory, whether a rendezvous has told it where it starts.
func daemonKnowsPosition(stateDir string) bool {
	reply, err := control.Dial(filepath.Join(stateDir, "daemon.sock"), "status", time.Second)
	if err != nil {
		return false
	}
	var st struct {
		Servers []struct {
			Repos []struct {
				Known bool `json:"known"`
			} `json:"repos"`
		} `json:"servers"`
	}
	if json.Unmarshal([]byte(reply), &st) != nil {
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
