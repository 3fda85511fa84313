package punch

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

func TestParseRemote(t *testing.T) {
	cases := map[string]Remote{
		"git@example.invalid:chat.git":                {User: "git", Host: "example.invalid", Path: "chat.git"},
		"example.invalid:team/chat.git":               {Host: "example.invalid", Path: "team/chat.git"},
		"ssh://git@example.invalid/srv/chat.git":      {User: "git", Host: "example.invalid", Path: "/srv/chat.git"},
		"ssh://git@example.invalid:2222/srv/chat.git": {User: "git", Host: "example.invalid", Port: "2222", Path: "/srv/chat.git"},
		"ssh://example.invalid/~/chat.git":            {Host: "example.invalid", Path: "~/chat.git"},
		"ssh://git@[2001:db8::1]:2222/chat.git":       {User: "git", Host: "2001:db8::1", Port: "2222", Path: "/chat.git"},
	}
	for url, want := range cases {
		got, err := ParseRemote(url)
		if err != nil || got != want {
			t.Errorf("%s: got %+v %v, want %+v", url, got, err, want)
		}
	}
	if r, _ := ParseRemote("ssh://git@example.invalid:2222/x"); r.String() != "git@example.invalid:2222" {
		t.Errorf("pin name %q", r.String())
	}
	for _, bad := range []string{"https://example.invalid/chat.git", "/srv/git/chat.git", "./chat", "file:///x", "ssh://host", "-oProxyCommand=x:y", "ssh://h:99999/x", "h:path with space"} {
		if _, err := ParseRemote(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestPinRefusesChangedKey(t *testing.T) {
	conn, _ := udpconn.Listen("127.0.0.1:0", nil)
	defer conn.Close()
	dir := t.TempDir()
	d, err := New(Config{Conn: conn, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	k1, _, _ := wire.GenerateKey()
	k2, _, _ := wire.GenerateKey()
	if err := d.Pin("git@h:22", k1); err != nil {
		t.Fatal(err)
	}
	if err := d.Pin("git@h:22", k1); err != nil {
		t.Fatalf("same key refused: %v", err)
	}
	if err := d.Pin("git@h:22", k2); !errors.Is(err, ErrServerKeyChanged) {
		t.Fatalf("changed key: got %v", err)
	}
	// The pin survives a restart.
	d2, _ := New(Config{Conn: conn, StateDir: dir})
	if err := d2.Pin("git@h:22", k2); !errors.Is(err, ErrServerKeyChanged) {
		t.Fatalf("after restart: got %v", err)
	}
}

// A daemon proves its key only to a server whose key it pinned, and the
// server's side of the key pair accepts the proof for that registration.
func TestHeartbeatProofOnlyForPinnedServer(t *testing.T) {
	conn, _ := udpconn.Listen("127.0.0.1:0", nil)
	defer conn.Close()
	d, err := New(Config{Conn: conn, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if p := d.heartbeatProof("git@h:22", "chat.git", "4000"); p != "" {
		t.Fatalf("a proof for a server never pinned: %q", p)
	}
	serverPub, serverPriv, _ := wire.GenerateKey()
	if err := d.Pin("git@h:22", serverPub); err != nil {
		t.Fatal(err)
	}
	p := d.heartbeatProof("git@h:22", "chat.git", "4000")
	shared := wire.SharedKey(d.PublicKey(), serverPriv)
	if err := wire.VerifyHeartbeatProof(p, &shared, "chat.git", "4000", time.Now()); err != nil {
		t.Fatalf("the server refuses the daemon's proof: %v", err)
	}
}

// ssh's error text (lines ending in \r\n) becomes one line for the log.
func TestOneLine(t *testing.T) {
	in := "Warning: Permanently added 'h' (ED25519) to the list of known hosts.\r\ngit@h: Permission denied (publickey).\r\n"
	if got, want := oneLine(in), "Warning: Permanently added 'h' (ED25519) to the list of known hosts. | git@h: Permission denied (publickey)."; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}

// An alias from the user's ssh configuration resolves to the host name ssh
// connects to (ssh -G reads the configuration and connects nowhere).
func TestSSHHostnameFollowsTheConfig(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Fatalf("ssh is needed: %v", err)
	}
	config := filepath.Join(t.TempDir(), "config") // as ~/.ssh/config, which ssh finds through the password database
	os.WriteFile(config, []byte("Host chat\n  HostName chat.example.org\n"), 0o600)
	if got := sshHostname(t.Context(), "chat", "-F", config); got != "chat.example.org" {
		t.Fatalf("alias chat: %q", got)
	}
	if got := sshHostname(t.Context(), "other.example", "-F", config); got != "other.example" {
		t.Fatalf("a plain name: %q", got)
	}
}
