package action

import (
	"context"
	"strconv"
	"strings"

	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/wire"
)

// Message is what a chat user wants from a notification: who wrote the
// pushed tip commit, its subject line, and how many commits the push
// added ("alice: lunch at 1?", "+2 more"). It comes in the notification
// (the hook read it, the rendezvous sealed it to this daemon) or, from an
// older rendezvous or through a fan-out tree, from the daemon's clone once
// the fetch has brought the commits.
type Message struct {
	Author, Subject string
	Count           int // commits the push added; 0 when unknown
}

// EventMessage is the message the notification carried, or nil.
func EventMessage(ev punch.Event) *Message {
	if ev.Author == "" && ev.Subject == "" {
		return nil
	}
	return &Message{Author: ev.Author, Subject: ev.Subject, Count: ev.Count}
}

// ReadMessage reads an event's message from a clone that has fetched its
// commits. It reports false for a resync, a deletion, or a commit the
// clone does not have.
func ReadMessage(ctx context.Context, clone string, ev punch.Event) (Message, bool) {
	if ev.Resync || ev.New == "" || strings.Trim(ev.New, "0") == "" {
		return Message{}, false
	}
	out, err := git(ctx, clone, "log", "-1", "--format=%an%x00%s", ev.New, "--")
	if err != nil {
		return Message{}, false
	}
	author, subject, ok := strings.Cut(out, "\x00")
	if !ok {
		return Message{}, false
	}
	m := Message{Author: wire.TrimText(author, wire.MaxAuthor), Subject: wire.TrimText(subject, wire.MaxSubject)}
	var count string
	if strings.Trim(ev.Old, "0") == "" {
		// A new branch: the commits no other branch of origin has. (With
		// --remotes, --exclude patterns leave out "refs/remotes/".)
		branch := "origin/" + strings.TrimPrefix(ev.Ref, "refs/heads/")
		count, err = git(ctx, clone, "rev-list", "--count", ev.New, "--not", "--exclude="+branch, "--remotes=origin", "--")
	} else {
		count, err = git(ctx, clone, "rev-list", "--count", ev.Old+".."+ev.New, "--")
	}
	if err == nil {
		m.Count, _ = strconv.Atoi(count)
	}
	return m, true
}

// env is the message's part of a program's environment.
func (m Message) env() []string {
	out := []string{"GCN_AUTHOR=" + m.Author, "GCN_SUBJECT=" + m.Subject}
	if m.Count > 0 {
		out = append(out, "GCN_COUNT="+strconv.Itoa(m.Count))
	}
	return out
}
