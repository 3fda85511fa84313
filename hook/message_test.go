package hook

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// gitIn runs git in dir with a fixed identity and returns its trimmed output.
func gitIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.email=a@example.invalid", "-c", "commit.gpgsign=false"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// The hook records, beside the events, the tip commit's author and subject
// and how many commits each update added; the rendezvous's reader finds
// them by the events' object ids.
func TestHookRecordsChatMessages(t *testing.T) {
	root := t.TempDir()
	bare := filepath.Join(root, "chat.git")
	work := filepath.Join(root, "work")
	gitIn(t, root, "init", "-q", "--bare", bare)
	gitIn(t, root, "init", "-q", "-b", "main", work)
	commit := func(author, msg string) string {
		gitIn(t, work, "-c", "user.name="+author, "commit", "-q", "--allow-empty", "-m", msg)
		return gitIn(t, work, "rev-parse", "HEAD")
	}
	first := commit("alice", "hello")
	commit("bob", "second")
	tip := commit("Ålice Ünicode", "lunch at 1?\n\nthe body is not the subject")
	gitIn(t, work, "push", "-q", bare, "main")
	gitIn(t, work, "push", "-q", bare, first+":refs/heads/old")

	st, _ := store.Open(filepath.Join(root, "store"))
	zero := strings.Repeat("0", 40)
	in := first + " " + tip + " refs/heads/main\n" + // two commits added
		zero + " " + first + " refs/heads/old\n" + // a new ref on a commit main has: none new
		first + " " + zero + " refs/heads/gone\n" // a deletion: no message
	res, err := Run(Options{StoreDir: st.Dir, GitDir: bare, Stdin: strings.NewReader(in), Stderr: &strings.Builder{},
		MessageBudget: time.Minute}) // the default 20 ms is a production bound; CI under -race can exceed it per git run
	if err != nil || len(res.Events) != 3 {
		t.Fatalf("run: %+v %v", res, err)
	}
	if res.Messages != 2 {
		t.Fatalf("%d messages recorded, want 2 (none for the deletion)", res.Messages)
	}
	var mr store.MessageReader
	if err := mr.Load(st.MessagesPath("chat.git")); err != nil {
		t.Fatal(err)
	}
	c, ok := mr.For(first, tip)
	if !ok || c.Author != "Ålice Ünicode" || c.Subject != "lunch at 1?" || c.Count != 2 {
		t.Fatalf("main's message: %+v %v", c, ok)
	}
	if c, ok := mr.For(zero, first); !ok || c.Author != "alice" || c.Count != 0 {
		t.Fatalf("new ref's message: %+v %v (no commit is new to the repository)", c, ok)
	}
	if _, ok := mr.For(first, zero); ok {
		t.Fatal("a deletion got a message")
	}
}

// Outside a repository (--repo-id given, as in tests and the demo) the hook
// reads no message and records the events all the same.
func TestHookWithoutRepositoryRecordsNoMessage(t *testing.T) {
	st, _ := store.Open(t.TempDir())
	t.Chdir(t.TempDir())
	res, err := Run(Options{StoreDir: st.Dir, RepoID: "chat.git", Stdin: strings.NewReader(strings.Repeat("0", 40) + " " + strings.Repeat("a", 40) + " refs/heads/main\n"), Stderr: &strings.Builder{}})
	if err != nil || len(res.Events) != 1 || res.Messages != 0 {
		t.Fatalf("%+v %v", res, err)
	}
}
