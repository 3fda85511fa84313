package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sshClone is a git clone whose origin is an SSH URL (never contacted).
func sshClone(t *testing.T, origin string) string {
	t.Helper()
	dir := t.TempDir()
	for _, args := range [][]string{{"init", "-q", dir}, {"-C", dir, "remote", "add", "origin", origin}} {
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	return dir
}

// install client refuses what could never register: no directory, not a
// clone, an origin that is not SSH; it says what to do, and writes nothing.
func TestClientInstallRefusesWhatCannotRegister(t *testing.T) {
	cfg := t.TempDir()
	for _, c := range []struct{ repo, want string }{
		{filepath.Join(t.TempDir(), "missing"), "no such directory"},
		{t.TempDir(), "not a git clone"},
		{sshClone(t, "https://chat.example/chat.git"), "not SSH"},
		{sshClone(t, "/srv/git/chat.git"), "not SSH"},
	} {
		err := ClientInstall{Repo: c.repo, Binary: "/usr/bin/gcn-punch", ConfigHome: cfg}.Install()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("install client --repo %s: %v, want an error saying %q", c.repo, err, c.want)
		}
	}
	if entries, _ := os.ReadDir(cfg); len(entries) != 0 {
		t.Fatalf("a refused install wrote %v", entries)
	}
}

func TestClientInstallIdempotentAndUninstall(t *testing.T) {
	cfg := t.TempDir()
	a, b := sshClone(t, "git@chat.example:chat.git"), sshClone(t, "ssh://git@chat.example:2222/srv/chat.git")
	in := func(repo string) ClientInstall {
		return ClientInstall{Repo: repo, Binary: "/usr/bin/gcn-punch", ConfigHome: cfg}
	}
	unit := filepath.Join(cfg, "systemd", "user", "gcn-punch.service")
	if err := in(a).Install(); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(unit)
	in(a).Install()
	if again, _ := os.ReadFile(unit); string(again) != string(first) {
		t.Fatal("second install changed the unit")
	}
	in(b).Install()
	text, _ := os.ReadFile(unit)
	if !strings.Contains(string(text), `--repo "`+a+`" --repo "`+b+`"`) {
		t.Fatalf("unit does not follow both clones:\n%s", text)
	}
	in(a).Uninstall()
	text, _ = os.ReadFile(unit)
	if strings.Contains(string(text), `"`+a+`"`) || !strings.Contains(string(text), `"`+b+`"`) {
		t.Fatalf("after removing a:\n%s", text)
	}
	in(b).Uninstall()
	if _, err := os.Stat(unit); err == nil {
		t.Fatal("unit left after the last clone was removed")
	}
	// A unit that is not ours is never touched.
	os.MkdirAll(filepath.Dir(unit), 0o755)
	os.WriteFile(unit, []byte("[Service]\n"), 0o644)
	if err := in(a).Install(); err == nil {
		t.Fatal("overwrote a foreign unit")
	}
}

// install server warns when the binary it writes into the units and hooks
// is one the services may not see: under /tmp (PrivateTmp), or not
// reachable by other users; a binary in a public place gets no warning.
func TestBinaryWarnings(t *testing.T) {
	if w := BinaryWarnings("/bin/sh"); len(w) != 0 {
		t.Fatalf("/bin/sh: %q", w)
	}
	if w := BinaryWarnings("/tmp/gcn-punch-nowhere"); len(w) == 0 || !strings.Contains(w[0], "PrivateTmp") {
		t.Fatalf("a binary under /tmp: %q", w)
	}
	private := filepath.Join(t.TempDir(), "private")
	os.MkdirAll(private, 0o700)
	bin := filepath.Join(private, "gcn-punch")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o700)
	w := strings.Join(BinaryWarnings(bin), "\n")
	if !strings.Contains(w, "not executable by other users") || !strings.Contains(w, "cannot enter") {
		t.Fatalf("a binary only its owner can reach: %q", w)
	}
}
