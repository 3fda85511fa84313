package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// `gcn-heartbeat watch` joins its stdin and stdout to the running
// rendezvous as a stream: the real binary, the real control socket. A
// daemon's keepalive framed on stdin is answered on stdout (Challenge,
// Pong), the answer to the Challenge validates the stream, and a push
// through the real hook arrives as a Notify frame. A repository the store
// does not serve gets one "error" line and no stream.
func TestE2EWatchStreamsToTheRendezvous(t *testing.T) {
	w := newWorld(t, true)
	st, err := store.Open(w.store)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Serve("chat.git", w.bare); err != nil {
		t.Fatal(err)
	}
	watch := func(repo string) (*exec.Cmd, *bufio.Reader, func([]byte)) {
		cmd := exec.Command(binary, "heartbeat", "watch", "--repo", repo)
		cmd.Env = append(os.Environ(), "GCN_STORE="+w.store)
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Every read below is bounded: a stream that goes quiet is ended.
		timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
		t.Cleanup(func() { timer.Stop(); in.Close(); cmd.Process.Kill(); cmd.Wait() })
		send := func(b []byte) {
			f, err := wire.AppendFrame(nil, b)
			if err != nil {
				t.Fatal(err)
			}
			in.Write(f)
		}
		return cmd, bufio.NewReader(out), send
	}

	_, r, _ := watch(filepath.Join(w.dir, "nothing.git"))
	if l, _ := r.ReadString('\n'); len(l) < 6 || l[:6] != "error " {
		t.Fatalf("an unserved repository got %q, want an error line", l)
	}

	_, r, send := watch(w.bare)
	if l, _ := r.ReadString('\n'); l != "ok\n" {
		t.Fatalf("watch answered %q", l)
	}
	srvPub, err := st.ServerPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := wire.GenerateKey()
	shared := wire.SharedKey(srvPub, priv)
	seal := func(m wire.Message) []byte {
		b, err := wire.Seal(nil, m, pub, &shared)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	buf := make([]byte, wire.MaxDatagram)
	recv := func() wire.Message {
		b, err := wire.ReadFrame(r, buf)
		if err != nil {
			t.Fatalf("reading a frame: %v", err)
		}
		_, m, err := wire.Open(b, &shared)
		if err != nil {
			t.Fatalf("opening a frame: %v", err)
		}
		return m
	}
	send(seal(&wire.Keepalive{Counter: 1, Subs: []wire.Sub{{RepoID: "chat.git"}}}))
	ch, ok := recv().(*wire.Challenge)
	if !ok {
		t.Fatal("no Challenge")
	}
	if _, ok := recv().(*wire.Pong); !ok {
		t.Fatal("no Pong")
	}
	send(seal(&wire.ChallengeReply{Cookie: ch.Cookie}))
	if _, ok := recv().(*wire.Validated); !ok {
		t.Fatal("no Validated")
	}
	w.push()
	got := false
	for range 10 {
		// Anything before the Notify (a Ping) is fine.
		if n, ok := recv().(*wire.Notify); ok {
			if n.Seq != 1 || n.RepoID != "chat.git" {
				t.Fatalf("notify %+v", n)
			}
			got = true
			break
		}
	}
	if !got {
		t.Fatal("no Notify among the first 10 frames after the push")
	}
	// The rendezvous down: the stream says so in its one line.
	w.rv.kill(syscall.SIGKILL)
	_, r, _ = watch(w.bare)
	if l, _ := r.ReadString('\n'); l != "error the rendezvous is not running\n" {
		t.Fatalf("with the rendezvous down, watch said %q", l)
	}
}
