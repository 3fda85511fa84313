package netsim_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/internal/sshtest"
	"github.com/gitchat/gcn-punch/netsim"
)

// sshServer is the lab's git server reached over SSH: a git-shell user
// with the repository, the store and the rendezvous, and sshd, all in the
// server's namespace.
type sshServer struct {
	t                *testing.T
	lab              *netsim.Lab
	dir, home, store string
	bare, pusher     string
	bin              string
	user             string
	uid, gid         int
	sshCommand       string
	rv               *proc
}

func newSSHServer(t *testing.T, lab *netsim.Lab) *sshServer {
	t.Helper()
	for _, p := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen", "useradd", "git-shell"} {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed (apt-get install openssh-server openssh-client git)", p)
			}
			t.Skipf("%s is not installed", p)
		}
	}
	s := &sshServer{t: t, lab: lab, dir: t.TempDir()}
	a := sshtest.New(t, "gcnn", s.dir)
	s.user, s.home, s.uid, s.gid = a.User, a.Home, a.UID, a.GID
	s.bin = filepath.Join(s.dir, "gcn-punch")
	b, _ := os.ReadFile(binary)
	os.WriteFile(s.bin, b, 0o755)
	cfg := a.SSHDConfig(t, netsim.ServerAddr.String()+":22")
	sshd := lab.Server.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	sshdLog, _ := os.Create(filepath.Join(s.dir, "sshd.log"))
	sshd.Stderr = sshdLog
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sshd.Process.Kill(); sshd.Wait() })
	s.sshCommand = a.SSHCommand(t, netsim.ServerAddr.String())

	s.bare = filepath.Join(s.home, "chat.git")
	s.asUser("git", "init", "-q", "--bare", "-b", "main", s.bare)
	s.store = filepath.Join(s.home, "store")
	run(t, s.bin, "install", "server", "--repo", s.bare, "--user", s.user, "--store", s.store,
		"--binary", s.bin, "--unit", filepath.Join(s.dir, "rendezvous.service"))
	s.pusher = filepath.Join(s.home, "pusher")
	s.asUser("git", "clone", "-q", s.bare, s.pusher)
	s.asUser("git", "-C", s.pusher, "checkout", "-q", "-b", "main")
	s.push("first")
	s.startRendezvous()
	return s
}

// userCommand is a command in the server's namespace as the git user
// (setpriv drops root after `ip netns exec` has entered the namespace).
func (s *sshServer) userCommand(name string, args ...string) *exec.Cmd {
	cmd := s.lab.Server.Command("setpriv", append([]string{"--reuid=" + strconv.Itoa(s.uid), "--regid=" + strconv.Itoa(s.gid), "--clear-groups", "--", name}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+s.home)
	return cmd
}

// asUser runs a command in the server's namespace as the git user.
func (s *sshServer) asUser(name string, args ...string) {
	s.t.Helper()
	if out, err := s.userCommand(name, args...).CombinedOutput(); err != nil {
		s.t.Fatalf("%s %v as %s: %v\n%s", name, args, s.user, err, out)
	}
}

func (s *sshServer) startRendezvous() {
	os.Remove(filepath.Join(s.store, "rendezvous.addr"))
	logPath := filepath.Join(s.dir, "rendezvous.log")
	f, _ := os.Create(logPath)
	cmd := s.userCommand(s.bin, "rendezvous", "--listen", netsim.ServerAddr.String()+":3478", "--store", s.store)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	f.Close()
	s.rv = &proc{cmd: cmd, log: logPath}
	s.t.Cleanup(func() { s.rv.stop(syscall.SIGKILL) })
	if !poll(10*time.Second, func() bool { _, err := os.Stat(filepath.Join(s.store, "rendezvous.addr")); return err == nil }) {
		s.t.Fatalf("rendezvous did not start:\n%s", s.rv.text())
	}
}

// push commits and pushes as the git user, through the real hook.
func (s *sshServer) push(msg string) {
	s.t.Helper()
	s.asUser("git", "-C", s.pusher, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "--allow-empty", "-m", msg)
	s.asUser("git", "-C", s.pusher, "push", "-q", "origin", "HEAD:refs/heads/main")
}

// follow clones over SSH in the client's namespace and starts a daemon
// with --repo on the clone (it registers over SSH) and an --exec program
// that appends "<ms> <seq>" for each push.
func (s *sshServer) follow(h *netsim.Host, name string) (*proc, func() []int64) {
	clone := filepath.Join(s.dir, name)
	url := fmt.Sprintf("ssh://%s@%s%s", s.user, netsim.ServerAddr, s.bare)
	if out, err := h.Command("git", "-c", "core.sshCommand="+s.sshCommand, "clone", "-q", url, clone).CombinedOutput(); err != nil {
		s.t.Fatalf("clone over SSH: %v\n%s", err, out)
	}
	run(s.t, "git", "-C", clone, "config", "core.sshCommand", s.sshCommand)
	out := filepath.Join(s.dir, name+".seqs")
	prog := filepath.Join(s.dir, name+".sh")
	os.WriteFile(prog, []byte(fmt.Sprintf("#!/bin/sh\n[ -n \"$GCN_REF\" ] && echo \"$(date +%%s%%3N) $GCN_SEQ\" >> %q\n", out)), 0o755)
	state := filepath.Join(s.dir, name+"-home")
	cmd := h.Command(binary, "daemon", "--repo", clone, "--exec", prog, "--no-desktop", "-v")
	cmd.Env = append(os.Environ(), "HOME="+state, "XDG_STATE_HOME="+filepath.Join(state, "state"))
	logPath := filepath.Join(s.dir, name+".log")
	f, _ := os.Create(logPath)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	f.Close()
	p := &proc{cmd: cmd, log: logPath}
	s.t.Cleanup(func() { p.stop(syscall.SIGKILL) })
	seqs := func() []int64 {
		b, _ := os.ReadFile(out)
		var r []int64
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if f := strings.Fields(line); len(f) == 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				r = append(r, n)
			}
		}
		return r
	}
	return p, seqs
}

// A router that drops all UDP, and a real sshd with a git-shell user in the
// server's namespace (issue 12): the daemon, which registered over SSH,
// turns to a stream over that SSH within 8 s and every push of a stream
// arrives exactly once, in order; UDP unblocked mid-stream, the daemon
// moves back to UDP and nothing is lost or doubled across the switch.
func TestNATUDPBlockedTurnsToSSH(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	lab := newLab(t, netsim.RouterSpec{Kind: netsim.PortRestricted, BlockUDP: true})
	s := newSSHServer(t, lab)
	start := time.Now()
	d, seqs := s.follow(lab.Routers[0].Clients[0], "alice")
	if !poll(40*time.Second, func() bool { return strings.Contains(d.text(), "notifications now come over SSH") }) {
		t.Fatalf("the daemon did not turn to SSH:\n%s\nrendezvous:\n%s", d.text(), s.rv.text())
	}
	toSSH := time.Since(start)
	if !poll(20*time.Second, func() bool {
		rv := s.rv.text()
		return strings.Contains(d.text(), "registered over SSH") && (strings.Contains(rv, "addr=[100::") || strings.Contains(rv, "path=ssh"))
	}) {
		t.Fatalf("the rendezvous never saw the client on its stream:\n%s", s.rv.text())
	}
	time.Sleep(2 * time.Second) // its position learned
	var sshLatency []time.Duration
	for i := range 5 {
		before := len(seqs())
		pushed := time.Now()
		s.push(fmt.Sprintf("over ssh %d", i))
		if !poll(20*time.Second, func() bool { return len(seqs()) > before }) {
			t.Fatalf("push %d did not arrive over SSH:\n%s", i, d.text())
		}
		sshLatency = append(sshLatency, time.Since(pushed))
	}
	// Unblock mid-stream: two pushes in flight while the daemon moves back.
	if err := lab.Routers[0].SetBlockUDP(false); err != nil {
		t.Fatal(err)
	}
	unblocked := time.Now()
	s.push("as UDP returns")
	if !poll(60*time.Second, func() bool { return strings.Contains(d.text(), "back on UDP") }) {
		t.Fatalf("the daemon did not move back to UDP:\n%s", d.text())
	}
	back := time.Since(unblocked)
	s.push("over udp")
	if !poll(20*time.Second, func() bool { return len(seqs()) >= 7 }) {
		t.Fatalf("handled %v, want 7 pushes", seqs())
	}
	time.Sleep(time.Second) // a late duplicate would show now
	got := seqs()
	ok := len(got) == 7
	for i := 1; ok && i < len(got); i++ {
		ok = got[i] == got[i-1]+1
	}
	res := "ok"
	if !ok {
		res = "FAIL"
		t.Errorf("handled %v: want 7 pushes, each once, in order", got)
	}
	sort.Slice(sshLatency, func(i, j int) bool { return sshLatency[i] < sshLatency[j] })
	t.Logf("UDP blocked: on SSH %v after start; push → exec over SSH p50 %v (git push included); back on UDP %v after unblocking",
		toSSH.Round(100*time.Millisecond), sshLatency[len(sshLatency)/2].Round(time.Millisecond), back.Round(time.Second))
	record(t, row{"UDP blocked → SSH stream, then unblocked", "port-restricted", res,
		fmt.Sprintf("on SSH %.1f s after start; push→exec %d ms over SSH (p50 of 5, git push included); back on UDP %.0f s after unblocking",
			toSSH.Seconds(), sshLatency[len(sshLatency)/2].Milliseconds(), back.Seconds()), "-"})
}
