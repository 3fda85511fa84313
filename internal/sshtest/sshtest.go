// Package sshtest sets up, for tests that run git over real SSH, a throwaway git-shell account with its keys and sshd's configuration.
package sshtest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
)

// Account is a git-shell user and the files sshd and ssh need for it, in Dir.
type Account struct {
	User, Home, Dir string
	UID, GID        int
}

// New makes a git-shell user named prefix and five digits, and host and
// client keys in dir, which it makes readable to that user (it runs the
// binary and reads the keys from there). The user and its processes go at
// the end of the test. Needs root.
func New(t testing.TB, prefix, dir string) *Account {
	t.Helper()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	a := &Account{User: fmt.Sprintf("%s%05d", prefix, rand.IntN(100000)), Dir: dir}
	exec.Command("userdel", "-r", a.User).Run()
	run("useradd", "-m", "-s", "/usr/bin/git-shell", a.User)
	t.Cleanup(func() { exec.Command("pkill", "-u", a.User).Run(); exec.Command("userdel", "-r", a.User).Run() })
	run("usermod", "-p", "*", a.User) // sshd without PAM refuses locked accounts
	u, err := user.Lookup(a.User)
	if err != nil {
		t.Fatal(err)
	}
	a.Home = u.HomeDir
	a.UID, _ = strconv.Atoi(u.Uid)
	a.GID, _ = strconv.Atoi(u.Gid)
	run("ssh-keygen", "-q", "-t", "ed25519", "-f", filepath.Join(dir, "hostkey"), "-N", "")
	run("ssh-keygen", "-q", "-t", "ed25519", "-f", filepath.Join(dir, "client"), "-N", "")
	pub, err := os.ReadFile(filepath.Join(dir, "client.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_"+a.User), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return a
}

// SSHDConfig writes Dir/sshd_config for sshd listening on listen
// ("host:port"): keys only, no PAM. It returns the file's path.
func (a *Account) SSHDConfig(t testing.TB, listen string) string {
	t.Helper()
	cfg := fmt.Sprintf("ListenAddress %s\nHostKey %s\nPidFile %s\nAuthorizedKeysFile %s\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
		listen, filepath.Join(a.Dir, "hostkey"), filepath.Join(a.Dir, "sshd.pid"), filepath.Join(a.Dir, "authorized_%u"))
	path := filepath.Join(a.Dir, "sshd_config")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll("/run/sshd", 0o755)
	return path
}

// SSHCommand writes a known_hosts file naming host as ssh names it
// ("198.18.0.1", or "[127.0.0.1]:2222") with the host key, and returns the
// ssh command with the client key that uses it: host key checking stays
// on, nothing is relaxed.
func (a *Account) SSHCommand(t testing.TB, host string) string {
	t.Helper()
	hostPub, err := os.ReadFile(filepath.Join(a.Dir, "hostkey.pub"))
	if err != nil {
		t.Fatal(err)
	}
	kh := filepath.Join(a.Dir, "known_hosts")
	if err := os.WriteFile(kh, fmt.Appendf(nil, "%s %s", host, hostPub), 0o644); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("ssh -i %s -o UserKnownHostsFile=%s -o IdentitiesOnly=yes -o ConnectTimeout=5", filepath.Join(a.Dir, "client"), kh)
}
