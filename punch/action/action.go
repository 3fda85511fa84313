// Package action runs what a daemon does on a notification: exec a program, fast-forward a clone, show a desktop notification.
package action

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gitchat/gcn-punch/internal/gitcmd"
	"github.com/gitchat/gcn-punch/punch"
)

// ExecTimeout bounds a user's --exec program, so that a hung program cannot
// stall every later notification forever.
const ExecTimeout = 10 * time.Minute

// slowExec is how long a run may take before the daemon logs it: every
// later notification waits for it, and a user who wonders why theirs came
// late should find the reason in the log.
const slowExec = 5 * time.Second

// gitTimeout bounds each git command; a fetch over a slow link is the longest.
const gitTimeout = 5 * time.Minute

// Runner holds the actions chosen on the command line.
type Runner struct {
	Exec    []string // program to run and its arguments (SplitCommand), or none
	Clones  []string // clones to fast-forward (a clone per followed repository)
	Desktop *Desktop // nil: no desktop notifications
	// CloneFor maps a repository id to the clone that follows it; when nil,
	// every clone is updated for every event.
	CloneFor func(repo string) []string
	Logger   *slog.Logger
}

// Handle runs every chosen action for one event, in order: pull first, so
// that the program and the notification see the new commits.
func (r *Runner) Handle(ctx context.Context, ev punch.Event) {
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clones := r.Clones
	if r.CloneFor != nil {
		clones = r.CloneFor(ev.Repo)
	}
	for _, c := range clones {
		if err := FastForward(ctx, c, ev, log); err != nil {
			log.Warn("fast-forward", "clone", c, "err", err)
		}
	}
	// The notification's own message first (the rendezvous had it from
	// the hook); a clone that fetched the commits can say it too.
	msg := EventMessage(ev)
	if msg == nil && len(clones) > 0 {
		if m, ok := ReadMessage(ctx, clones[0], ev); ok {
			msg = &m
		}
	}
	if len(r.Exec) > 0 {
		start := time.Now()
		err := Exec(ctx, r.Exec, ev, msg)
		took := time.Since(start).Round(time.Millisecond)
		switch {
		case err != nil:
			log.Warn("--exec program failed", "program", r.Exec[0], "seq", ev.Seq, "took", took, "err", err)
		case took >= slowExec:
			log.Warn("--exec program was slow: later notifications waited for it", "program", r.Exec[0], "seq", ev.Seq, "took", took)
		}
	}
	if r.Desktop != nil {
		if err := r.Desktop.Notify(ev, msg); err != nil {
			log.Debug("desktop notification", "err", err)
		}
	}
	log.Info("notified", "repo", ev.Repo, "ref", ev.Ref, "seq", ev.Seq, "resync", ev.Resync)
}

// Env is the environment a program sees for an event.
func Env(ev punch.Event) []string {
	kind := "push"
	if ev.Resync {
		kind = "resync"
	}
	return []string{
		"GCN_REPO=" + ev.Repo,
		"GCN_REF=" + ev.Ref,
		"GCN_OLD=" + ev.Old,
		"GCN_NEW=" + ev.New,
		"GCN_SEQ=" + strconv.FormatUint(ev.Seq, 10),
		"GCN_TIME_MS=" + strconv.FormatInt(ev.TimeMilli, 10),
		"GCN_EVENT=" + kind,
	}
}

// Exec runs argv (a program and its arguments) directly, never through a
// shell, with the event in GCN_* environment variables, and its message,
// when known (msg not nil), in GCN_AUTHOR, GCN_SUBJECT and GCN_COUNT. Its
// output goes to the daemon's stderr.
func Exec(ctx context.Context, argv []string, ev punch.Event, msg *Message) error {
	ctx, cancel := context.WithTimeout(ctx, ExecTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), Env(ev)...)
	if msg != nil {
		cmd.Env = append(cmd.Env, msg.env()...)
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// git runs git in clone, bounded by gitTimeout.
func git(ctx context.Context, clone string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, gitTimeout)
	defer cancel()
	return gitcmd.Output(ctx, clone, args...)
}

// FastForward fetches, then fast-forwards every local branch that tracks the
// pushed ref (all tracking branches on a resync). It never touches a dirty
// or diverged branch beyond the fetch, and says why.
func FastForward(ctx context.Context, clone string, ev punch.Event, log *slog.Logger) error {
	if _, err := git(ctx, clone, "fetch", "--quiet", "origin"); err != nil {
		return err
	}
	if !ev.Resync && !strings.HasPrefix(ev.Ref, "refs/heads/") {
		return nil // tags and other refs: the fetch is all there is to do
	}
	out, err := git(ctx, clone, "for-each-ref", "--format=%(refname)%00%(upstream)", "refs/heads/")
	if err != nil {
		return err
	}
	head, _ := git(ctx, clone, "symbolic-ref", "--quiet", "HEAD")
	want := "refs/remotes/origin/" + strings.TrimPrefix(ev.Ref, "refs/heads/")
	if out == "" && !ev.Resync && strings.Trim(ev.New, "0") != "" {
		// A clone of the repository while it was empty has no branch, and
		// its unborn one tracks nothing that exists: the first pushed
		// branch becomes its branch, checked out (nothing is there to lose;
		// git refuses if an untracked file is in the way). A deletion
		// gives it nothing to check out.
		return takeFirstBranch(ctx, clone, strings.TrimPrefix(ev.Ref, "refs/heads/"), want, log)
	}
	for _, line := range strings.Split(out, "\n") {
		local, upstream, ok := strings.Cut(line, "\x00")
		if !ok || upstream == "" || (!ev.Resync && upstream != want) {
			continue
		}
		if !ev.Resync && !strings.HasPrefix(upstream, "refs/remotes/origin/") {
			continue
		}
		if err := fastForwardBranch(ctx, clone, local, upstream, local == head, log); err != nil {
			log.Warn("not fast-forwarded", "clone", clone, "branch", local, "reason", err)
		}
	}
	return nil
}

// takeFirstBranch checks out branch, tracking upstream, in a clone that has
// no branch yet.
func takeFirstBranch(ctx context.Context, clone, branch, upstream string, log *slog.Logger) error {
	if _, err := git(ctx, clone, "rev-parse", "--verify", "--quiet", "HEAD"); err == nil {
		return nil // a detached HEAD on a commit: leave it as it is
	}
	if _, err := git(ctx, clone, "checkout", "--quiet", "-b", branch, "--track", upstream); err != nil {
		return fmt.Errorf("the clone has no branch yet, and checking out %s failed: %w", branch, err)
	}
	log.Info("the clone had no branch yet: checked out the pushed one", "clone", clone, "branch", branch)
	return nil
}

func fastForwardBranch(ctx context.Context, clone, local, upstream string, checkedOut bool, log *slog.Logger) error {
	oldRev, err := git(ctx, clone, "rev-parse", "--verify", "--end-of-options", local)
	if err != nil {
		return err
	}
	newRev, err := git(ctx, clone, "rev-parse", "--verify", "--end-of-options", upstream)
	if err != nil {
		return err
	}
	if oldRev == newRev {
		return nil
	}
	if _, err := git(ctx, clone, "merge-base", "--is-ancestor", oldRev, newRev); err != nil {
		return fmt.Errorf("diverged from %s: left as it is (only fetched)", upstream)
	}
	if !checkedOut {
		_, err := git(ctx, clone, "update-ref", "-m", "gcn-punch: fast-forward", local, newRev, oldRev)
		return err
	}
	dirty, err := git(ctx, clone, "status", "--porcelain", "--untracked-files=no")
	if err != nil {
		return err
	}
	if dirty != "" {
		return fmt.Errorf("work tree has uncommitted changes: left as it is (only fetched)")
	}
	if _, err := git(ctx, clone, "merge", "--ff-only", "--quiet", newRev); err != nil {
		return err
	}
	log.Info("fast-forwarded", "clone", clone, "branch", local, "to", newRev)
	return nil
}

// CloneIndex maps repository ids to the clones that follow them. It is
// filled from the clones' origin URLs and from SSH registrations.
type CloneIndex struct {
	mu     sync.Mutex
	all    []string
	byRepo map[string][]string
}

// NewCloneIndex indexes clones by their origin URL's last element.
func NewCloneIndex(ctx context.Context, clones []string) *CloneIndex {
	x := &CloneIndex{all: clones, byRepo: map[string][]string{}}
	for _, c := range clones {
		if id, err := punch.OriginRepoID(ctx, c); err == nil {
			x.Add(id, c)
		}
	}
	return x
}

// Add records that clone follows repo.
func (x *CloneIndex) Add(repo, clone string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !slices.Contains(x.byRepo[repo], clone) {
		x.byRepo[repo] = append(x.byRepo[repo], clone)
	}
}

// For returns the clones of repo, or every clone when none is known for it
// (an explicit --repo-id that differs from the URL's last element).
func (x *CloneIndex) For(repo string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if cs := x.byRepo[repo]; len(cs) > 0 {
		return cs
	}
	return x.all
}
