package netsim_test

// The NAT lab suite: the real gcn-punch binary in separate processes, in
// network namespaces behind real nftables NATs. Needs root; otherwise every
// test skips with one line, as under -short. With -update (make nat-matrix)
// a full passing run rewrites docs/nat-matrix.md.

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/punch"
)

var binary string

var update = flag.Bool("update", false, "rewrite docs/nat-matrix.md from a full passing run")

// matrix collects one row per scenario and NAT kind.
var matrix struct {
	sync.Mutex
	rows []row
}

type row struct{ scenario, kind, result, recovery, keepalive string }

// scenarios are the tests that fill the matrix; it is written only when
// all of them ran, so a filtered run never overwrites it with a part.
var scenarios = []string{"TestNATEveryKind", "TestNATTwoClientsBehindOneNAT", "TestNATLoss25Percent",
	"TestNATRebindingMidStream", "TestNATShortMappingLifetime", "TestNATRestarts", "TestNATUDPBlocked", "TestNATHairpinning",
	"TestNATProbeInterop", "TestNATProbeLifetime", "TestNATFanoutPairMatrix", "TestNATFanoutCrowd", "TestNATFanoutChurn",
	"TestNATUDPBlockedTurnsToSSH", "TestNATIPv6Firewall", "TestNATIPv6FirewallTimeout", "TestNATFanoutIPv6Pair", "TestNATDualStackFailover",
	"TestNATClusterFailover"}

var contributed sync.Map

func record(t *testing.T, r row) {
	t.Logf("matrix row: %s | %s | %s | %s | %s", r.scenario, r.kind, r.result, r.recovery, r.keepalive)
	contributed.Store(t.Name(), true)
	matrix.Lock()
	matrix.rows = append(matrix.rows, r)
	matrix.Unlock()
}

func allScenariosRan() bool {
	for _, n := range scenarios {
		if _, ok := contributed.Load(n); !ok {
			return false
		}
	}
	return true
}

func TestMain(m *testing.M) {
	if mode := os.Getenv("GCN_UDP_HELPER"); mode != "" {
		os.Exit(udpHelper(mode))
	}
	if spec := os.Getenv("GCN_NATS_HELPER"); spec != "" {
		os.Exit(natsHelper(spec))
	}
	if err := netsim.Available(); err != nil {
		fmt.Printf("netsim: NAT lab tests skipped: %v\n", err)
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "gcn-netsim-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "gcn-punch")
	if out, err := exec.Command("go", "build", "-o", binary, "../cmd/gcn-punch").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building gcn-punch: %v\n%s", err, out)
		os.Exit(1)
	}
	for k, v := range map[string]string{"GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
		"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"} {
		os.Setenv(k, v)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 && *update && allScenariosRan() {
		writeMatrix()
	}
	os.Exit(code)
}

func skipUnlessLab(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the NAT lab takes minutes")
	}
	if err := netsim.Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("NAT lab unavailable in CI: %v", err)
		}
		t.Skipf("NAT lab: %v", err)
	}
}

// newLab builds a lab and tears it down at the end of the test, on failure too.
func newLab(t *testing.T, specs ...netsim.RouterSpec) *netsim.Lab {
	t.Helper()
	lab, err := netsim.New(specs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return lab
}

// proc is a program running in a namespace; its output goes to a file.
type proc struct {
	cmd *exec.Cmd
	log string
}

func startIn(t *testing.T, h *netsim.Host, logPath string, args ...string) *proc {
	t.Helper()
	return startCmd(t, h.Command(binary, args...), logPath)
}

// startCmd starts cmd with its output in the file at logPath, and kills it
// at the test's end.
func startCmd(t *testing.T, cmd *exec.Cmd, logPath string) *proc {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	p := &proc{cmd: cmd, log: logPath}
	t.Cleanup(func() { p.stop(syscall.SIGKILL) })
	return p
}

func (p *proc) stop(sig syscall.Signal) {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(sig)
		p.cmd.Wait()
	}
}

func (p *proc) text() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// server is the git server in the lab: a bare repo with the hook, a clone
// to push from, and the rendezvous, all in the server's namespace.
type server struct {
	t     *testing.T
	lab   *netsim.Lab
	dir   string
	store string
	clone string
	rv    *proc
	mu    sync.Mutex
	n     int
	extra []string // more rendezvous flags
}

func startServer(t *testing.T, lab *netsim.Lab, rendezvousFlags ...string) *server {
	s := &server{t: t, lab: lab, dir: t.TempDir(), extra: rendezvousFlags}
	s.store = filepath.Join(s.dir, "store")
	bare := filepath.Join(s.dir, "chat.git")
	run(t, "git", "init", "-q", "--bare", bare)
	hook := fmt.Sprintf("#!/bin/sh\nexec %q hook --store %q\n", binary, s.store)
	os.WriteFile(filepath.Join(bare, "hooks", "post-receive"), []byte(hook), 0o755)
	s.clone = filepath.Join(s.dir, "clone")
	run(t, "git", "clone", "-q", bare, s.clone)
	s.startRendezvous()
	return s
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func (s *server) startRendezvous() {
	os.Remove(filepath.Join(s.store, "rendezvous.addr"))
	// The alternate address on another IP and port: RFC 5780 discovery, which
	// daemons use to measure their NAT when the rendezvous fans out.
	args := append([]string{"rendezvous", "--listen", netsim.ServerAddr.String() + ":3478", "--alt-listen", netsim.ServerAltAddr.String() + ":3479",
		"--store", s.store, "--open"}, s.extra...)
	s.rv = startIn(s.t, s.lab.Server, filepath.Join(s.dir, fmt.Sprintf("rendezvous-%d.log", time.Now().UnixNano())), args...)
	if !poll(10*time.Second, func() bool { _, err := os.Stat(filepath.Join(s.store, "rendezvous.addr")); return err == nil }) {
		s.t.Fatalf("rendezvous did not start:\n%s", s.rv.text())
	}
}

// push makes one commit and pushes it in the server's namespace, so the
// hook (and its direct send when the rendezvous is down) runs there.
func (s *server) push() {
	s.t.Helper()
	s.mu.Lock()
	s.n++
	n := s.n
	s.mu.Unlock()
	for _, args := range [][]string{
		{"-C", s.clone, "commit", "-q", "--allow-empty", "-m", fmt.Sprint("message ", n)},
		{"-C", s.clone, "push", "-q", "origin", "HEAD:refs/heads/main"},
	} {
		if out, err := s.lab.Server.Command("git", args...).CombinedOutput(); err != nil {
			s.t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
}

// client is a daemon in a client namespace whose --exec program appends
// "<ms> <seq>" to a file.
type client struct {
	*proc
	name, out, state string
	host             *netsim.Host
	kind             string
	extra            []string
	repo             string // "" : chat.git
	s                *server
}

func (s *server) startClient(h *netsim.Host, kind string, extra ...string) *client {
	return s.launchClient(h, kind, "", extra...)
}

// launchClient starts a daemon following repo ("" : chat.git), with an
// --exec program that appends "<ms> <seq>" to the client's output file.
func (s *server) launchClient(h *netsim.Host, kind, repo string, extra ...string) *client {
	name := h.NS[strings.LastIndex(h.NS, "-")+1:]
	c := &client{name: name, host: h, kind: kind, extra: extra, repo: repo, s: s,
		out: filepath.Join(s.dir, name+".seqs"), state: filepath.Join(s.dir, name+"-state")}
	prog := filepath.Join(s.dir, name+".sh")
	os.WriteFile(prog, []byte(fmt.Sprintf("#!/bin/sh\necho \"$(date +%%s%%3N) $GCN_SEQ\" >> %q\n", c.out)), 0o755)
	c.start()
	return c
}

func (c *client) start() {
	repo := "chat.git"
	if c.repo != "" {
		repo = c.repo
	}
	args := append([]string{"daemon", "--server", netsim.ServerAddr.String() + ":3478", "--server-key", "@" + filepath.Join(c.s.store, "server.pub"),
		"--repo-id", repo, "--state", c.state, "--exec", filepath.Join(c.s.dir, c.name+".sh"), "--no-desktop", "-v"}, c.extra...)
	c.proc = startIn(c.s.t, c.host, filepath.Join(c.s.dir, fmt.Sprintf("%s-%d.log", c.name, time.Now().UnixNano())), args...)
}

// ready waits until the daemon has its position.
func (c *client) ready(t *testing.T) {
	t.Helper()
	if !poll(60*time.Second, func() bool {
		return punch.HasPosition(c.state)
	}) {
		t.Fatalf("%s (%s) never registered:\n%s\nrendezvous:\n%s", c.name, c.kind, c.text(), c.s.rv.text())
	}
}

// got returns (arrival ms, seq) pairs.
func (c *client) got() [][2]int64 {
	f, err := os.Open(c.out)
	if err != nil {
		return nil
	}
	defer f.Close()
	var r [][2]int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 {
			ms, _ := strconv.ParseInt(f[0], 10, 64)
			seq, _ := strconv.ParseInt(f[1], 10, 64)
			r = append(r, [2]int64{ms, seq})
		}
	}
	return r
}

// exactly waits (bounded) for n events and checks they are 1..n, once, in order.
func (c *client) exactly(n int, limit time.Duration) error {
	poll(limit, func() bool { return len(c.got()) >= n })
	time.Sleep(300 * time.Millisecond) // a late duplicate would show now
	got := c.got()
	ok := len(got) == n
	for i := 0; ok && i < n; i++ {
		ok = got[i][1] == int64(i+1)
	}
	if ok {
		return nil
	}
	seqs := make([]int64, len(got))
	for i, g := range got {
		seqs[i] = g[1]
	}
	return fmt.Errorf("%s (%s) handled %v, want exactly 1..%d in order", c.name, c.kind, seqs, n)
}

var chosenRE = regexp.MustCompile(`msg="keepalive interval chosen".* interval=(\S+)`)

// keepalive says what interval the daemon uses.
func (c *client) keepalive() string {
	for i, a := range c.extra {
		if a == "--keepalive" && i+1 < len(c.extra) {
			return c.extra[i+1] + " (set)"
		}
	}
	if m := chosenRE.FindAllStringSubmatch(c.text(), -1); len(m) > 0 {
		return m[len(m)-1][1] + " (learned)"
	}
	return "25s (still learning)"
}

func poll(limit time.Duration, cond func() bool) bool {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func kindName(spec netsim.RouterSpec) string {
	k := string(spec.Kind)
	if spec.CGNAT {
		k += " + CGNAT"
	}
	return k
}

// allKinds is each kind once, plus double NAT.
func allKinds() []netsim.RouterSpec {
	return []netsim.RouterSpec{{Kind: netsim.FullCone}, {Kind: netsim.AddressRestricted}, {Kind: netsim.PortRestricted},
		{Kind: netsim.Symmetric}, {Kind: netsim.PortRestricted, CGNAT: true}}
}

// deliverAll starts a daemon per client, pushes n times, and checks every
// client got every notification exactly once, in order.
func deliverAll(t *testing.T, scenario string, specs []netsim.RouterSpec, n int, limit time.Duration) {
	lab := newLab(t, specs...)
	s := startServer(t, lab)
	var clients []*client
	for i, r := range lab.Routers {
		for _, h := range r.Clients {
			clients = append(clients, s.startClient(h, kindName(specs[i])))
		}
	}
	for _, c := range clients {
		c.ready(t)
	}
	for range n {
		s.push()
	}
	failed := false
	for _, c := range clients {
		res := "ok"
		if err := c.exactly(n, limit); err != nil {
			res = "FAIL"
			failed = true
			t.Errorf("%s: %v\n%s", scenario, err, c.text())
		}
		record(t, row{scenario, c.kind, res, "-", c.keepalive()})
	}
	if failed {
		t.Logf("rendezvous log:\n%s", s.rv.text())
	}
}

func TestNATEveryKind(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	deliverAll(t, fmt.Sprintf("%d pushes", 20), allKinds(), 20, 30*time.Second)
}

func TestNATTwoClientsBehindOneNAT(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	deliverAll(t, "two clients behind one NAT", []netsim.RouterSpec{{Kind: netsim.PortRestricted, Clients: 2}, {Kind: netsim.Symmetric, Clients: 2}}, 20, 30*time.Second)
}

func TestNATLoss25Percent(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	specs := allKinds()
	for i := range specs {
		specs[i].LossPercent = 25
	}
	deliverAll(t, "25% loss at the router", specs, 20, 90*time.Second)
}

// A router reboot in the middle of a stream: mappings flushed, new external
// ports. The daemon's next keepalive (here every 10 s) re-opens the path.
func TestNATRebindingMidStream(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	specs := []netsim.RouterSpec{{Kind: netsim.FullCone}, {Kind: netsim.PortRestricted}, {Kind: netsim.Symmetric}, {Kind: netsim.PortRestricted, CGNAT: true}}
	lab := newLab(t, specs...)
	s := startServer(t, lab)
	const interval = 10 * time.Second
	var clients []*client
	for i, r := range lab.Routers {
		clients = append(clients, s.startClient(r.Clients[0], kindName(specs[i]), "--keepalive", interval.String()))
	}
	for _, c := range clients {
		c.ready(t)
	}
	for range 5 {
		s.push()
	}
	for _, c := range clients {
		if err := c.exactly(5, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	rebound := time.Now()
	for _, r := range lab.Routers {
		if err := r.Rebind(); err != nil {
			t.Fatal(err)
		}
		if r.CGN != nil {
			exec.Command("ip", "netns", "exec", r.CGN.NS, "conntrack", "-F").Run()
		}
	}
	for range 5 {
		s.push()
	}
	for _, c := range clients {
		err := c.exactly(10, interval+20*time.Second)
		res, rec := "ok", "-"
		if err != nil {
			res = "FAIL"
			t.Errorf("rebinding: %v\n%s", err, c.text())
		} else {
			got := c.got()
			recovery := time.Duration(got[5][0]-rebound.UnixMilli()) * time.Millisecond
			rec = recovery.Round(100 * time.Millisecond).String()
			if recovery > interval+3*time.Second {
				res = "SLOW"
				t.Errorf("%s: recovered after %v, more than one keepalive interval (%v)", c.kind, recovery, interval)
			}
		}
		record(t, row{"NAT rebinding mid-stream", c.kind, res, rec, c.keepalive()})
	}
}

// A NAT that forgets idle mappings after 15 s: the daemon finds it out with
// no flag, keeps its keepalive under it, and after 45 s idle a push still
// arrives at once.
func TestNATShortMappingLifetime(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	specs := []netsim.RouterSpec{{Kind: netsim.PortRestricted, UDPTimeout: 15 * time.Second}, {Kind: netsim.Symmetric, UDPTimeout: 15 * time.Second}}
	lab := newLab(t, specs...)
	s := startServer(t, lab)
	var clients []*client
	for i, r := range lab.Routers {
		clients = append(clients, s.startClient(r.Clients[0], kindName(specs[i])+", 15 s timeout"))
	}
	keepaliveLearned(t, s, clients)
}

// The daemon learns an IPv6 firewall's idle timeout as it learns a NAT's
// mapping lifetime: behind a firewall that forgets after 15 s, on an
// IPv6-only network, it keeps alive under 15 s and a push after 45 s idle
// arrives at once.
func TestNATIPv6FirewallTimeout(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	lab := newLab(t, netsim.RouterSpec{Kind: netsim.PortRestricted, IPv6Only: true, UDPTimeout: 15 * time.Second})
	s := startServer(t, lab, "--listen", "[::]:3478", "--alt-listen", "")
	c := s.startClient(lab.Routers[0].Clients[0], "IPv6 firewall, IPv6-only client, 15 s timeout", "--server", netip.AddrPortFrom(netsim.ServerAddr6, 3478).String())
	keepaliveLearned(t, s, []*client{c})
}

// A dual-stack daemon behind a home router (IPv4 NAT, IPv6 firewall),
// given the rendezvous's address in each family, keeps a path on each and
// delivers over IPv6. The router's IPv6 side goes down in the middle of a
// stream of pushes: every push arrives exactly once, in order, and the
// daemon makes IPv4 its primary path.
func TestNATDualStackFailover(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	lab := newLab(t, netsim.RouterSpec{Kind: netsim.PortRestricted, IPv6: true})
	// One address in each family, each with its RFC 5780 alternate.
	both := netsim.ServerAddr.String() + ":3478," + netip.AddrPortFrom(netsim.ServerAddr6, 3478).String()
	s := startServer(t, lab, "--listen", both,
		"--alt-listen", netsim.ServerAltAddr.String()+":3479,"+netip.AddrPortFrom(netsim.ServerAltAddr6, 3479).String())
	kind := "dual-stack: v4 port-restricted NAT, v6 firewall"
	h := lab.Routers[0].Clients[0]
	// The probe on a fresh lab: its first IPv6 datagrams wait for
	// neighbour discovery.
	out, err := bounded(h.Command(binary, "probe", "--server", both, "--json"))
	var rep struct {
		Mapping       string  `json:"mapping"`
		Filtering     string  `json:"filtering"`
		IPv6          *bool   `json:"ipv6"`
		IPv6Filtering *string `json:"ipv6_filtering"`
	}
	if err != nil || json.Unmarshal(out, &rep) != nil || rep.Filtering != "address-and-port-dependent" ||
		rep.IPv6 == nil || !*rep.IPv6 || rep.IPv6Filtering == nil || *rep.IPv6Filtering != "address-and-port-dependent" {
		t.Fatalf("probe against RFC 5780 service in both families: %v\n%s", err, out)
	}
	record(t, row{"probe, RFC 5780 in both families", kind, "ok", "v4 filtering " + rep.Filtering + ", v6 filtering " + *rep.IPv6Filtering, "-"})
	c := s.startClient(h, kind, "--server", both)
	c.ready(t)
	if !poll(30*time.Second, func() bool {
		p := c.paths()
		return p["ipv6"].Role == "primary" && p["ipv6"].Validated && p["ipv4"].Validated
	}) {
		t.Fatalf("no validated IPv6 primary and IPv4 standby: %+v\n%s", c.paths(), c.text())
	}
	for range 5 {
		s.push()
	}
	if err := c.exactly(5, 30*time.Second); err != nil {
		t.Fatalf("over IPv6: %v\n%s", err, c.text())
	}
	record(t, row{"5 pushes, two paths", kind, "ok", "primary ipv6, standby ipv4", c.keepalive()})
	var cut time.Time
	for i := range 10 {
		if i == 3 {
			if err := lab.Routers[0].SetBlockIPv6(true); err != nil {
				t.Fatal(err)
			}
			cut = time.Now()
		}
		s.push()
	}
	res, lat := "ok", "-"
	if err := c.exactly(15, 60*time.Second); err != nil {
		res = "FAIL"
		t.Errorf("across the loss of IPv6: %v\n%s", err, c.text())
	} else {
		got := c.got()
		lat = fmt.Sprintf("all in %v after the cut", (time.Duration(got[len(got)-1][0]-cut.UnixMilli()) * time.Millisecond).Round(time.Millisecond))
	}
	if !poll(30*time.Second, func() bool { return c.paths()["ipv4"].Role == "primary" }) {
		res = "FAIL"
		t.Errorf("the daemon did not make IPv4 its primary: %+v\n%s", c.paths(), c.text())
	}
	record(t, row{"IPv6 lost after 3 of 10 pushes", kind, res, lat, c.keepalive()})
	s.push()
	if err := c.exactly(16, 30*time.Second); err != nil {
		t.Errorf("on IPv4 after the loss: %v\n%s", err, c.text())
	}
}

// paths is the daemon's paths to the rendezvous by family, from `gcn-punch
// status --state DIR --json`.
func (c *client) paths() map[string]punch.PathStatus {
	out := map[string]punch.PathStatus{}
	b, err := exec.Command(binary, "status", "--state", c.state, "--json").Output()
	if err != nil {
		return out
	}
	var st punch.Status
	if json.Unmarshal(b, &st) != nil {
		return out
	}
	for _, s := range st.Servers {
		for _, p := range s.Paths {
			out[p.Family] = p
		}
	}
	return out
}

// keepaliveLearned waits until each client settled its keepalive, idles
// 45 s, pushes, and checks that the push arrived promptly and that the
// keepalive fits a 15 s lifetime.
func keepaliveLearned(t *testing.T, s *server, clients []*client) {
	for _, c := range clients {
		c.ready(t)
	}
	for _, c := range clients {
		if !poll(5*time.Minute, func() bool { return chosenRE.MatchString(c.text()) }) {
			t.Fatalf("%s never settled its keepalive:\n%s", c.kind, c.text())
		}
	}
	time.Sleep(45 * time.Second) // idle
	start := time.Now()
	s.push()
	for _, c := range clients {
		err := c.exactly(1, 30*time.Second)
		res, lat := "ok", "-"
		if err != nil {
			res = "FAIL"
			t.Errorf("after 45 s idle: %v\n%s", err, c.text())
		} else {
			latency := time.Duration(c.got()[0][0]-start.UnixMilli()) * time.Millisecond
			lat = "push after 45 s idle: " + latency.Round(time.Millisecond).String()
			if latency > 2*time.Second {
				res = "SLOW"
				t.Errorf("%s: push after idle took %v", c.kind, latency)
			}
		}
		ka := c.keepalive()
		if d, err := time.ParseDuration(strings.Fields(ka)[0]); err == nil && d >= 15*time.Second {
			res = "FAIL"
			t.Errorf("%s: keepalive %v does not fit a 15 s mapping lifetime", c.kind, d)
		}
		record(t, row{"mapping lifetime 15 s, idle 45 s", c.kind, res, lat, ka})
	}
}

// The daemon killed while pushes happen, then restarted; and the rendezvous
// killed with SIGKILL in the middle of a stream, then restarted.
func TestNATRestarts(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	specs := []netsim.RouterSpec{{Kind: netsim.PortRestricted}, {Kind: netsim.Symmetric}, {Kind: netsim.PortRestricted, CGNAT: true}}
	lab := newLab(t, specs...)
	s := startServer(t, lab)
	var clients []*client
	for i, r := range lab.Routers {
		clients = append(clients, s.startClient(r.Clients[0], kindName(specs[i])))
	}
	for _, c := range clients {
		c.ready(t)
	}
	for range 3 {
		s.push()
	}
	for _, c := range clients {
		if err := c.exactly(3, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		c.stop(syscall.SIGKILL)
	}
	for range 5 {
		s.push()
	}
	restarted := time.Now()
	for _, c := range clients {
		c.start()
	}
	for _, c := range clients {
		err := c.exactly(8, 30*time.Second)
		res, rec := "ok", "-"
		if err != nil {
			res = "FAIL"
			t.Errorf("daemon restart: %v\n%s", err, c.text())
		} else {
			rec = "caught up " + (time.Duration(c.got()[7][0]-restarted.UnixMilli()) * time.Millisecond).Round(10*time.Millisecond).String() + " after start"
		}
		record(t, row{"daemon kill -9, 5 pushes, restart", c.kind, res, rec, c.keepalive()})
	}

	// The rendezvous, killed mid-stream.
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 10 {
			s.push()
		}
	})
	poll(20*time.Second, func() bool { return len(clients[0].got()) >= 10 })
	s.rv.stop(syscall.SIGKILL)
	killed := time.Now()
	time.Sleep(time.Second)
	s.startRendezvous()
	wg.Wait()
	for _, c := range clients {
		err := c.exactly(18, 60*time.Second)
		res, rec := "ok", "-"
		if err != nil {
			res = "FAIL"
			t.Errorf("rendezvous restart: %v\n%s\nrendezvous:\n%s", err, c.text(), s.rv.text())
		} else {
			rec = "all in " + (time.Duration(c.got()[17][0]-killed.UnixMilli()) * time.Millisecond).Round(10*time.Millisecond).String() + " after the kill"
		}
		record(t, row{"rendezvous kill -9 mid-stream, restart", c.kind, res, rec, c.keepalive()})
	}
}

// UDP blocked at the router: nothing can arrive, and the daemon says so
// rather than pretending.
func TestNATUDPBlocked(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	lab := newLab(t, netsim.RouterSpec{Kind: netsim.PortRestricted, BlockUDP: true})
	s := startServer(t, lab)
	c := s.startClient(lab.Routers[0].Clients[0], "port-restricted, UDP blocked")
	time.Sleep(5 * time.Second)
	s.push()
	time.Sleep(3 * time.Second)
	res := "ok (nothing delivered, and the daemon says why)"
	if len(c.got()) != 0 {
		res = "FAIL"
		t.Error("a notification crossed a router that blocks UDP")
	}
	says := func() bool {
		return strings.Contains(c.text(), "no STUN response") && strings.Contains(c.text(), "does not answer at all") && strings.Contains(c.text(), "no SSH path")
	}
	if !poll(20*time.Second, says) {
		res = "FAIL"
		t.Errorf("the daemon's log does not show the failure and why SSH cannot help:\n%s", c.text())
	}
	record(t, row{"UDP blocked, daemon given --server (no SSH path)", c.kind, res, "-", "-"})
}

func writeMatrix() {
	matrix.Lock()
	defer matrix.Unlock()
	rows := matrix.rows
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].scenario < rows[j].scenario })
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "# NAT matrix\n\nWritten by the netns suite (`make netns-test`, also part of `make test` as root) on %s, %s.\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), host)
	b.WriteString("Each row: the real `gcn-punch` binaries, a rendezvous in a server namespace and a daemon behind a router namespace\n")
	b.WriteString("running nftables NAT (see `netsim/lab.go` and `netsim/router.go`). \"ok\" means every notification\n")
	b.WriteString("arrived exactly once, in order. Keepalive: \"(learned)\" is what the daemon chose from the NAT's mapping\n")
	b.WriteString("lifetime with no flag; \"(set)\" was given with `--keepalive`.\n\n")
	b.WriteString("| scenario | NAT | result | recovery / latency | keepalive |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.scenario, r.kind, r.result, r.recovery, r.keepalive)
	}
	pairs.Lock()
	prs := pairs.rows
	pairs.Unlock()
	if len(prs) > 0 {
		b.WriteString("\n## Peer-to-peer pairs\n\nWritten by `TestNATFanoutPairMatrix`: for each pair of NAT kinds, and two clients behind one NAT, a\n" +
			"two-member tree (`--fanout 1`); the parent joins first, then the rendezvous tells both ends about the edge at once\n" +
			"and ICE (pion/ice/v2, on each daemon's one socket) forms the path. \"formed in\" runs from the edge's arrival at\n" +
			"the child to the selected path. A daemon behind a symmetric NAT is a leaf, so the other side parents.\n" +
			"Where no direct path can form without a relay (RFC 4787), the child is served by the rendezvous directly.\n\n" +
			"| parent's NAT | child's NAT | result | path | formed in | RTT |\n|---|---|---|---|---|---|\n")
		for _, r := range prs {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", r.parent, r.child, r.result, orDash(r.kind), orDash(r.took), orDash(r.rtt))
		}
	}
	b.WriteString("\nNot covered here: rebinding behind the address-restricted emulation (its filter is keyed on the\n" +
		"pre-NAT port, which a reboot changes), and hairpinning behind symmetric NATs.\n")
	if err := os.WriteFile(filepath.Join("..", "docs", "nat-matrix.md"), []byte(b.String()), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "writing nat-matrix.md: %v\n", err)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// udpHelper is this test binary run inside a namespace as a tiny UDP tool:
//
//	send LOCALPORT DST TEXT    one datagram from LOCALPORT to DST
//	recv PORT SECONDS          print "SOURCE TEXT" of the first datagram, or exit 1
//
// and the attacker's and victim's tools of attack_test.go.
func udpHelper(mode string) int {
	f := strings.Fields(mode)
	switch {
	case len(f) == 4 && f[0] == "send":
		c, err := net.ListenPacket("udp", ":"+f[1])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer c.Close()
		dst, err := net.ResolveUDPAddr("udp", f[2])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		if _, err := c.WriteTo([]byte(f[3]), dst); err != nil {
			fmt.Println(err)
			return 1
		}
		return 0
	case len(f) == 3 && f[0] == "recv":
		c, err := listenFor(f[1], f[2])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer c.Close()
		buf := make([]byte, 1500)
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return 1
		}
		fmt.Printf("%s %s\n", from, buf[:n])
		return 0
	}
	return attackHelper(f)
}

// listenFor listens on a UDP port (both families) with a read deadline
// SECONDS away.
func listenFor(port, seconds string) (net.PacketConn, error) {
	c, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		return nil, err
	}
	secs, _ := strconv.Atoi(seconds)
	c.SetReadDeadline(time.Now().Add(time.Duration(secs) * time.Second))
	return c, nil
}

func helper(h *netsim.Host, mode string) *exec.Cmd {
	cmd := h.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GCN_UDP_HELPER="+mode)
	return cmd
}

// Two clients behind one router: with hairpinning, B is reached at the
// router's public address and sees A's public endpoint; without, nothing.
func TestNATHairpinning(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	lab := newLab(t, netsim.RouterSpec{Kind: netsim.PortRestricted, Clients: 2, Hairpin: true},
		netsim.RouterSpec{Kind: netsim.PortRestricted, Clients: 2})
	for i, r := range lab.Routers {
		a, b := r.Clients[0], r.Clients[1]
		// B opens its mapping (public port 5000) towards the server.
		if out, err := helper(b, "send 5000 "+netsim.ServerAddr.String()+":9 open").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		recv := helper(b, "recv 5000 3")
		var out strings.Builder
		recv.Stdout = &out
		if err := recv.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		if o, err := helper(a, "send 6000 "+r.Addr.String()+":5000 hello").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, o)
		}
		err := recv.Wait()
		want := r.Addr.String() + ":6000 hello\n"
		res := "ok"
		if i == 0 {
			if err != nil || out.String() != want {
				res = "FAIL"
				rules, _ := exec.Command("ip", "netns", "exec", r.NS, "nft", "list", "ruleset").CombinedOutput()
				ct, _ := exec.Command("ip", "netns", "exec", r.NS, "conntrack", "-L", "-p", "udp").CombinedOutput()
				t.Errorf("hairpinning on: B got %q (%v), want %q\n%s\n%s", out.String(), err, want, rules, ct)
			}
			record(t, row{"hairpinning on (B reached at the public address)", "port-restricted", res, "-", "-"})
		} else {
			if err == nil {
				res = "FAIL"
				t.Errorf("hairpinning off: B still got %q", out.String())
			}
			record(t, row{"hairpinning off (nothing arrives)", "port-restricted", res, "-", "-"})
		}
	}
}

// behaviour turns coturn's "NAT with Address and Port Dependent Mapping!"
// into the RFC 4787 name.
func behaviour(line string) string {
	l := strings.ToLower(line)
	switch {
	case strings.Contains(l, "endpoint independent"):
		return "endpoint-independent"
	case strings.Contains(l, "address and port dependent"):
		return "address-and-port-dependent"
	case strings.Contains(l, "address dependent"):
		return "address-dependent"
	}
	return "?"
}

var natLine = regexp.MustCompile(`NAT with (.*) (Mapping|Filtering)!`)
var reflexiveLine = regexp.MustCompile(`UDP reflexive addr: (\S+)`)

// For each NAT kind, in both directions with coturn (a real, independent
// RFC 5780 implementation): our probe classifies the NAT against our
// rendezvous and against coturn's turnserver; coturn's natdiscovery
// classifies it against our rendezvous; coturn's stunclient reads the right
// reflexive address from our rendezvous.
func TestNATProbeInterop(t *testing.T) {
	skipUnlessLab(t)
	for _, p := range []string{"turnserver", "turnutils_natdiscovery", "turnutils_stunclient"} {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not installed: .ci/run must install coturn", p)
			}
			t.Skipf("%s not installed (apt-get install coturn)", p)
		}
	}
	t.Parallel()
	specs := []netsim.RouterSpec{{Kind: netsim.FullCone}, {Kind: netsim.AddressRestricted}, {Kind: netsim.PortRestricted}, {Kind: netsim.Symmetric}}
	lab := newLab(t, specs...)
	dir := t.TempDir()
	a, b := netsim.ServerAddr.String(), netsim.ServerAltAddr.String()
	ours := startIn(t, lab.Server, filepath.Join(dir, "rendezvous.log"),
		"rendezvous", "--listen", a+":3478", "--alt-listen", b+":3479", "--store", filepath.Join(dir, "store"), "--open")
	turn := lab.Server.Command("turnserver", "-n", "--listening-ip="+a, "--listening-ip="+b, "--listening-port=5478",
		"--alt-listening-port=5479", "--stun-only", "--no-tcp", "--no-tls", "--no-dtls", "--no-cli",
		"--log-file=stdout", "--simple-log", "--pidfile="+filepath.Join(dir, "turn.pid"))
	turnLog, _ := os.Create(filepath.Join(dir, "turnserver.log"))
	turn.Stdout, turn.Stderr = turnLog, turnLog
	if err := turn.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { turn.Process.Kill(); turn.Wait() })
	if !poll(10*time.Second, func() bool { return strings.Contains(ours.text(), "RFC 5780 NAT discovery on") }) {
		t.Fatalf("rendezvous without RFC 5780:\n%s", ours.text())
	}
	time.Sleep(time.Second) // coturn's sockets

	var wg sync.WaitGroup
	for i, r := range lab.Routers {
		wg.Go(func() {
			kind := specs[i].Kind
			c := r.Clients[0]
			want := kind.Mapping() + " / " + kind.Filtering()
			probe := func(server string) (string, string) {
				cmd := c.Command(binary, "probe", "--server", server, "--json")
				cmd.Stderr = io.Discard // JSON only on stdout
				out, err := bounded(cmd)
				var rep struct {
					Mapping, Filtering *string
					DurationMillis     int64 `json:"duration_ms"`
				}
				if err != nil || json.Unmarshal(out, &rep) != nil || rep.Mapping == nil || rep.Filtering == nil {
					return fmt.Sprintf("error %v: %s", err, out), "-"
				}
				return *rep.Mapping + " / " + *rep.Filtering, fmt.Sprintf("%d ms", rep.DurationMillis)
			}
			check := func(what, got, took string) {
				res := "ok"
				if got != want {
					res = "FAIL"
					t.Errorf("%s behind %s: got %q, want %q", what, kind, got, want)
				}
				record(t, row{what, string(kind), res, took, "-"})
			}
			got, took := probe(a + ":3478")
			check("probe vs our rendezvous", got, took)
			got, took = probe(a + ":5478")
			check("probe vs coturn turnserver", got, took)

			out, _ := bounded(c.Command("turnutils_natdiscovery", "-m", "-f", "-p", "3478", a))
			var mapping, filtering string
			for _, m := range natLine.FindAllStringSubmatch(string(out), -1) {
				if m[2] == "Mapping" {
					mapping = behaviour(m[1])
				} else {
					filtering = behaviour(m[1])
				}
			}
			check("coturn natdiscovery vs our rendezvous", mapping+" / "+filtering, "-")

			out, _ = bounded(c.Command("turnutils_stunclient", "-p", "3478", a))
			refl := ""
			if m := reflexiveLine.FindStringSubmatch(string(out)); m != nil {
				refl = m[1]
			}
			res := "ok"
			if !strings.HasPrefix(refl, r.Addr.String()+":") {
				res = "FAIL"
				t.Errorf("coturn stunclient behind %s: reflexive %q, want the router's %s\n%s", kind, refl, r.Addr, out)
			}
			record(t, row{"coturn stunclient vs our rendezvous (reflexive address)", string(kind), res, refl, "-"})
		})
	}
	wg.Wait()
}

// bounded runs a command for at most 30 s and returns its output; one that
// does not finish is killed and says so in the output.
func bounded(cmd *exec.Cmd) ([]byte, error) {
	var buf strings.Builder
	if cmd.Stdout == nil {
		cmd.Stdout = &buf
	}
	if cmd.Stderr == nil && cmd.Stdout == &buf {
		cmd.Stderr = &buf
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return []byte(buf.String()), err
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		return []byte(buf.String() + "\n(killed after 30 s)"), errors.New("timed out")
	}
}

// lifetimeReport is what the lifetime tests read of probe --json.
type lifetimeReport struct {
	Lifetime *float64 `json:"mapping_lifetime_s"`
	Under    bool     `json:"mapping_lifetime_under"`
	Verdict  struct {
		Keepalive string `json:"keepalive"`
	} `json:"verdict"`
}

// probeLifetimeBehind runs probe --lifetime behind a port-restricted
// router that forgets idle mappings after timeout, against a rendezvous
// with a second address, and returns its report and progress lines.
func probeLifetimeBehind(t *testing.T, timeout time.Duration, max string) (lifetimeReport, string) {
	lab := newLab(t, netsim.RouterSpec{Kind: netsim.PortRestricted, UDPTimeout: timeout})
	dir := t.TempDir()
	a, b := netsim.ServerAddr.String(), netsim.ServerAltAddr.String()
	startIn(t, lab.Server, filepath.Join(dir, "rendezvous.log"),
		"rendezvous", "--listen", a+":3478", "--alt-listen", b+":3479", "--store", filepath.Join(dir, "store"), "--open")
	time.Sleep(500 * time.Millisecond)
	cmd := lab.Routers[0].Clients[0].Command(binary, "probe", "--server", a+":3478", "--json", "--lifetime", "--lifetime-max", max)
	var progress strings.Builder
	cmd.Stderr = &progress
	out, err := cmd.Output()
	var rep lifetimeReport
	if err != nil || json.Unmarshal(out, &rep) != nil || rep.Lifetime == nil {
		t.Fatalf("probe --lifetime: %v\n%s\n%s", err, out, progress.String())
	}
	return rep, progress.String()
}

// probe --lifetime behind a router that forgets idle mappings after 15 s.
func TestNATProbeLifetime(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	rep, progress := probeLifetimeBehind(t, 15*time.Second, "90s")
	res := "ok"
	if *rep.Lifetime < 10 || *rep.Lifetime >= 15 {
		res = "FAIL"
		t.Errorf("measured lifetime %.0f s behind a 15 s NAT", *rep.Lifetime)
	}
	if !strings.Contains(progress, "idle") {
		t.Errorf("no progress shown while waiting:\n%s", progress)
	}
	record(t, row{"probe --lifetime, 15 s mapping timeout", "port-restricted", res, fmt.Sprintf("measured %.0f s", *rep.Lifetime), "-"})
}

// probe --lifetime behind a router that forgets idle mappings after 4 s:
// gone after 10 s and after 5 s idle, it says "under 5 s" (it once said
// "0 s idle", and "a keepalive every 0s").
func TestNATProbeShortLifetime(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	rep, _ := probeLifetimeBehind(t, 4*time.Second, "60s")
	res := "ok"
	if !rep.Under || *rep.Lifetime != 5 || !strings.Contains(rep.Verdict.Keepalive, "within 5 s") {
		res = "FAIL"
		t.Errorf("behind a 4 s NAT: lifetime %.0f s, under %v, verdict %q; want under 5 s", *rep.Lifetime, rep.Under, rep.Verdict.Keepalive)
	}
	record(t, row{"probe --lifetime, 4 s mapping timeout", "port-restricted", res, fmt.Sprintf("measured under %.0f s", *rep.Lifetime), "-"})
}

// IPv6 through home routers with a stateful IPv6 firewall and no NAT: a
// dual-stack client and one on an IPv6-only network, both given the
// rendezvous's IPv6 address, get every push exactly once, in order; the
// firewall lets the rendezvous's datagrams in only as answers to the
// keepalives, and an unsolicited datagram from the server side does not
// pass it. The probe from behind it reports IPv6 with a global address.
func TestNATIPv6Firewall(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	specs := []netsim.RouterSpec{{Kind: netsim.PortRestricted, IPv6: true}, {Kind: netsim.Symmetric, IPv6Only: true}}
	lab := newLab(t, specs...)
	s := startServer(t, lab, "--listen", "[::]:3478", "--alt-listen", "")
	server6 := netip.AddrPortFrom(netsim.ServerAddr6, 3478).String()
	kinds := []string{"IPv6 firewall, dual-stack (v4 port-restricted)", "IPv6 firewall, IPv6-only client"}
	var clients []*client
	for i, r := range lab.Routers {
		clients = append(clients, s.startClient(r.Clients[0], kinds[i], "--server", server6))
	}
	for _, c := range clients {
		c.ready(t)
	}
	const n = 20
	for range n {
		s.push()
	}
	for _, c := range clients {
		res := "ok"
		if err := c.exactly(n, 30*time.Second); err != nil {
			res = "FAIL"
			t.Errorf("%v\n%s", err, c.text())
		}
		record(t, row{fmt.Sprintf("%d pushes over IPv6", n), c.kind, res, "-", c.keepalive()})
	}
	st, err := exec.Command(binary, "status", "--store", s.store).CombinedOutput()
	if err != nil || strings.Count(string(st), "[2001:2:") != 2 {
		t.Fatalf("the rendezvous does not show both clients at their IPv6 addresses: %v\n%s", err, st)
	}

	// Unsolicited: from the server to a client port nothing went out from.
	h := lab.Routers[0].Clients[0]
	listener := helper(h, "recv 4999 2")
	var got strings.Builder
	listener.Stdout = &got
	if err := listener.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if out, err := bounded(helper(lab.Server, "send 5000 "+netip.AddrPortFrom(h.Addr6, 4999).String()+" unsolicited")); err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	listener.Wait()
	if strings.Contains(got.String(), "unsolicited") {
		t.Fatalf("an unsolicited IPv6 datagram passed the firewall: %s", got.String())
	}

	// The probe over IPv6 from behind the firewall.
	out, err := bounded(h.Command(binary, "probe", "--server", server6, "--json"))
	var rep struct {
		IPv6          *bool  `json:"ipv6"`
		IPv6Reflexive string `json:"ipv6_reflexive"`
		IPv6Global    bool   `json:"ipv6_global"`
	}
	if err != nil || json.Unmarshal(out, &rep) != nil || rep.IPv6 == nil || !*rep.IPv6 || !rep.IPv6Global ||
		!strings.HasPrefix(rep.IPv6Reflexive, "["+h.Addr6.String()+"]:") {
		t.Fatalf("probe over IPv6: %v\n%s", err, out)
	}
	record(t, row{"probe over IPv6", kinds[0], "ok", "reflexive " + rep.IPv6Reflexive + ", global", "-"})
}
