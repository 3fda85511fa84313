package punch

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// OpenStream runs the clone's ssh command with gcn-heartbeat watch and its
// arguments (never through the command's text), and takes the session only
// on "ok": a refusal is an error that carries the server's one line. A fake
// ssh stands in for the real one (the real one is tested end to end).
func TestOpenStreamTakesOkAndReportsARefusal(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "args")
	fake := filepath.Join(dir, "fake-ssh")
	os.WriteFile(fake, []byte("#!/bin/sh\nprintf '%s\\n' \"$@\" > "+argsFile+"\nprintf '%s\\n' \"$FAKE_REPLY\"\nexec cat\n"), 0o755)
	t.Setenv("GIT_SSH_COMMAND", fake)
	rem := Remote{User: "git", Host: "example.invalid", Port: "2222", Path: "/srv/chat.git"}

	t.Setenv("FAKE_REPLY", "error too many streams: this server accepts at most 64; it serves over UDP, or try again later")
	if _, err := OpenStream(context.Background(), dir, rem); err == nil || !strings.Contains(err.Error(), "refused: too many streams: this server accepts at most 64") {
		t.Fatalf("a refusal gave %v", err)
	}
	args, _ := os.ReadFile(argsFile)
	if got := strings.Fields(string(args)); strings.Join(got, " ") != "-o BatchMode=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=3 -p 2222 git@example.invalid gcn-heartbeat watch --repo /srv/chat.git" {
		t.Fatalf("ssh was run with %q", got)
	}

	t.Setenv("FAKE_REPLY", "ok")
	s, err := OpenStream(context.Background(), dir, rem)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The fake echoes what it reads: the stream is the session's stdin and stdout.
	if _, err := s.Write([]byte("frame\n")); err != nil {
		t.Fatal(err)
	}
	if l, _ := bufio.NewReader(s).ReadString('\n'); l != "frame\n" {
		t.Fatalf("the session echoed %q", l)
	}
}
