package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A configuration file sets the flags the command line leaves alone: its
// keys are the long flag names, lists fill repeatable flags, and the
// command line wins. Mistakes name the file and the key.
func TestApplyConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "daemon.toml")
	os.WriteFile(path, []byte(`# the daemon's settings
server = "chat.example:3478"
server-key = "@/etc/gcn-punch/server.pub"
repo-id = ["chat.git", "team/notes.git"]
keepalive = "40s"
no-peer = true
exec = "notify-send 'new message'"
`), 0o644)
	fs := newFlags("daemon")
	server := fs.String("server", "", "")
	key := fs.String("server-key", "", "")
	repos := fs.StringArray("repo-id", nil, "")
	keepalive := fs.Duration("keepalive", 25*time.Second, "")
	noPeer := fs.Bool("no-peer", false, "")
	program := fs.String("exec", "", "")
	config := configFlag(fs, path)
	if err := fs.Parse([]string{"--server", "other.example:3478"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfig(fs, *config); err != nil {
		t.Fatal(err)
	}
	if *server != "other.example:3478" || *key != "@/etc/gcn-punch/server.pub" || !slices.Equal(*repos, []string{"chat.git", "team/notes.git"}) ||
		*keepalive != 40*time.Second || !*noPeer || *program != "notify-send 'new message'" {
		t.Fatalf("server %q key %q repos %q keepalive %v no-peer %v exec %q", *server, *key, *repos, *keepalive, *noPeer, *program)
	}
	if !fs.Changed("keepalive") {
		t.Fatal("a setting from the file does not count as given: range checks would skip it")
	}

	for _, c := range []struct{ text, want string }{
		{`servr = "x"`, `unknown setting "servr"`},
		{`keepalive = "soon"`, "keepalive"},
		{`server = ["a", "b"]`, "takes one value"},
		{`server = "unterminated`, "daemon.toml"},
		{`[section]` + "\nx = 1", `unknown setting "section"`},
	} {
		os.WriteFile(path, []byte(c.text), 0o644)
		fs := newFlags("daemon")
		fs.String("server", "", "")
		fs.Duration("keepalive", 0, "")
		config := configFlag(fs, path)
		fs.Parse(nil)
		if err := applyConfig(fs, *config); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error naming %q", c.text, err, c.want)
		}
	}

	// A default file that does not exist is no error; a named one is.
	fs = newFlags("daemon")
	config = configFlag(fs, filepath.Join(dir, "none.toml"))
	fs.Parse(nil)
	if err := applyConfig(fs, *config); err != nil {
		t.Fatalf("missing default file: %v", err)
	}
	fs = newFlags("daemon")
	config = configFlag(fs, "")
	fs.Parse([]string{"--config", filepath.Join(dir, "none.toml")})
	if err := applyConfig(fs, *config); err == nil {
		t.Fatal("a --config file that does not exist was taken as empty")
	}
}
