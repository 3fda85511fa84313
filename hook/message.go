package hook

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gitchat/gcn-punch/internal/gitcmd"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// Reading chat messages costs one git process per ref update (about 2 ms
// here), so it is bounded: a chat push moves one branch, and a mirror push
// of hundreds of refs gets its events on time and messages for the first
// few only.
const (
	// maxMessages is how many ref updates of one push get a message.
	maxMessages = 8
	// messageBudget bounds all of a push's message reading, so that the
	// hook's whole run stays well under its 50 ms.
	messageBudget = 20 * time.Millisecond
	// maxCounted bounds the commits counted for one update: a push of an
	// old branch's whole history says "1000+" rather than walk it.
	maxCounted = 1001
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
// It returns what it read within messageBudget; nothing it fails to read
// costs more than the message.
func readMessages(gitDir string, ups []store.Update) []store.Message {
	if gitDir == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), messageBudget)
	defer cancel()
	var out []store.Message
	for _, u := range ups {
		if len(out) == maxMessages || ctx.Err() != nil {
			break
		}
		if isZero(u.New) {
			continue // a deletion adds nothing
		}
		args := []string{"-c", "safe.directory=*", "--git-dir", gitDir, "log", "--format=%an%x00%s", "--max-count=1001"}
		if isZero(u.Old) {
			args = append(args, u.New, "--not", "--exclude="+u.Ref, "--all", "--")
		} else {
			args = append(args, u.Old+".."+u.New, "--")
		}
		text, err := gitcmd.Output(ctx, "", args...)
		count := len(strings.Split(text, "\n"))
		if err == nil && text == "" {
			// A new ref on commits the repository had: its tip, none added.
			count = 0
			text, err = gitcmd.Output(ctx, "", "-c", "safe.directory=*", "--git-dir", gitDir, "log", "-1", "--format=%an%x00%s", u.New, "--")
		}
		if err != nil || text == "" {
			continue
		}
		line, _, _ := strings.Cut(text, "\n")
		author, subject, _ := strings.Cut(line, "\x00")
		out = append(out, store.Message{Old: u.Old, New: u.New, Chat: wire.Chat{
			Count:  uint32(min(count, maxCounted)),
			Author: wire.TrimText(author, wire.MaxAuthor), Subject: wire.TrimText(subject, wire.MaxSubject)}})
	}
	return out
}

func isZero(oid string) bool { return strings.Trim(oid, "0") == "" }
