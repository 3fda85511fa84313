package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runCode runs the binary and returns its exit code, stdout and stderr.
func runCode(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errb.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	}
	t.Fatalf("%v: %v", args, err)
	return 0, "", ""
}

// A mistyped flag is named on stderr with the command's usage, exit 2;
// pflag's own error used to be swallowed, leaving exit 2 and silence.
func TestMistypedFlagIsNamed(t *testing.T) {
	code, out, errs := runCode(t, "", "status", "--josn")
	if code != 2 || !strings.Contains(errs, "--josn") || !strings.Contains(errs, "--store") || out != "" {
		t.Fatalf("status --josn: exit %d, stdout %q, stderr %q; want exit 2 naming the flag and showing the flags", code, out, errs)
	}
}

// The hook never fails a push: a mistyped flag is one line on stderr, exit 0.
func TestHookMistypedFlagExitsZeroWithOneLine(t *testing.T) {
	code, _, errs := runCode(t, "", "hook", "--bogus")
	if code != 0 || !strings.Contains(errs, "--bogus") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("hook --bogus: exit %d, stderr %q; want exit 0 and one line naming the flag", code, errs)
	}
	code, _, errs = runCode(t, "", "hook", "--message-time", "5s")
	if code != 0 || !strings.Contains(errs, "--message-time 5s: give 10ms to 1s") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("hook --message-time 5s: exit %d, stderr %q; want exit 0 and one line giving the range", code, errs)
	}
}

// --help prints the command's flags and exits 0.
func TestHelpExitsZero(t *testing.T) {
	code, out, errs := runCode(t, "", "status", "--help")
	if code != 0 || !strings.Contains(out+errs, "--store") {
		t.Fatalf("status --help: exit %d, output %q", code, out+errs)
	}
}

// gcn-punch --help lists every form of every command, the cluster and the
// configuration file included (they were in the README but not here).
func TestTopUsageListsEveryForm(t *testing.T) {
	code, out, _ := runCode(t, "", "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, form := range []string{"gcn-punch rendezvous", "gcn-punch hook", "gcn-punch daemon", "gcn-punch watch",
		"gcn-punch status --store", "gcn-punch status --state", "gcn-punch notify", "gcn-punch revoke", "gcn-punch unpin",
		"gcn-punch install server", "gcn-punch install client", "gcn-punch uninstall", "gcn-punch probe", "gcn-punch bench",
		"gcn-punch heartbeat --repo", "gcn-punch heartbeat watch", "gcn-punch version",
		"--cluster nats://", "--config FILE", "--tree", "--stats", "--refs PATTERN", "--no-peer", "--metrics ADDR"} {
		if !strings.Contains(out, form) {
			t.Errorf("the usage does not list %q", form)
		}
	}
}

// version and --version print the version, the Go release and the platform,
// and exit 0.
func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		code, out, errs := runCode(t, "", arg)
		if code != 0 || !strings.HasPrefix(out, "gcn-punch ") || !strings.Contains(out, "go1.") || strings.Count(out, "\n") != 1 || errs != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 0 and one line", arg, code, out, errs)
		}
	}
}

// A --keepalive outside what the daemon could learn (2 s to 2 min) is a
// usage error that says the range, exit 2, before anything starts.
func TestKeepaliveOutOfRangeIsAUsageError(t *testing.T) {
	for _, ka := range []string{"1s", "121s", "0s"} {
		code, _, errs := runCode(t, "", "daemon", "--server", "127.0.0.1:9", "--server-key", strings.Repeat("0", 64), "--repo-id", "x",
			"--state", t.TempDir(), "--keepalive", ka)
		if code != 2 || !strings.Contains(errs, "give 2s to 2m0s") {
			t.Errorf("--keepalive %s: exit %d, stderr %q; want exit 2 naming the range", ka, code, errs)
		}
	}
}

// A --refs pattern that is not a ref glob is a usage error that shows what
// one looks like; nine patterns are one too many.
func TestBadRefsPatternIsAUsageError(t *testing.T) {
	base := []string{"daemon", "--server", "127.0.0.1:9", "--server-key", strings.Repeat("0", 64), "--repo-id", "x", "--state", t.TempDir()}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--refs", "main"}, "must start with refs/"},
		{[]string{"--refs", "refs/heads/[main"}, "bad glob"},
		{strings.Fields(strings.Repeat("--refs refs/heads/a ", 9)), "at most 8"},
	} {
		code, _, errs := runCode(t, "", append(base, c.args...)...)
		if code != 2 || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 saying %q", c.args, code, errs, c.want)
		}
	}
}

// status --store on a directory that holds no store is an error that says
// so, and creates nothing: a mistyped path used to become a new, empty store.
func TestStatusOnMissingStoreCreatesNothing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-store")
	for _, args := range [][]string{{"status", "--store", missing}, {"status", "--store", missing, "--stats"}, {"status", "--store", missing, "--tree"}} {
		code, _, errs := runCode(t, "", args...)
		if code != 1 || !strings.Contains(errs, "no gcn-punch store in "+missing) {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 saying there is no store", args, code, errs)
		}
		if _, err := os.Stat(missing); !os.IsNotExist(err) {
			t.Fatalf("%v created %s", args, missing)
		}
	}
}

// --help exits 0 on every subcommand; install and uninstall with no side, or
// an unknown one, are usage errors, exit 2.
func TestEveryHelpExitsZeroAndMissingSubcommandTwo(t *testing.T) {
	for _, c := range []string{"rendezvous", "hook", "daemon", "watch", "status", "notify", "revoke", "unpin", "probe", "bench",
		"heartbeat", "heartbeat watch", "install server", "install client", "uninstall server", "uninstall client", "install", "uninstall"} {
		if code, out, errs := runCode(t, "", append(strings.Fields(c), "--help")...); code != 0 || !strings.Contains(out+errs, "usage") && !strings.Contains(out+errs, "--") {
			t.Errorf("%s --help: exit %d, output %q", c, code, out+errs)
		}
	}
	for _, args := range [][]string{{"install"}, {"uninstall"}, {"install", "bogus"}} {
		code, out, errs := runCode(t, "", args...)
		if code != 2 || !strings.Contains(errs, "server|client") || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and the usage on stderr", args, code, out, errs)
		}
		if len(args) > 1 && !strings.Contains(errs, `unknown subcommand "bogus"`) {
			t.Errorf("%v: stderr %q does not name the unknown subcommand", args, errs)
		}
	}
}

// A --lifetime-max under the first idle time the measurement waits is a
// usage error, exit 2, before anything is sent.
func TestProbeLifetimeMaxBelowItsFirstStepIsAUsageError(t *testing.T) {
	for _, d := range []string{"5s", "0s", "-1s"} {
		code, _, errs := runCode(t, "", "probe", "--server", "127.0.0.1:9", "--lifetime", "--lifetime-max", d)
		if code != 2 || !strings.Contains(errs, "give at least 10s") {
			t.Errorf("--lifetime-max %s: exit %d, stderr %q; want exit 2 naming the floor", d, code, errs)
		}
	}
}

// --exec is a command line, parsed without a shell: a program that does
// not exist, or a line that does not parse, is an error at start (exit 1,
// the reason named), before the daemon touches its state.
func TestDaemonExecCheckedAtStart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	key := strings.Repeat("ab", 32)
	for _, c := range []struct{ exec, want string }{
		{"/no/such/program --flag", `no program "/no/such/program"`},
		{"gcn-punch-no-such-program", `no program "gcn-punch-no-such-program"`},
		{`notify "unclosed`, "unclosed"},
	} {
		code, _, errs := runCode(t, "", "daemon", "--server", "127.0.0.1:9", "--server-key", key, "--repo-id", "chat.git",
			"--state", state, "--no-desktop", "--exec", c.exec)
		if code != 1 || !strings.Contains(errs, c.want) {
			t.Errorf("--exec %q: exit %d, stderr %q; want exit 1 and %q", c.exec, code, errs, c.want)
		}
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a daemon that refused to start made its state directory: %v", err)
	}
}

// cloneWithOrigin makes an empty git repository at dir whose origin is
// url, as a clone of it would be, and returns dir.
func cloneWithOrigin(t *testing.T, dir, url string) string {
	t.Helper()
	for _, args := range [][]string{{"init", "-q", dir}, {"-C", dir, "remote", "add", "origin", url}} {
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	return dir
}

// A --repo that can never register is an error at start with what to do,
// not a registration retried forever: a missing directory, a directory
// that is no clone, a clone whose origin is not SSH.
func TestDaemonRepoCheckedAtStart(t *testing.T) {
	dir := t.TempDir()
	https := cloneWithOrigin(t, filepath.Join(dir, "https"), "https://chat.example/chat.git")
	for _, c := range []struct{ repo, want string }{
		{filepath.Join(dir, "missing"), "no such directory"},
		{dir, "not a git clone"},
		{https, "is not SSH"},
	} {
		code, _, errs := runCode(t, "", "daemon", "--repo", c.repo, "--state", filepath.Join(dir, "state"), "--no-desktop")
		if code != 1 || !strings.Contains(errs, c.want) || !strings.Contains(errs, "--repo") {
			t.Errorf("daemon --repo %s: exit %d, stderr %q; want exit 1 saying %q", c.repo, code, errs, c.want)
		}
	}
}

// install client refuses an --exec whose program does not exist, as the
// daemon would at every start of the unit, and writes nothing.
func TestInstallClientChecksExec(t *testing.T) {
	dir := t.TempDir()
	clone := cloneWithOrigin(t, filepath.Join(dir, "clone"), "git@chat.example:chat.git")
	cmd := exec.Command(binary, "install", "client", "--repo", clone, "--exec", `gcn-punch-no-such-program "new message"`)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), `no program "gcn-punch-no-such-program"`) {
		t.Fatalf("install client with a missing --exec program: %v, %q; want exit 1 naming it", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, ".config")); !os.IsNotExist(err) {
		t.Fatalf("install client wrote under HOME: %v", err)
	}
}

// Every duration flag is checked: one out of its range is a usage error
// (exit 2) that names the flag and its range.
func TestDurationFlagsChecked(t *testing.T) {
	for _, c := range []struct {
		flag string
		args []string
	}{
		{"--window", []string{"bench", "--window", "0s", "--host-netns"}},
		{"--keepalive", []string{"bench", "loadgen", "--keepalive", "10ms", "--server", "127.0.0.1:9", "--echo"}},
		{"--keepalive", []string{"daemon", "--keepalive", "1s", "--repo", "."}},
		{"--lifetime-max", []string{"probe", "--lifetime-max", "1s"}},
	} {
		code, _, errs := runCode(t, "", c.args...)
		if code != 2 || !strings.Contains(errs, c.flag) || !strings.Contains(errs, "give") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 naming %s and its range", c.args, code, errs, c.flag)
		}
	}
}
