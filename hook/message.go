package hook

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/gitchat/gcn-punch/internal/gitcmd"
	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// Reading chat messages costs one git process per ref update (about 2 ms
// here), so it is bounded: a chat push moves one branch, and a mirror push
// of hundreds of refs gets its events on time and messages for the first
// few only.
const (
	// maxMessages is how many ref updates of one push get a message.
	maxMessages = 8
	// DefaultMessageBudget bounds all of a push's message reading, so that
	// the hook's whole run stays well under its 50 ms (one read takes
	// about 4 ms on an idle server; hook --message-time raises it).
	DefaultMessageBudget = 20 * time.Millisecond
)

// gitDirOf is the repository the hook runs in, or "" outside one.
func gitDirOf(gitDir string) string {
	if gitDir == "" {
		gitDir = os.Getenv("GIT_DIR")
	}
	if gitDir == "" {
		gitDir = "."
	}
	abs, err := filepath.Abs(gitDir)
	if err != nil || !isGitDir(abs) {
		return ""
	}
	return abs
}

// readMessages reads, for each update that adds commits, the tip commit's
// author name and subject and how many commits it added (post-receive runs
// after the refs moved, so a new ref counts the commits no other ref has).
// It returns what it read within budget; nothing it fails to read
// costs more than the message.
func readMessages(gitDir string, ups []store.Update, budget time.Duration) []store.Message {
	if gitDir == "" {
		return nil
	}
	if budget <= 0 {
		budget = DefaultMessageBudget
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	var out []store.Message
	for _, u := range ups {
		if len(out) == maxMessages || ctx.Err() != nil {
			break
		}
		// post-receive runs after the refs moved: a new ref's commits are
		// those no other ref has.
		c, err := gitcmd.PushMessage(ctx, []string{"-c", "safe.directory=*", "--git-dir", gitDir}, u.Old, u.New, []string{"--exclude=" + u.Ref, "--all"})
		if err != nil {
			continue // a deletion, or git failed: the event goes without
		}
		out = append(out, store.Message{Old: u.Old, New: u.New, Chat: c})
	}
	return out
}
