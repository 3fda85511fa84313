package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A request line is answered; a second server on a live socket is refused;
// a socket left by a dead server is taken over.
func TestServeDialAndOneServerPerSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // the file stays, nobody answers: a killed server's leftover
	l, err := Listen(path)
	if err != nil {
		t.Fatalf("stale socket not taken over: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Serve(ctx, l, slog.New(slog.DiscardHandler), func(w io.Writer, cmd, arg string) { fmt.Fprintf(w, "%s=%s\n", cmd, arg) })
		close(done)
	}()
	if reply, err := Dial(path, "poke chat.git", time.Second); err != nil || reply != "poke=chat.git\n" {
		t.Fatalf("reply %q %v", reply, err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("a second server on a live socket: %v", err)
	}
	cancel()
	l.Close()
	<-done
}

// A socket nobody serves is ErrNotRunning, and NotRunning says it in the
// caller's words while staying that error.
func TestNotRunning(t *testing.T) {
	err := AskJSON(filepath.Join(t.TempDir(), "none.sock"), "status", time.Second, &struct{}{})
	if !errors.Is(err, ErrNotRunning) {
		t.Fatalf("%v", err)
	}
	err = NotRunning("no daemon is running on /x: start it")
	if !errors.Is(err, ErrNotRunning) || err.Error() != "no daemon is running on /x: start it" {
		t.Fatalf("%v", err)
	}
}
