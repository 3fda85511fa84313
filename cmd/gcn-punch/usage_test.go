package main

import (
	"bytes"
	"errors"
	"os/exec"
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
}

// --help prints the command's flags and exits 0.
func TestHelpExitsZero(t *testing.T) {
	code, out, errs := runCode(t, "", "status", "--help")
	if code != 0 || !strings.Contains(out+errs, "--store") {
		t.Fatalf("status --help: exit %d, output %q", code, out+errs)
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
