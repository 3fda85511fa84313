package action

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/wire"
)

// commitAs makes a commit by author with subject in the pusher's clone.
func commitAs(t *testing.T, pusher, author, subject string) string {
	t.Helper()
	f, _ := os.OpenFile(filepath.Join(pusher, "f"), os.O_APPEND|os.O_WRONLY, 0o644)
	f.WriteString(subject + "\n")
	f.Close()
	tgit(t, pusher, "commit", "-qam", subject, "--author", author+" <"+author+"@example.invalid>")
	return tgit(t, pusher, "rev-parse", "HEAD")
}

// The message of a push comes from the clone once it has fetched: the tip
// commit's author and subject, and how many commits the push added, on an
// existing branch and on a new one; a deletion or a resync has none.
func TestReadMessage(t *testing.T) {
	_, clone, pusher := setupRepos(t)
	ctx, log := context.Background(), slog.New(slog.DiscardHandler)
	old := tgit(t, pusher, "rev-parse", "HEAD")
	commitAs(t, pusher, "bob", "morning")
	commitAs(t, pusher, "carol", "hi all")
	tip := commitAs(t, pusher, "alice", "lunch at 1?")
	tgit(t, pusher, "push", "-q", "origin", "main")
	ev := punch.Event{Repo: "chat.git", Ref: "refs/heads/main", Old: old, New: tip, Seq: 2}
	if err := FastForward(ctx, clone, ev, log); err != nil {
		t.Fatal(err)
	}
	if m, ok := ReadMessage(ctx, clone, ev); !ok || m != (Message{Author: "alice", Subject: "lunch at 1?", Count: 3}) {
		t.Fatalf("message %+v, %v", m, ok)
	}

	tgit(t, pusher, "checkout", "-q", "-b", "topic")
	commitAs(t, pusher, "dave", "a topic")
	topic := commitAs(t, pusher, "dave", "its second commit")
	tgit(t, pusher, "push", "-q", "origin", "topic")
	zero := strings.Repeat("0", 40)
	ev = punch.Event{Repo: "chat.git", Ref: "refs/heads/topic", Old: zero, New: topic, Seq: 3}
	if err := FastForward(ctx, clone, ev, log); err != nil {
		t.Fatal(err)
	}
	if m, ok := ReadMessage(ctx, clone, ev); !ok || m != (Message{Author: "dave", Subject: "its second commit", Count: 2}) {
		t.Fatalf("new branch: message %+v, %v", m, ok)
	}
	for _, ev := range []punch.Event{
		{Repo: "chat.git", Ref: "refs/heads/topic", Old: topic, New: zero},
		{Repo: "chat.git", Resync: true},
		{Repo: "chat.git", Ref: "refs/heads/main", Old: tip, New: strings.Repeat("e", 40)}, // not fetched
	} {
		if m, ok := ReadMessage(ctx, clone, ev); ok {
			t.Errorf("%+v: message %+v", ev, m)
		}
	}
}

// A message is one line of bounded, valid UTF-8: control characters are
// spaces, and a long subject is cut between characters with an ellipsis.
func TestCleanMessageField(t *testing.T) {
	long := strings.Repeat("é", 150) // 300 bytes
	got := wire.TrimText(long, wire.MaxSubject)
	if len(got) > wire.MaxSubject || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") || !strings.HasPrefix(got, "éé") {
		t.Fatalf("cut to %d bytes: %q", len(got), got)
	}
	if got := wire.TrimText("a\tb\x1b[31mc\xff", wire.MaxAuthor); got != "a b [31mc\uFFFD" {
		t.Fatalf("cleaned to %q", got)
	}
}

// An --exec program sees the message in GCN_AUTHOR, GCN_SUBJECT and
// GCN_COUNT when the daemon follows the repository with a clone.
func TestExecSeesTheMessage(t *testing.T) {
	_, clone, pusher := setupRepos(t)
	old := tgit(t, pusher, "rev-parse", "HEAD")
	commitAs(t, pusher, "bob", "first")
	tip := commitAs(t, pusher, "alice", "lunch at 1?")
	tgit(t, pusher, "push", "-q", "origin", "main")
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	prog := filepath.Join(dir, "prog")
	os.WriteFile(prog, []byte("#!/bin/sh\nenv | grep ^GCN_ | sort > \"$1\"\n"), 0o755)
	r := &Runner{Exec: []string{prog, out}, Clones: []string{clone}}
	r.Handle(context.Background(), punch.Event{Repo: "chat.git", Ref: "refs/heads/main", Old: old, New: tip, Seq: 2})
	b, _ := os.ReadFile(out)
	for _, want := range []string{"GCN_AUTHOR=alice", "GCN_SUBJECT=lunch at 1?", "GCN_COUNT=2", "GCN_SEQ=2"} {
		if !strings.Contains(string(b), want+"\n") {
			t.Errorf("environment lacks %q:\n%s", want, b)
		}
	}
}

// Without a clone, the message the notification carried reaches the
// program; a clone is not asked when the notification had one.
func TestExecSeesTheNotificationsMessage(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	prog := filepath.Join(dir, "prog")
	os.WriteFile(prog, []byte("#!/bin/sh\nenv | grep ^GCN_ | sort > \"$1\"\n"), 0o755)
	r := &Runner{Exec: []string{prog, out}}
	r.Handle(context.Background(), punch.Event{Repo: "chat.git", Ref: "refs/heads/main", Old: strings.Repeat("1", 40), New: strings.Repeat("2", 40),
		Seq: 7, Author: "carol", Subject: "on my way", Count: 3})
	b, _ := os.ReadFile(out)
	for _, want := range []string{"GCN_AUTHOR=carol", "GCN_SUBJECT=on my way", "GCN_COUNT=3", "GCN_SEQ=7"} {
		if !strings.Contains(string(b), want+"\n") {
			t.Errorf("environment lacks %q:\n%s", want, b)
		}
	}
}
