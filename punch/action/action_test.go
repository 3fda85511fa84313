package action

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gitchat/gcn-punch/punch"
)

func TestMain(m *testing.M) {
	os.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	os.Setenv("GIT_AUTHOR_NAME", "t")
	os.Setenv("GIT_AUTHOR_EMAIL", "t@example.invalid")
	os.Setenv("GIT_COMMITTER_NAME", "t")
	os.Setenv("GIT_COMMITTER_EMAIL", "t@example.invalid")
	os.Exit(m.Run())
}

// Notification fields reach the program as environment variables, never
// through a shell: a ref full of shell syntax runs nothing.
func TestExecPassesFieldsWithoutShell(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	prog := filepath.Join(dir, "prog")
	// The program itself is the user's; it only dumps its environment.
	os.WriteFile(prog, []byte("#!/bin/sh\nenv | grep ^GCN_ | sort > "+out+"\n"), 0o755)
	evil := "refs/heads/$(touch${IFS}" + filepath.Join(dir, "pwned") + ")`id`;x"
	ev := punch.Event{Repo: "chat.git", Ref: evil, Old: strings.Repeat("0", 40), New: strings.Repeat("a", 40), Seq: 7, TimeMilli: 123}
	if err := Exec(context.Background(), []string{prog}, ev, nil); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	for _, want := range []string{"GCN_REPO=chat.git", "GCN_REF=" + evil, "GCN_SEQ=7", "GCN_NEW=" + strings.Repeat("a", 40), "GCN_EVENT=push"} {
		if !strings.Contains(string(b), want+"\n") {
			t.Errorf("environment lacks %q:\n%s", want, b)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
		t.Fatal("a notification field was run by a shell")
	}
}

func tgit(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// server, a follower's clone, and a pusher's clone with one commit pushed.
func setupRepos(t *testing.T) (server, clone, pusher string) {
	d := t.TempDir()
	server, clone, pusher = filepath.Join(d, "chat.git"), filepath.Join(d, "clone"), filepath.Join(d, "pusher")
	exec.Command("git", "init", "-q", "--bare", "-b", "main", server).Run()
	exec.Command("git", "clone", "-q", server, pusher).Run()
	tgit(t, pusher, "checkout", "-q", "-b", "main")
	pushFirst(t, pusher)
	exec.Command("git", "clone", "-q", server, clone).Run()
	return
}

func pushCommit(t *testing.T, pusher, content string) string {
	os.WriteFile(filepath.Join(pusher, "f"), []byte(content), 0o644)
	tgit(t, pusher, "commit", "-qam", content)
	tgit(t, pusher, "push", "-q", "origin", "main")
	return tgit(t, pusher, "rev-parse", "HEAD")
}

func TestFastForwardCleanClone(t *testing.T) {
	_, clone, pusher := setupRepos(t)
	old := tgit(t, clone, "rev-parse", "HEAD")
	newRev := pushCommit(t, pusher, "2\n")
	ev := punch.Event{Repo: "chat.git", Ref: "refs/heads/main", Old: old, New: newRev, Seq: 2}
	if err := FastForward(context.Background(), clone, ev, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if got := tgit(t, clone, "rev-parse", "HEAD"); got != newRev {
		t.Fatalf("clone at %s, want %s", got, newRev)
	}
	if b, _ := os.ReadFile(filepath.Join(clone, "f")); string(b) != "2\n" {
		t.Fatalf("work tree not updated: %q", b)
	}
}

func TestFastForwardLeavesDirtyAndDivergedAlone(t *testing.T) {
	_, clone, pusher := setupRepos(t)
	// Dirty: fetched, not merged, the user's change kept.
	old := tgit(t, clone, "rev-parse", "HEAD")
	os.WriteFile(filepath.Join(clone, "f"), []byte("my edit\n"), 0o644)
	newRev := pushCommit(t, pusher, "2\n")
	ev := punch.Event{Repo: "chat.git", Ref: "refs/heads/main", Old: old, New: newRev, Seq: 2}
	FastForward(context.Background(), clone, ev, slog.New(slog.DiscardHandler))
	if got := tgit(t, clone, "rev-parse", "HEAD"); got != old {
		t.Fatal("a dirty work tree was moved")
	}
	if got := tgit(t, clone, "rev-parse", "origin/main"); got != newRev {
		t.Fatal("the fetch did not happen")
	}
	if b, _ := os.ReadFile(filepath.Join(clone, "f")); string(b) != "my edit\n" {
		t.Fatal("the user's edit was lost")
	}
	// Diverged: a local commit; left alone.
	tgit(t, clone, "commit", "-qam", "local")
	local := tgit(t, clone, "rev-parse", "HEAD")
	newRev = pushCommit(t, pusher, "3\n")
	FastForward(context.Background(), clone, punch.Event{Ref: "refs/heads/main", New: newRev}, slog.New(slog.DiscardHandler))
	if got := tgit(t, clone, "rev-parse", "HEAD"); got != local {
		t.Fatal("a diverged branch was moved")
	}
}

func TestFastForwardBranchNotCheckedOut(t *testing.T) {
	_, clone, pusher := setupRepos(t)
	tgit(t, pusher, "checkout", "-q", "-b", "dev")
	os.WriteFile(filepath.Join(pusher, "g"), []byte("dev\n"), 0o644)
	tgit(t, pusher, "add", "g")
	tgit(t, pusher, "commit", "-qm", "dev0")
	tgit(t, pusher, "push", "-q", "origin", "dev")
	tgit(t, clone, "fetch", "-q")
	tgit(t, clone, "branch", "-q", "--track", "dev", "origin/dev")
	os.WriteFile(filepath.Join(pusher, "g"), []byte("dev1\n"), 0o644)
	tgit(t, pusher, "commit", "-qam", "dev1")
	tgit(t, pusher, "push", "-q", "origin", "dev")
	want := tgit(t, pusher, "rev-parse", "HEAD")
	FastForward(context.Background(), clone, punch.Event{Ref: "refs/heads/dev", New: want}, slog.New(slog.DiscardHandler))
	if got := tgit(t, clone, "rev-parse", "refs/heads/dev"); got != want {
		t.Fatalf("dev at %s, want %s", got, want)
	}
	if tgit(t, clone, "symbolic-ref", "HEAD") != "refs/heads/main" {
		t.Fatal("checked-out branch changed")
	}
}

// A clone made while the repository was empty has no branch (its unborn
// one tracks nothing): the first push gives it the pushed branch, checked
// out, where it used to be fetched and left unseen.
func TestFastForwardEmptyCloneTakesThePushedBranch(t *testing.T) {
	d := t.TempDir()
	server, clone, pusher := filepath.Join(d, "chat.git"), filepath.Join(d, "clone"), filepath.Join(d, "pusher")
	exec.Command("git", "init", "-q", "--bare", "-b", "main", server).Run()
	exec.Command("git", "-c", "init.defaultBranch=master", "clone", "-q", server, clone).Run()
	exec.Command("git", "clone", "-q", server, pusher).Run()
	tgit(t, pusher, "checkout", "-q", "-b", "main")
	want := pushFirst(t, pusher)
	if err := FastForward(context.Background(), clone, punch.Event{Ref: "refs/heads/main", New: want}, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if got := tgit(t, clone, "rev-parse", "HEAD"); got != want {
		t.Fatalf("HEAD at %s, want %s", got, want)
	}
	if b := tgit(t, clone, "symbolic-ref", "HEAD"); b != "refs/heads/main" {
		t.Fatalf("checked out %s", b)
	}
	if b, err := os.ReadFile(filepath.Join(clone, "f")); err != nil || string(b) != "1\n" {
		t.Fatalf("work tree: %q, %v", b, err)
	}
	// A later push fast-forwards it as any tracking branch.
	next := pushCommit(t, pusher, "2\n")
	FastForward(context.Background(), clone, punch.Event{Ref: "refs/heads/main", New: next}, slog.New(slog.DiscardHandler))
	if got := tgit(t, clone, "rev-parse", "HEAD"); got != next {
		t.Fatalf("after the second push HEAD at %s, want %s", got, next)
	}
}

// pushFirst commits f = "1" in pusher and pushes main.
func pushFirst(t *testing.T, pusher string) string {
	os.WriteFile(filepath.Join(pusher, "f"), []byte("1\n"), 0o644)
	tgit(t, pusher, "add", "f")
	tgit(t, pusher, "commit", "-qm", "one")
	tgit(t, pusher, "push", "-q", "origin", "main")
	return tgit(t, pusher, "rev-parse", "HEAD")
}

func TestOriginRepoID(t *testing.T) {
	_, clone, _ := setupRepos(t)
	for url, want := range map[string]string{
		"git@example.invalid:team/chat.git":            "chat.git",
		"ssh://git@example.invalid:2222/srv/chat.git/": "chat.git",
		"/srv/git/chat": "chat",
	} {
		tgit(t, clone, "remote", "set-url", "origin", url)
		if got, err := punch.OriginRepoID(context.Background(), clone); err != nil || got != want {
			t.Errorf("%s: got %q %v, want %q", url, got, err, want)
		}
	}
}
