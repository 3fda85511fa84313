package gitcmd

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/gitchat/gcn-punch/wire"
)

// MaxCounted bounds the commits a push's message counts: a push of an old
// branch's whole history says "1000+" rather than walk all of it.
const MaxCounted = 1001

// ErrNoCommits is PushMessage's error for a deletion: it adds nothing.
var ErrNoCommits = errors.New("the update deletes the ref")

// PushMessage reads what the update old..new of a ref says to a chat user:
// the new tip's author name and subject, cleaned to fit a notification,
// and how many commits it added (at most MaxCounted). git reaches the
// repository with opts (its own options: "-C", DIR or "--git-dir", DIR).
// For a new ref (old all zeros) the commits added are those not reachable
// from notFrom (rev-list arguments, such as "--exclude=REF", "--all"); when
// there are none the tip's message comes with a count of 0. One git process
// for most updates, two for a new ref on old commits.
func PushMessage(ctx context.Context, opts []string, old, new string, notFrom []string) (wire.Chat, error) {
	if isZero(new) {
		return wire.Chat{}, ErrNoCommits
	}
	args := append(append([]string(nil), opts...), "log", "--format=%an%x00%s", "--max-count="+strconv.Itoa(MaxCounted))
	if isZero(old) {
		args = append(append(append(args, new, "--not"), notFrom...), "--")
	} else {
		args = append(args, old+".."+new, "--")
	}
	text, err := Output(ctx, "", args...)
	count := len(strings.Split(text, "\n"))
	if err == nil && text == "" {
		// A new ref on commits the repository had: its tip, none added.
		count = 0
		text, err = Output(ctx, "", append(append([]string(nil), opts...), "log", "-1", "--format=%an%x00%s", new, "--")...)
	}
	if err != nil {
		return wire.Chat{}, err
	}
	line, _, _ := strings.Cut(text, "\n")
	author, subject, ok := strings.Cut(line, "\x00")
	if !ok {
		return wire.Chat{}, errors.New("git log gave no author and subject")
	}
	return wire.Chat{Count: uint32(min(count, MaxCounted)),
		Author: wire.TrimText(author, wire.MaxAuthor), Subject: wire.TrimText(subject, wire.MaxSubject)}, nil
}

func isZero(oid string) bool { return strings.Trim(oid, "0") == "" }
