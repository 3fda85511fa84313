package main

// Registration over a real OpenSSH server with a git-shell user. These tests
// need root (useradd, sshd); they skip with one line otherwise, and fail in CI
// if a needed program is missing.

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"net"
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
	"github.com/gitchat/gcn-punch/punch"
)

func needRoot(t *testing.T, programs ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: real sshd and system users")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (useradd, sshd): skipped; CI runs as root")
	}
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed: .ci/run must install it", p)
			}
			t.Skipf("%s is not installed", p)
		}
	}
}

// sshWorld is a git server reached over real SSH: a git-shell user, sshd on
// loopback with its own host key, a rendezvous running as that user, and a
// client key that the user authorises.
type sshWorld struct {
	t                *testing.T
	dir, user, home  string
	uid, gid         int
	port             int
	store, bare, bin string
	sshCommand       string
	rv               *proc
	sshd             *exec.Cmd
}

func newSSHWorld(t *testing.T) *sshWorld {
	needRoot(t, "/usr/sbin/sshd", "ssh", "ssh-keygen", "useradd", "git-shell")
	w := &sshWorld{t: t, dir: t.TempDir()}
	a := sshtest.New(t, "gcnt", w.dir)
	w.user, w.home, w.uid, w.gid = a.User, a.Home, a.UID, a.GID
	w.bin = filepath.Join(w.dir, "gcn-punch")
	b, _ := os.ReadFile(binary)
	os.WriteFile(w.bin, b, 0o755)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	w.port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	a.SSHDConfig(t, fmt.Sprintf("127.0.0.1:%d", w.port))
	w.startSSHD()
	t.Cleanup(func() { w.sshd.Process.Kill(); w.sshd.Wait() })
	w.sshCommand = a.SSHCommand(t, fmt.Sprintf("[127.0.0.1]:%d", w.port))

	w.bare = filepath.Join(w.home, "chat.git")
	w.asUser("git", "init", "-q", "--bare", "-b", "main", w.bare)
	w.store = filepath.Join(w.home, "store")
	run(t, "", w.bin, "install", "server", "--repo", w.bare, "--user", w.user, "--store", w.store,
		"--binary", w.bin, "--unit", filepath.Join(w.dir, "rendezvous.service"))
	w.startRendezvous()
	return w
}

// asUser runs a command as the git user.
// startSSHD starts sshd on the world's port and waits until it listens.
func (w *sshWorld) startSSHD() {
	w.t.Helper()
	w.sshd = exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(w.dir, "sshd_config"))
	logf, _ := os.OpenFile(filepath.Join(w.dir, "sshd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	w.sshd.Stderr = logf
	if err := w.sshd.Start(); err != nil {
		w.t.Fatal(err)
	}
	if !poll(10*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", w.port))
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		w.t.Fatal("sshd did not start")
	}
}

func (w *sshWorld) asUser(name string, args ...string) {
	w.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(w.uid), Gid: uint32(w.gid)}}
	cmd.Env = append(os.Environ(), "HOME="+w.home)
	if out, err := cmd.CombinedOutput(); err != nil {
		w.t.Fatalf("%s %v as %s: %v\n%s", name, args, w.user, err, out)
	}
}

func (w *sshWorld) startRendezvous() {
	os.Remove(filepath.Join(w.store, "rendezvous.addr"))
	logPath := filepath.Join(w.dir, fmt.Sprintf("rendezvous-%d.log", time.Now().UnixNano()))
	f, _ := os.Create(logPath)
	cmd := exec.Command(w.bin, "rendezvous", "--listen", "127.0.0.1:0", "--store", w.store)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(w.uid), Gid: uint32(w.gid)}}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	f.Close()
	w.rv = &proc{cmd: cmd, log: logPath}
	w.t.Cleanup(func() { w.rv.kill(syscall.SIGKILL) })
	if !poll(10*time.Second, func() bool { _, err := os.Stat(filepath.Join(w.store, "rendezvous.addr")); return err == nil }) {
		w.t.Fatalf("rendezvous did not start:\n%s", w.rv.logText())
	}
}

// chat makes the usual start: a pusher's clone with a first commit on
// main, pushed, and a follower's clone of it.
func (w *sshWorld) chat() (pusher, follower string) {
	pusher = w.clone("pusher")
	run(w.t, pusher, "git", "checkout", "-q", "-b", "main")
	w.push(pusher, "first")
	return pusher, w.clone("follower")
}

// rendezvousPort is the UDP port the rendezvous serves on.
func (w *sshWorld) rendezvousPort() string {
	addr, err := os.ReadFile(filepath.Join(w.store, "rendezvous.addr"))
	if err != nil {
		w.t.Fatal(err)
	}
	_, port, _ := strings.Cut(strings.TrimSpace(string(addr)), ":")
	return port
}

func (w *sshWorld) url() string {
	return fmt.Sprintf("ssh://%s@127.0.0.1:%d%s", w.user, w.port, w.bare)
}

// clone makes a clone over SSH whose core.sshCommand carries the test's key.
func (w *sshWorld) clone(name string) string {
	dst := filepath.Join(w.dir, name)
	run(w.t, "", "git", "-c", "core.sshCommand="+w.sshCommand, "clone", "-q", w.url(), dst)
	run(w.t, dst, "git", "config", "core.sshCommand", w.sshCommand)
	return dst
}

func (w *sshWorld) push(clone, msg string) string {
	run(w.t, clone, "git", "commit", "-q", "--allow-empty", "-m", msg)
	run(w.t, clone, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
	return strings.TrimSpace(run(w.t, clone, "git", "rev-parse", "HEAD"))
}

// startDaemon runs `gcn-punch daemon --repo CLONE` and nothing else.
func (w *sshWorld) startDaemon(clone, xdg string) *proc {
	return start(w.t, filepath.Join(w.dir, fmt.Sprintf("daemon-%d.log", time.Now().UnixNano())),
		[]string{"XDG_STATE_HOME=" + xdg, "HOME=" + filepath.Dir(xdg)}, "daemon", "--repo", clone, "--no-desktop")
}

func TestSSHRegistrationThenPushFastForwards(t *testing.T) {
	w := newSSHWorld(t)
	pusher, follower := w.chat()
	d := w.startDaemon(follower, filepath.Join(w.dir, "home", "state"))
	if !poll(20*time.Second, func() bool { return strings.Contains(d.logText(), "registered over SSH") }) {
		t.Fatalf("no registration:\n%s\nsshd:\n%s", d.logText(), mustRead(filepath.Join(w.dir, "sshd.log")))
	}
	poll(10*time.Second, func() bool {
		return punch.HasPosition(filepath.Join(w.dir, "home", "state", "gcn-punch"))
	})
	want := w.push(pusher, "second")
	if !poll(20*time.Second, func() bool {
		return strings.TrimSpace(run(t, follower, "git", "rev-parse", "HEAD")) == want
	}) {
		t.Fatalf("follower not fast-forwarded to %s:\n%s", want, d.logText())
	}
	// The seed record and the authorisation exist for the daemon's key.
	b, _ := os.ReadFile(filepath.Join(w.dir, "home", "state", "gcn-punch", "client.pub"))
	id := strings.TrimSpace(string(b))
	if _, err := os.Stat(filepath.Join(w.store, "auth", "chat.git", id)); err != nil {
		t.Fatalf("no authorisation: %v", err)
	}
	rec, err := os.ReadFile(filepath.Join(w.store, "clients", id[:2], id[2:]))
	if err != nil || strings.Count(string(rec), "\x00") != 2 || !strings.Contains(string(rec), "\x00127.0.0.1\x00") {
		t.Fatalf("client record %q %v", rec, err)
	}
}

func TestSSHServerKeyChangeIsRefused(t *testing.T) {
	w := newSSHWorld(t)
	pusher, follower := w.chat()
	xdg := filepath.Join(w.dir, "home", "state")
	d := w.startDaemon(follower, xdg)
	if !poll(20*time.Second, func() bool { return strings.Contains(d.logText(), "registered over SSH") }) {
		t.Fatalf("no registration:\n%s", d.logText())
	}
	d.kill(syscall.SIGTERM)
	// The server's key is replaced (or someone impersonates it).
	w.rv.kill(syscall.SIGKILL)
	os.Remove(filepath.Join(w.store, "server.key"))
	w.startRendezvous()
	d = w.startDaemon(follower, xdg)
	if !poll(20*time.Second, func() bool { return strings.Contains(d.logText(), "SERVER KEY CHANGED") }) {
		t.Fatalf("a changed server key was not refused loudly:\n%s", d.logText())
	}
	before := strings.TrimSpace(run(t, follower, "git", "rev-parse", "HEAD"))
	w.push(pusher, "second")
	time.Sleep(time.Second)
	if after := strings.TrimSpace(run(t, follower, "git", "rev-parse", "HEAD")); after != before || strings.Contains(d.logText(), "msg=notified") {
		t.Fatal("the daemon followed a server whose key changed")
	}
}

func TestInstallServerIsIdempotentChainsAndUninstalls(t *testing.T) {
	w := newSSHWorld(t)
	hooks := filepath.Join(w.bare, "hooks")
	// Uninstall first, put a hook of the user's in place, install again.
	run(t, "", w.bin, "uninstall", "server", "--repo", w.bare, "--user", w.user, "--store", w.store, "--unit", filepath.Join(w.dir, "rendezvous.service"))
	if _, err := os.Stat(filepath.Join(w.home, "git-shell-commands", "gcn-heartbeat")); err == nil {
		t.Fatal("uninstall left the git-shell command")
	}
	mine := fmt.Sprintf("#!/bin/sh\ncat > %s\n", filepath.Join(w.home, "old-hook-ran"))
	os.WriteFile(filepath.Join(hooks, "post-receive"), []byte(mine), 0o755)
	install := func() {
		run(t, "", w.bin, "install", "server", "--repo", w.bare, "--user", w.user, "--store", w.store, "--binary", w.bin, "--unit", filepath.Join(w.dir, "rendezvous.service"))
	}
	install()
	first := treeHash(t, hooks) + treeHash(t, filepath.Join(w.home, "git-shell-commands"))
	install()
	if again := treeHash(t, hooks) + treeHash(t, filepath.Join(w.home, "git-shell-commands")); again != first {
		t.Fatal("a second install changed the files")
	}
	// Both hooks run on a push: ours logs the event, the old one still runs.
	pusher := w.clone("pusher")
	run(t, pusher, "git", "checkout", "-q", "-b", "main")
	w.push(pusher, "first")
	if b, err := os.ReadFile(filepath.Join(w.home, "old-hook-ran")); err != nil || !strings.Contains(string(b), "refs/heads/main") {
		t.Fatalf("the chained hook did not get the push: %q %v", b, err)
	}
	if log, _ := os.ReadFile(filepath.Join(w.store, "repos", "chat.git", "events.log")); !strings.Contains(string(log), "refs/heads/main") {
		t.Fatal("gcn-punch's hook did not log the push")
	}
	run(t, "", w.bin, "uninstall", "server", "--repo", w.bare, "--user", w.user, "--store", w.store, "--unit", filepath.Join(w.dir, "rendezvous.service"))
	if b, _ := os.ReadFile(filepath.Join(hooks, "post-receive")); string(b) != mine {
		t.Fatalf("uninstall did not restore the user's hook: %q", b)
	}
	if _, err := os.Stat(filepath.Join(w.dir, "rendezvous.service")); err == nil {
		t.Fatal("uninstall left the unit")
	}
}

// Bad gcn-heartbeat arguments of every kind are refused with one line and a
// non-zero exit, through real SSH and git-shell, and the store is unchanged.
func TestHeartbeatRejectsBadInputOverSSH(t *testing.T) {
	w := newSSHWorld(t)
	okID := strings.Repeat("ab", 32)
	cases := map[string][]string{
		"short id":           {"--repo", w.bare, "--id", "abcd", "--port", "4000"},
		"non-hex id":         {"--repo", w.bare, "--id", strings.Repeat("zz", 32), "--port", "4000"},
		"long id":            {"--repo", w.bare, "--id", okID + "ab", "--port", "4000"},
		"port zero":          {"--repo", w.bare, "--id", okID, "--port", "0"},
		"port too big":       {"--repo", w.bare, "--id", okID, "--port", "65536"},
		"port not number":    {"--repo", w.bare, "--id", okID, "--port", "4k"},
		"missing repo":       {"--repo", "nope.git", "--id", okID, "--port", "4000"},
		"dot dot":            {"--repo", "../../etc", "--id", okID, "--port", "4000"},
		"dot dot inside":     {"--repo", w.bare + "/../chat.git", "--id", okID, "--port", "4000"},
		"absolute escape":    {"--repo", "/etc", "--id", okID, "--port", "4000"},
		"not served":         {"--repo", w.home, "--id", okID, "--port", "4000"},
		"bad reflexive":      {"--repo", w.bare, "--id", okID, "--port", "4000", "--reflexive", "nonsense"},
		"client picks store": {"--repo", w.bare, "--id", okID, "--port", "4000", "--store", "/tmp"},
		"unknown flag":       {"--repo", w.bare, "--id", okID, "--port", "4000", "--bogus"},
		"stray argument":     {"--repo", w.bare, "--id", okID, "--port", "4000", "extra"},
	}
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	before := treeHash(t, w.store)
	for _, name := range names {
		args := append([]string{"-p", strconv.Itoa(w.port), "-o", "BatchMode=yes", "-i", filepath.Join(w.dir, "client"),
			"-o", "UserKnownHostsFile=" + filepath.Join(w.dir, "known_hosts"), "-o", "IdentitiesOnly=yes",
			w.user + "@127.0.0.1", "gcn-heartbeat"}, cases[name]...)
		cmd := exec.Command("ssh", args...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if err == nil {
			t.Errorf("%s: accepted, replied %q", name, stdout.String())
			continue
		}
		if lines := strings.Count(strings.TrimSpace(stderr.String()), "\n") + 1; lines != 1 || !strings.HasPrefix(stderr.String(), "gcn-heartbeat: ") {
			t.Errorf("%s: want one 'gcn-heartbeat: ...' line, got %q", name, stderr.String())
		}
	}
	if after := treeHash(t, w.store); after != before {
		t.Fatal("a refused heartbeat changed the store")
	}
	// And a good one does register, so the refusals above were not all for
	// some other reason.
	out := run(t, "", "ssh", "-p", strconv.Itoa(w.port), "-o", "BatchMode=yes", "-i", filepath.Join(w.dir, "client"),
		"-o", "UserKnownHostsFile="+filepath.Join(w.dir, "known_hosts"), "-o", "IdentitiesOnly=yes",
		w.user+"@127.0.0.1", "gcn-heartbeat", "--repo", "chat.git", "--id", okID, "--port", "4000")
	if !strings.HasPrefix(out, "gcn1 chat.git 127.0.0.1:") {
		t.Fatalf("good heartbeat replied %q", out)
	}
}

// treeHash hashes every file's path, mode and content below dir (sockets by name).
func treeHash(t *testing.T, dir string) string {
	h := sha256.New()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, _ := d.Info()
		fmt.Fprintf(h, "%s %v\n", p, info.Mode())
		if d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			h.Write(b)
		}
		return nil
	})
	return fmt.Sprintf("%x", h.Sum(nil))
}

func mustRead(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// One daemon, one UDP socket, two clones of two repositories: both
// register, and each push fast-forwards its own clone.
func TestSSHOneDaemonFollowsTwoClones(t *testing.T) {
	w := newSSHWorld(t)
	notes := filepath.Join(w.home, "notes.git")
	w.asUser("git", "init", "-q", "--bare", "-b", "main", notes)
	run(t, "", w.bin, "install", "server", "--repo", notes, "--user", w.user, "--store", w.store,
		"--binary", w.bin, "--unit", filepath.Join(w.dir, "rendezvous.service"))
	// chat over ssh://…:PORT/abs/path; notes scp-like (home-relative), the
	// port in core.sshCommand as users of ~/.ssh/config-less setups do.
	notesSSH := w.sshCommand + " -p " + strconv.Itoa(w.port)
	clone := func(url, sshCmd, name string) string {
		dst := filepath.Join(w.dir, name)
		run(t, "", "git", "-c", "core.sshCommand="+sshCmd, "clone", "-q", url, dst)
		run(t, dst, "git", "config", "core.sshCommand", sshCmd)
		return dst
	}
	notesURL := fmt.Sprintf("%s@127.0.0.1:notes.git", w.user)
	chatPusher, notesPusher := clone(w.url(), w.sshCommand, "chat-pusher"), clone(notesURL, notesSSH, "notes-pusher")
	for _, p := range []string{chatPusher, notesPusher} {
		run(t, p, "git", "checkout", "-q", "-B", "main")
	}
	w.push(chatPusher, "c1")
	w.push(notesPusher, "n1")
	chat, notesClone := clone(w.url(), w.sshCommand, "chat"), clone(notesURL, notesSSH, "notes")
	xdg := filepath.Join(w.dir, "home", "state")
	d := start(t, filepath.Join(w.dir, "daemon.log"), []string{"XDG_STATE_HOME=" + xdg, "HOME=" + filepath.Dir(xdg)},
		"daemon", "--repo", chat, "--repo", notesClone, "--no-desktop")
	if !poll(20*time.Second, func() bool { return strings.Count(d.logText(), "registered over SSH") == 2 }) {
		t.Fatalf("both clones did not register:\n%s", d.logText())
	}
	time.Sleep(500 * time.Millisecond) // let the merged keepalive give both positions
	wantChat, wantNotes := w.push(chatPusher, "c2"), w.push(notesPusher, "n2")
	at := func(dir string) string { return strings.TrimSpace(run(t, dir, "git", "rev-parse", "HEAD")) }
	if !poll(20*time.Second, func() bool { return at(chat) == wantChat && at(notesClone) == wantNotes }) {
		t.Fatalf("chat at %s (want %s), notes at %s (want %s)\n%s", at(chat), wantChat, at(notesClone), wantNotes, d.logText())
	}
	if n := strings.Count(d.logText(), "daemon up"); n != 1 {
		t.Fatalf("%d daemons started", n)
	}
}

// blockUDPPort drops every UDP datagram to or from port on this host (an
// nftables table of the test's own), until unblock is called.
func blockUDPPort(t *testing.T, port string) (unblock func()) {
	return blockUDP(t, port, true)
}

// blockUDP drops UDP to the local port, and from it too when both: with
// only the one way, what the rendezvous there sends still arrives, as
// behind a firewall that drops a host's outgoing UDP once its mapping is
// made.
func blockUDP(t *testing.T, port string, both bool) (unblock func()) {
	t.Helper()
	table := fmt.Sprintf("gcnt%d", os.Getpid())
	unblock = func() { exec.Command("nft", "delete", "table", "inet", table).Run() }
	unblock()
	rules := [][]string{
		{"add", "table", "inet", table},
		{"add", "chain", "inet", table, "out", "{ type filter hook output priority 0; policy accept; }"},
		{"add", "rule", "inet", table, "out", "udp", "dport", port, "drop"},
	}
	if both {
		rules = append(rules, []string{"add", "rule", "inet", table, "out", "udp", "sport", port, "drop"})
	}
	for _, args := range rules {
		run(t, "", "nft", args...)
	}
	t.Cleanup(unblock)
	return unblock
}

// Only the daemon's datagrams to the rendezvous dropped, after it is on
// UDP: the rendezvous's notifications still arrive and the clone is
// fast-forwarded, but no ack gets through, and the rendezvous sends the
// event again. The daemon turns to SSH within half a minute (it used to
// take the rendezvous's client timeout, 5 minutes, and more), the next
// push comes over SSH, and once the rule is gone it moves back.
func TestSSHStreamWhenOnlyOutgoingUDPIsDropped(t *testing.T) {
	w := newSSHWorld(t)
	needRoot(t, "nft")
	pusher, follower := w.chat()
	state := filepath.Join(w.dir, "home", "state")
	d := w.startDaemon(follower, state)
	if !poll(20*time.Second, func() bool { return punch.HasPosition(filepath.Join(state, "gcn-punch")) }) {
		t.Fatalf("no position over UDP:\n%s", d.logText())
	}
	port := w.rendezvousPort()
	unblock := blockUDP(t, port, false)
	cut := time.Now()
	want := w.push(pusher, "its ack is dropped")
	if !poll(20*time.Second, func() bool { return strings.TrimSpace(run(t, follower, "git", "rev-parse", "HEAD")) == want }) {
		t.Fatalf("the notification did not come in over UDP:\n%s", d.logText())
	}
	if !poll(30*time.Second, func() bool { return strings.Contains(d.logText(), "notifications now come over SSH") }) {
		t.Fatalf("the daemon did not turn to SSH in 30 s with its outgoing UDP dropped:\n%s\nrendezvous:\n%s", d.logText(), w.rv.logText())
	}
	toSSH := time.Since(cut)
	want = w.push(pusher, "over ssh")
	if !poll(20*time.Second, func() bool { return strings.TrimSpace(run(t, follower, "git", "rev-parse", "HEAD")) == want }) {
		t.Fatalf("not fast-forwarded over the stream:\n%s", d.logText())
	}
	unblock()
	unblocked := time.Now()
	if !poll(60*time.Second, func() bool { return strings.Contains(d.logText(), "back on UDP") }) {
		t.Fatalf("the daemon did not move back to UDP:\n%s", d.logText())
	}
	t.Logf("outgoing UDP dropped: on SSH %v after the cut (a push in between); back on UDP %v after the rule went",
		toSSH.Round(time.Millisecond), time.Since(unblocked).Round(time.Second))
}

// UDP blocked (issue 12): the daemon, registered over SSH as usual, gets no
// answer over UDP and turns to a stream over the same SSH access within
// 8 s; a push fast-forwards the clone through it. The SSH session and
// sshd killed mid-stream, sshd restarted, a push before the daemon has a
// new stream: it opens one and catches up. When UDP passes again it
// moves back within a UDP retry (30 s) and closes the stream, and the next
// push comes over UDP. Real sshd, git-shell, gcn-heartbeat watch.
func TestSSHStreamWhenUDPIsBlocked(t *testing.T) {
	w := newSSHWorld(t)
	needRoot(t, "nft")
	pusher, follower := w.chat()
	port := w.rendezvousPort()
	unblock := blockUDPPort(t, port)
	start := time.Now()
	d := w.startDaemon(follower, filepath.Join(w.dir, "home", "state"))
	if !poll(30*time.Second, func() bool { return strings.Contains(d.logText(), "notifications now come over SSH") }) {
		t.Fatalf("the daemon did not turn to SSH:\n%s\nrendezvous:\n%s", d.logText(), w.rv.logText())
	}
	toSSH := time.Since(start)
	if !poll(20*time.Second, func() bool { return punch.HasPosition(filepath.Join(w.dir, "home", "state", "gcn-punch")) }) {
		t.Fatalf("no position over the stream:\n%s", d.logText())
	}
	pushed := time.Now()
	want := w.push(pusher, "over ssh")
	if !poll(20*time.Second, func() bool { return strings.TrimSpace(run(t, follower, "git", "rev-parse", "HEAD")) == want }) {
		t.Fatalf("not fast-forwarded over the stream:\n%s\nrendezvous:\n%s", d.logText(), w.rv.logText())
	}
	overSSH := time.Since(pushed)
	procs, pss, rss := sessionMemory(t, w.user, w.rv.cmd.Process.Pid)
	t.Logf("one stream holds %d processes on the server (sshd's privileged and user halves, git-shell's command): PSS %.1f MiB, RSS %.1f MiB",
		procs, float64(pss)/1024, float64(rss)/1024)
	// The SSH session and sshd itself killed mid-stream, sshd back a few
	// seconds later, and a push while the daemon has no stream yet (it
	// waits its retry): it opens a new stream and catches up.
	w.sshd.Process.Kill()
	w.sshd.Wait()
	exec.Command("pkill", "-KILL", "-f", "sshd.*: "+w.user).Run()
	time.Sleep(3 * time.Second)
	w.startSSHD()
	want = w.push(pusher, "while the daemon has no stream")
	if !poll(30*time.Second, func() bool { return strings.Count(d.logText(), "notifications now come over SSH") >= 2 }) {
		t.Fatalf("no new stream after the session was killed:\n%s", d.logText())
	}
	if !poll(20*time.Second, func() bool { return strings.TrimSpace(run(t, follower, "git", "rev-parse", "HEAD")) == want }) {
		t.Fatalf("not caught up on the new stream:\n%s", d.logText())
	}
	unblock()
	unblocked := time.Now()
	if !poll(60*time.Second, func() bool { return strings.Contains(d.logText(), "back on UDP") }) {
		t.Fatalf("the daemon did not move back to UDP:\n%s", d.logText())
	}
	back := time.Since(unblocked)
	want = w.push(pusher, "over udp")
	if !poll(20*time.Second, func() bool { return strings.TrimSpace(run(t, follower, "git", "rev-parse", "HEAD")) == want }) {
		t.Fatalf("not fast-forwarded after moving back:\n%s", d.logText())
	}
	t.Logf("UDP blocked: on SSH %v after start; push to fast-forward over SSH %v (git push and fetch included); back on UDP %v after UDP returned",
		toSSH.Round(time.Millisecond), overSSH.Round(time.Millisecond), back.Round(time.Second))
}

// sessionMemory sums the proportional and resident memory (KiB) of the
// processes one SSH session holds for user: sshd's halves (root's
// "[priv]" one too) and what runs as the user, but for the process not
// (the rendezvous, which runs as the same user).
func sessionMemory(t *testing.T, user string, not int) (procs int, pssKiB, rssKiB int) {
	out, _ := exec.Command("pgrep", "-f", "sshd.*: "+user).Output()
	mine, _ := exec.Command("pgrep", "-u", user).Output()
	seen := map[string]bool{strconv.Itoa(not): true}
	for _, pid := range strings.Fields(string(out) + " " + string(mine)) {
		if seen[pid] {
			continue
		}
		seen[pid] = true
		b, err := os.ReadFile(filepath.Join("/proc", pid, "smaps_rollup"))
		if err != nil {
			continue
		}
		procs++
		var pss, rss int
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			n, _ := strconv.Atoi(f[1])
			switch f[0] {
			case "Pss:":
				pss = n
			case "Rss:":
				rss = n
			}
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
		name := strings.ReplaceAll(string(cmdline), "\x00", " ")
		t.Logf("  %s: PSS %d KiB, RSS %d KiB", name[:min(len(name), 60)], pss, rss)
		pssKiB += pss
		rssKiB += rss
	}
	return procs, pssKiB, rssKiB
}
