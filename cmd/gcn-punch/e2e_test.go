package main

// Integration tests: the real gcn-punch binary (built with -race) in separate
// processes, real git pushes through the real post-receive hook, on loopback.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/rendezvous/store"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gcn-e2e-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "gcn-punch")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building gcn-punch: %v\n%s", err, out)
		os.Exit(1)
	}
	// The race runtime sleeps a second at exit by default: every hook would
	// cost a second. Races in the children are caught from their logs.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	for k, v := range map[string]string{"GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
		"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"} {
		os.Setenv(k, v)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a gcn-punch process whose stderr is kept in a file.
type proc struct {
	cmd *exec.Cmd
	log string
}

func start(t *testing.T, logPath string, env []string, args ...string) *proc {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	p := &proc{cmd: cmd, log: logPath}
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		if strings.Contains(p.logText(), "WARNING: DATA RACE") {
			t.Errorf("data race in %v:\n%s", args, p.logText())
		}
	})
	return p
}

func (p *proc) kill(sig syscall.Signal) {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(sig)
	p.cmd.Wait()
}

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// world is a git server (bare repo with the hook), its store, a rendezvous,
// and a clone to push from.
type world struct {
	t      *testing.T
	dir    string
	store  string
	bare   string
	clone  string
	listen string
	rv     *proc
	pushes atomic.Int64
	open   bool
}

func newWorld(t *testing.T, open bool, prepare ...func(*world)) *world {
	if testing.Short() {
		t.Skip("-short: end-to-end runs with real processes take seconds")
	}
	w := &world{t: t, dir: t.TempDir(), open: open}
	w.store = filepath.Join(w.dir, "store")
	for _, f := range prepare {
		f(w) // before anything is in the store
	}
	w.bare = filepath.Join(w.dir, "chat.git")
	w.clone = filepath.Join(w.dir, "clone")
	run(t, "", "git", "init", "-q", "--bare", w.bare)
	// --message-time 1s: the suite runs beside the lab's load, where one
	// git run can exceed the production bound and the message would go.
	hook := fmt.Sprintf("#!/bin/sh\nexec %q hook --store %q --message-time 1s\n", binary, w.store)
	if err := os.WriteFile(filepath.Join(w.bare, "hooks", "post-receive"), []byte(hook), 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "", "git", "clone", "-q", w.bare, w.clone)
	if w.listen == "" {
		w.listen = "127.0.0.1:0"
	}
	w.startRendezvous()
	w.listen = w.addr() // restarts reuse the port
	return w
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func (w *world) startRendezvous() {
	os.Remove(filepath.Join(w.store, "rendezvous.addr"))
	args := []string{"rendezvous", "--listen", w.listen, "--store", w.store}
	if w.open {
		args = append(args, "--open")
	}
	w.rv = start(w.t, filepath.Join(w.dir, fmt.Sprintf("rendezvous-%d.log", time.Now().UnixNano())), nil, args...)
	if !poll(10*time.Second, func() bool { _, err := os.Stat(filepath.Join(w.store, "rendezvous.addr")); return err == nil }) {
		w.t.Fatalf("rendezvous did not start:\n%s", w.rv.logText())
	}
}

func (w *world) addr() string {
	b, err := os.ReadFile(filepath.Join(w.store, "rendezvous.addr"))
	if err != nil {
		w.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// push makes one commit and pushes it through the real hook.
func (w *world) push() {
	w.t.Helper()
	n := w.pushes.Add(1)
	run(w.t, w.clone, "git", "commit", "-q", "--allow-empty", "-m", fmt.Sprintf("message %d", n))
	run(w.t, w.clone, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
}

// daemon is a client daemon whose --exec program appends GCN_SEQ to a file.
type daemon struct {
	*proc
	name, state, out string
	server           string
}

func (w *world) startDaemon(name, server string) *daemon {
	d := &daemon{name: name, state: filepath.Join(w.dir, name), out: filepath.Join(w.dir, name+".seqs"), server: server}
	prog := filepath.Join(w.dir, name+".sh")
	// The program takes its output file and a quoted argument: --exec is a
	// command line, parsed without a shell.
	os.WriteFile(prog, []byte("#!/bin/sh\n[ \"$2\" = \"two words\" ] || { echo \"bad arguments: $*\" >&2; exit 3; }\necho \"$GCN_SEQ $GCN_REF\" >> \"$1\"\n"), 0o755)
	d.proc = start(w.t, filepath.Join(w.dir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano())), nil,
		"daemon", "--server", server, "--server-key", "@"+filepath.Join(w.store, "server.pub"),
		"--repo-id", "chat.git", "--state", d.state, "--exec", prog+" "+d.out+" 'two words'", "--no-desktop", "-v")
	return d
}

// ready waits until the daemon has its position (its state file says known).
func (d *daemon) ready(t *testing.T) {
	t.Helper()
	if !poll(20*time.Second, func() bool {
		return punch.HasPosition(d.state)
	}) {
		t.Fatalf("%s never got its position:\n%s", d.name, d.logText())
	}
}

func (d *daemon) seqs() []int { return d.handled(false) }

// handled reads the GCN_SEQ of each event the daemon's program saw: of
// every event, or only of pushes (a resync notice carries no ref).
func (d *daemon) handled(pushesOnly bool) []int {
	f, err := os.Open(d.out)
	if err != nil {
		return nil
	}
	defer f.Close()
	var s []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 || pushesOnly && len(fs) != 2 {
			continue
		}
		n, _ := strconv.Atoi(fs[0])
		s = append(s, n)
	}
	return s
}

// wantExactly waits until the daemon handled n events, then checks they are
// exactly 1..n, once each, in order.
func (d *daemon) wantExactly(t *testing.T, n int) {
	t.Helper()
	poll(30*time.Second, func() bool { return len(d.seqs()) >= n })
	time.Sleep(300 * time.Millisecond) // a late duplicate would show up now
	got := d.seqs()
	ok := len(got) == n
	for i := 0; ok && i < n; i++ {
		ok = got[i] == i+1
	}
	if !ok {
		t.Fatalf("%s handled %v, want exactly 1..%d once each in order\n%s", d.name, got, n, d.logText())
	}
}

// poll checks cond every 20 ms until it holds or limit passes.
func poll(limit time.Duration, cond func() bool) bool {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// pushToTwo starts two daemons that reach the rendezvous at serverA and
// serverB, pushes n times, checks that both handled 1..n exactly once, in
// order, and returns the server's status.
func (w *world) pushToTwo(t *testing.T, serverA, serverB string, n int) string {
	t.Helper()
	a, b := w.startDaemon("alice", serverA), w.startDaemon("bob", serverB)
	a.ready(t)
	b.ready(t)
	for range n {
		w.push()
	}
	a.wantExactly(t, n)
	b.wantExactly(t, n)
	return run(t, "", binary, "status", "--store", w.store)
}

func TestE2EHundredPushesTwoDaemons(t *testing.T) {
	w := newWorld(t, true)
	st := w.pushToTwo(t, w.listen, w.listen, 100)
	if strings.Count(st, "chat.git=100") != 2 {
		t.Fatalf("status does not show both clients at 100:\n%s", st)
	}
}

// A rendezvous listening on [::] serves both families on one port: a
// daemon that reaches it over IPv6 and one over IPv4 each get every push
// exactly once, in order, and the server's status shows each at its address.
func TestE2EDualStackRendezvous(t *testing.T) {
	w := newWorld(t, true, func(w *world) { w.listen = "[::]:0" })
	_, port, _ := net.SplitHostPort(w.listen)
	st := w.pushToTwo(t, net.JoinHostPort("::1", port), net.JoinHostPort("127.0.0.1", port), 5)
	if !strings.Contains(st, "[::1]:") || !strings.Contains(st, "127.0.0.1:") || strings.Count(st, "chat.git=5") != 2 {
		t.Fatalf("status does not show one client on each family, both at 5:\n%s", st)
	}
}

// A rendezvous bound to one address in each family (--listen A4,[A6])
// serves each on its own socket, and a daemon given both (--server
// A4,[A6]) keeps a path on each: it delivers over IPv6, the preferred
// family, every push exactly once, and the server's status shows the
// client with its IPv4 address as its standby.
func TestE2ERendezvousOnAnAddressPerFamily(t *testing.T) {
	w := newWorld(t, true, func(w *world) { w.listen = "127.0.0.1:0,[::1]:0" })
	a4 := w.addr()
	b, err := os.ReadFile(filepath.Join(w.store, "rendezvous.addr2"))
	a6 := strings.TrimSpace(string(b))
	if err != nil || !strings.HasPrefix(a6, "[::1]:") {
		t.Fatalf("rendezvous.addr2 is %q (%v), want its IPv6 address", a6, err)
	}
	d := w.startDaemon("alice", a4+","+a6)
	d.ready(t)
	var st string
	if !poll(20*time.Second, func() bool {
		st = run(t, "", binary, "status", "--store", w.store)
		return regexp.MustCompile(`\[::1\]:\d+ \(standby 127\.0\.0\.1:\d+\)`).MatchString(st)
	}) {
		t.Fatalf("the rendezvous does not show the client on IPv6 with an IPv4 standby:\n%s\n%s", st, d.logText())
	}
	for range 5 {
		w.push()
	}
	d.wantExactly(t, 5)
	// The daemon's own status shows each path.
	mine := run(t, "", binary, "status", "--state", d.state)
	if !regexp.MustCompile(`ipv6 primary\s+\[::1\]:\d+.*to `+regexp.QuoteMeta(a6)+`, answering, validated`).MatchString(mine) ||
		!regexp.MustCompile(`ipv4 standby\s+127\.0\.0\.1:\d+.*to `+regexp.QuoteMeta(a4)+`, answering, validated`).MatchString(mine) {
		t.Fatalf("status --state does not show both paths:\n%s", mine)
	}
}

// A daemon that is down while pushes happen gets exactly those after restart,
// both after SIGKILL and after a graceful stop in the middle of a stream.
func TestE2EDaemonRestartCatchesUp(t *testing.T) {
	w := newWorld(t, true)
	d := w.startDaemon("alice", w.listen)
	d.ready(t)
	w.push()
	w.push()
	d.wantExactly(t, 2)
	d.kill(syscall.SIGKILL)
	for range 10 {
		w.push()
	}
	d = w.startDaemon("alice", w.listen)
	d.wantExactly(t, 12)

	// SIGTERM while pushes are streaming in: nothing lost, nothing twice.
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 10 {
			w.push()
		}
	})
	poll(10*time.Second, func() bool { return len(d.seqs()) >= 15 })
	d.kill(syscall.SIGTERM)
	wg.Wait()
	d = w.startDaemon("alice", w.listen)
	d.wantExactly(t, 22)
}

// kill -9 of the rendezvous in the middle of a fan-out, then a restart on
// the same port: nothing is lost or duplicated.
func TestE2ERendezvousKilledMidFanOut(t *testing.T) {
	w := newWorld(t, true)
	a, b := w.startDaemon("alice", w.listen), w.startDaemon("bob", w.listen)
	a.ready(t)
	b.ready(t)
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 30 {
			w.push()
		}
	})
	// Kill it while the stream is flowing; pushes meanwhile find it down
	// (logged, sent directly); then restart it on the same port.
	poll(20*time.Second, func() bool { return len(a.seqs()) >= 8 })
	w.rv.kill(syscall.SIGKILL)
	poll(20*time.Second, func() bool { return w.pushes.Load() >= 18 })
	w.startRendezvous()
	wg.Wait()
	a.wantExactly(t, 30)
	b.wantExactly(t, 30)
}

// lossyRelay forwards UDP between clients and the rendezvous and drops
// lossPercent of datagrams in each direction: the test seam for loss.
type lossyRelay struct {
	conn    net.PacketConn
	target  *net.UDPAddr
	loss    int
	mu      sync.Mutex
	rng     *rand.Rand
	up      map[string]net.PacketConn
	dropped int
	wg      sync.WaitGroup
}

func newLossyRelay(t *testing.T, target string, loss int) *lossyRelay {
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ta, _ := net.ResolveUDPAddr("udp", target)
	r := &lossyRelay{conn: conn, target: ta, loss: loss, rng: rand.New(rand.NewPCG(7, 11)), up: map[string]net.PacketConn{}}
	r.wg.Go(r.downstreamToUp)
	t.Cleanup(func() {
		conn.Close()
		r.mu.Lock()
		for _, u := range r.up {
			u.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *lossyRelay) drop() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rng.IntN(100) < r.loss {
		r.dropped++
		return true
	}
	return false
}

func (r *lossyRelay) downstreamToUp() {
	buf := make([]byte, 2048)
	for {
		n, from, err := r.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		u := r.up[from.String()]
		if u == nil {
			u, err = net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				r.mu.Unlock()
				continue
			}
			r.up[from.String()] = u
			r.wg.Go(func() { r.upToDownstream(u, from) })
		}
		r.mu.Unlock()
		if !r.drop() {
			u.WriteTo(buf[:n], r.target)
		}
	}
}

func (r *lossyRelay) upToDownstream(u net.PacketConn, client net.Addr) {
	buf := make([]byte, 2048)
	for {
		n, _, err := u.ReadFrom(buf)
		if err != nil {
			return
		}
		if !r.drop() {
			r.conn.WriteTo(buf[:n], client)
		}
	}
}

func TestE2ETwentyFivePercentLoss(t *testing.T) {
	w := newWorld(t, true)
	relay := newLossyRelay(t, w.listen, 25)
	via := relay.conn.LocalAddr().String()
	a, b := w.startDaemon("alice", via), w.startDaemon("bob", via)
	a.ready(t)
	b.ready(t)
	for range 50 {
		w.push()
	}
	a.wantExactly(t, 50)
	b.wantExactly(t, 50)
	relay.mu.Lock()
	dropped := relay.dropped
	relay.mu.Unlock()
	if dropped == 0 {
		t.Fatal("the relay dropped nothing: loss was not exercised")
	}
}

// Without --open, a daemon whose key is not registered gets nothing, and its
// log says why.
func TestE2EUnregisteredDaemonGetsNothing(t *testing.T) {
	w := newWorld(t, false)
	d := w.startDaemon("mallory", w.listen)
	if !poll(20*time.Second, func() bool { return strings.Contains(d.logText(), "not registered") }) {
		t.Fatalf("daemon log does not say why it is refused:\n%s", d.logText())
	}
	for range 3 {
		w.push()
	}
	time.Sleep(time.Second)
	if got := d.seqs(); len(got) != 0 {
		t.Fatalf("unregistered daemon handled %v", got)
	}
}

// The hook never fails a push: with the rendezvous down it exits 0 and says
// so in one line.
func TestE2EHookWithRendezvousDown(t *testing.T) {
	w := newWorld(t, true)
	w.rv.kill(syscall.SIGKILL)
	cmd := exec.Command("git", "push", "origin", "HEAD:refs/heads/main")
	run(t, w.clone, "git", "commit", "-q", "--allow-empty", "-m", "x")
	cmd.Dir = w.clone
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("push failed with the rendezvous down: %v\n%s", err, out)
	}
	if strings.Count(string(out), "rendezvous not reachable") != 1 {
		t.Fatalf("want one clear line about the rendezvous:\n%s", out)
	}
}

// On the client, `status --state` asks the running daemon: its position per
// repository, and with --stats its counters; a second daemon on the same
// state directory refuses to start, naming the first one's PID, and leaves
// the first one's key and positions alone.
func TestE2EClientStatus(t *testing.T) {
	w := newWorld(t, true)
	d := w.startDaemon("alice", w.listen)
	d.ready(t)
	w.push()
	d.wantExactly(t, 1)
	var st punch.Status
	if err := json.Unmarshal([]byte(run(t, "", binary, "status", "--state", d.state, "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Servers) != 1 || len(st.Servers[0].Repos) != 1 || !reflect.DeepEqual(st.Servers[0].Repos[0], punch.RepoPosition{Repo: "chat.git", Known: true, LastSeq: 1}) {
		t.Fatalf("status %+v", st)
	}
	var stats punch.Stats
	if err := json.Unmarshal([]byte(run(t, "", binary, "status", "--state", d.state, "--stats")), &stats); err != nil {
		t.Fatal(err)
	}
	if stats.Notifications != 1 || stats.KeepalivesSent == 0 {
		t.Fatalf("stats %+v", stats)
	}
	table := run(t, "", binary, "status", "--state", d.state)
	if !strings.Contains(table, "chat.git") || !strings.Contains(table, st.Client) {
		t.Fatalf("table:\n%s", table)
	}
	second := exec.Command(binary, "daemon", "--server", w.listen, "--server-key", "@"+filepath.Join(w.store, "server.pub"),
		"--repo-id", "chat.git", "--state", d.state, "--no-desktop")
	out, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another gcn-punch daemon runs on this state directory") ||
		!strings.Contains(string(out), fmt.Sprintf("PID %d", d.proc.cmd.Process.Pid)) {
		t.Fatalf("a second daemon on the same state: %v\n%s", err, out)
	}
	w.push()
	d.wantExactly(t, 2) // the first one still gets its notifications at once
}

// `gcn-punch watch` prints each notification as it arrives, one JSON
// object a line on stdout (logs stay on stderr), with its own state: three
// pushes are three lines, seq 1 to 3, in order, each naming the ref and the
// pushed commit.
func TestE2EWatchPrintsJSONLines(t *testing.T) {
	w := newWorld(t, true)
	outPath := filepath.Join(w.dir, "watch.out")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	logs, err := os.Create(filepath.Join(w.dir, "watch.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	state := filepath.Join(w.dir, "watch-state")
	cmd := exec.Command(binary, "watch", "--server", w.listen, "--server-key", "@"+filepath.Join(w.store, "server.pub"),
		"--repo-id", "chat.git", "--state", state)
	cmd.Stdout, cmd.Stderr = out, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if !poll(20*time.Second, func() bool { return punch.HasPosition(state) }) {
		t.Fatal("watch never got its position")
	}
	var heads, subjects []string
	for range 3 {
		w.push()
		heads = append(heads, strings.TrimSpace(run(t, w.clone, "git", "rev-parse", "HEAD")))
		subjects = append(subjects, fmt.Sprintf("message %d", w.pushes.Load()))
	}
	author := strings.TrimSpace(run(t, w.clone, "git", "log", "-1", "--format=%an"))
	// A test notification from the server side, with its own text.
	run(t, "", binary, "notify", "--store", w.store, "--repo-id", "chat.git", "--message", "hello from the admin")
	var lines []string
	poll(20*time.Second, func() bool {
		b, _ := os.ReadFile(outPath)
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		return len(lines) >= 4
	})
	if len(lines) != 4 {
		b, _ := os.ReadFile(logs.Name())
		t.Fatalf("stdout has %d lines, want 4:\n%s\nstderr:\n%s", len(lines), strings.Join(lines, "\n"), b)
	}
	type line struct {
		Repo, Ref, New, Event, Author, Subject string
		Seq                                    uint64
		Count                                  int
		TimeMS                                 int64 `json:"time_ms"`
	}
	for i, l := range lines[:3] {
		var ev line
		// The chat message travelled from the hook: watch has no clone.
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Seq != uint64(i+1) || ev.Repo != "chat.git" ||
			ev.Ref != "refs/heads/main" || ev.New != heads[i] || ev.Event != "push" || ev.TimeMS == 0 ||
			ev.Author != author || ev.Subject != subjects[i] || ev.Count != 1 {
			t.Fatalf("line %d: %q (%v); want seq %d, refs/heads/main at %s, %s: %q, 1 commit", i, l, err, i+1, heads[i], author, subjects[i])
		}
	}
	var ev line
	if err := json.Unmarshal([]byte(lines[3]), &ev); err != nil || ev.Seq != 4 || ev.Ref != "refs/gcn-punch/test" ||
		ev.Author != "gcn-punch notify" || ev.Subject != "hello from the admin" {
		t.Fatalf("the test notification's line: %q (%v)", lines[3], err)
	}
}

// `gcn-punch notify` sends a test notification through the whole path
// without a push: the daemon runs its action for it (GCN_REF
// refs/gcn-punch/test), with the next sequence number, and a push after it
// comes next. A repository the store does not know, or no store at all,
// is an error that creates nothing.
func TestE2ENotifyWithoutPushing(t *testing.T) {
	w := newWorld(t, true)
	d := w.startDaemon("alice", w.listen)
	d.ready(t)
	w.push()
	out := run(t, "", binary, "notify", "--store", w.store, "--repo-id", "chat.git")
	if !strings.Contains(out, "seq 2") || !strings.Contains(out, "handed to the rendezvous") {
		t.Fatalf("notify said %q", out)
	}
	w.push()
	d.wantExactly(t, 3)
	b, _ := os.ReadFile(d.out)
	if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); len(lines) != 3 || lines[1] != "2 refs/gcn-punch/test" {
		t.Fatalf("the daemon's program saw %q", lines)
	}
	code, _, errs := runCode(t, "", "notify", "--store", w.store, "--repo-id", "other.git")
	if code != 1 || !strings.Contains(errs, `no repository "other.git"`) {
		t.Fatalf("notify for an unknown repository: exit %d, %q", code, errs)
	}
	missing := filepath.Join(w.dir, "no-store")
	code, _, errs = runCode(t, "", "notify", "--store", missing, "--repo-id", "chat.git")
	if _, err := os.Stat(missing); code != 1 || err == nil {
		t.Fatalf("notify with no store: exit %d, %q; the directory: %v", code, errs, err)
	}
	// With the rendezvous down the check has failed: exit 1, saying what
	// was recorded and what to start; the event is delivered once it runs.
	w.rv.kill(syscall.SIGTERM)
	code, _, errs = runCode(t, "", "notify", "--store", w.store, "--repo-id", "chat.git")
	if code != 1 || !strings.Contains(errs, "recorded chat.git seq 4") || !strings.Contains(errs, "no rendezvous runs on") {
		t.Fatalf("notify with the rendezvous down: exit %d, %q", code, errs)
	}
	w.startRendezvous()
	d.wantExactly(t, 4)
}

// `gcn-punch revoke --store DIR USER` ends a registered client's access at
// once: the running rendezvous drops it, the next push does not reach it,
// its daemon is told it is not registered, and `status` no longer lists
// it; before that, `status` shows who registered it.
func TestE2ERevokeByUser(t *testing.T) {
	w := newWorld(t, false)
	state := filepath.Join(w.dir, "alice")
	pub, _, err := punch.LoadOrCreateKey(state)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(w.store)
	if err != nil {
		t.Fatal(err)
	}
	st.Authorise("chat.git", pub, time.Now().Add(time.Hour))
	st.SetOwner(pub, "alice")
	d := w.startDaemon("alice", w.listen)
	d.ready(t)
	w.push()
	d.wantExactly(t, 1)
	if s := run(t, "", binary, "status", "--store", w.store); !regexp.MustCompile(pub.String() + `\s+alice\s`).MatchString(s) {
		t.Fatalf("status does not show who registered the client:\n%s", s)
	}
	out := run(t, "", binary, "revoke", "--store", w.store, "alice")
	if !strings.Contains(out, "revoked "+pub.String()+" (alice), from chat.git: the running rendezvous dropped it at once") {
		t.Fatalf("revoke said %q", out)
	}
	if strings.Contains(out, "--open") {
		t.Fatalf("revoke spoke of --open to a rendezvous without it: %q", out)
	}
	w.push()
	if !poll(20*time.Second, func() bool { return strings.Contains(d.logText(), "not registered") }) {
		t.Fatalf("the revoked daemon was not told:\n%s", d.logText())
	}
	if got := d.seqs(); len(got) != 1 {
		t.Fatalf("the revoked daemon handled %v after revocation", got)
	}
	if s := run(t, "", binary, "status", "--store", w.store); strings.Contains(s, pub.String()) {
		t.Fatalf("status still lists the revoked client:\n%s", s)
	}
	code, _, errs := runCode(t, "", "revoke", "--store", w.store, "alice")
	if code != 1 || !strings.Contains(errs, `no client registered by "alice"`) {
		t.Fatalf("revoking again: exit %d, %q", code, errs)
	}
}

// probe --lifetime against a rendezvous with one address, which answers
// plain Binding only, says that it could not measure and why, instead of
// reading the unanswered RESPONSE-PORT requests as a mapping gone at once
// ("0 s idle: a keepalive every 0s").
func TestE2EProbeLifetimeNeedsASecondAddress(t *testing.T) {
	w := newWorld(t, true)
	code, out, errs := runCode(t, "", "probe", "--server", w.listen, "--json", "--lifetime", "--lifetime-max", "10s")
	var rep struct {
		UDP      bool     `json:"udp"`
		Lifetime *float64 `json:"mapping_lifetime_s"`
		Untested []string `json:"untested"`
	}
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil {
		t.Fatalf("probe: exit %d, %v\n%s\n%s", code, err, out, errs)
	}
	if !rep.UDP || rep.Lifetime != nil || !strings.Contains(strings.Join(rep.Untested, "\n"), "mapping lifetime: the rendezvous has no second address") {
		t.Fatalf("probe --lifetime at one address: udp %v, lifetime %v, untested %q", rep.UDP, rep.Lifetime, rep.Untested)
	}
}

// Plain `gcn-punch status` on a client (no store at the default place, a
// daemon's state at its default place) shows the running daemon, as
// `tailscale status` does; it used to say there is no store.
func TestE2EPlainStatusOnAClientShowsTheDaemon(t *testing.T) {
	if _, err := store.OpenExisting(store.DefaultDir); err == nil {
		t.Skipf("a store exists at %s on this machine: plain status shows it", store.DefaultDir)
	}
	w := newWorld(t, true)
	home := filepath.Join(w.dir, "home")
	state := filepath.Join(home, ".local", "state", "gcn-punch")
	env := []string{"HOME=" + home, "XDG_STATE_HOME="}
	start(t, filepath.Join(w.dir, "home-daemon.log"), env, "daemon", "--server", w.listen, "--server-key", "@"+filepath.Join(w.store, "server.pub"),
		"--repo-id", "chat.git", "--no-desktop")
	if !poll(20*time.Second, func() bool { return punch.HasPosition(state) }) {
		t.Fatal("the daemon at the default state directory never registered")
	}
	pub, _, err := punch.LoadOrCreateKey(state)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "status")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "client "+pub.String()) || !strings.Contains(string(out), "chat.git") {
		t.Fatalf("status on a client: %v\n%s", err, out)
	}
}

// Under --open, revoke still drops the client, and says that it will be
// back: any key may follow there, so revocation cannot keep it out.
func TestE2ERevokeUnderOpenSaysTheClientComesBack(t *testing.T) {
	w := newWorld(t, true)
	d := w.startDaemon("alice", w.listen)
	d.ready(t)
	pub, _, err := punch.LoadOrCreateKey(filepath.Join(w.dir, "alice"))
	if err != nil {
		t.Fatal(err)
	}
	out := run(t, "", binary, "revoke", "--store", w.store, pub.String())
	if !strings.Contains(out, "revoked "+pub.String()+" (owner unknown), no authorisation on record: the running rendezvous dropped it at once") ||
		!strings.Contains(out, "runs with --open") {
		t.Fatalf("revoke said %q", out)
	}
	w.push()
	d.wantExactly(t, 1)
}

// A daemon configured by ~/.config/gcn-punch/daemon.toml alone (here under
// XDG_CONFIG_HOME) runs as with the flags, and a flag given beside it wins.
func TestE2EDaemonFromConfigFile(t *testing.T) {
	w := newWorld(t, true)
	cfgHome := filepath.Join(w.dir, "config")
	os.MkdirAll(filepath.Join(cfgHome, "gcn-punch"), 0o755)
	out := filepath.Join(w.dir, "cfg.seqs")
	prog := filepath.Join(w.dir, "cfg.sh")
	os.WriteFile(prog, []byte("#!/bin/sh\necho \"$GCN_SEQ\" >> \"$1\"\n"), 0o755)
	state := filepath.Join(w.dir, "cfg-state")
	toml := fmt.Sprintf("server = %q\nserver-key = %q\nrepo-id = [\"chat.git\"]\nstate = %q\nexec = %q\nno-desktop = true\nkeepalive = \"1s\"\n",
		w.listen, "@"+filepath.Join(w.store, "server.pub"), state, prog+" "+out)
	os.WriteFile(filepath.Join(cfgHome, "gcn-punch", "daemon.toml"), []byte(toml), 0o644)
	// keepalive 1s in the file is out of range; --keepalive on the command line wins.
	d := start(t, filepath.Join(w.dir, "cfg.log"), []string{"XDG_CONFIG_HOME=" + cfgHome}, "daemon", "--keepalive", "30s")
	if !poll(20*time.Second, func() bool { return punch.HasPosition(state) }) {
		t.Fatalf("the daemon configured by its file never got its position:\n%s", d.logText())
	}
	w.push()
	w.push()
	if !poll(20*time.Second, func() bool { b, _ := os.ReadFile(out); return string(b) == "1\n2\n" }) {
		b, _ := os.ReadFile(out)
		t.Fatalf("the program saw %q, want seq 1 and 2:\n%s", b, d.logText())
	}
}
