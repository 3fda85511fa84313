package action

import (
	"context"
	"strconv"
	"strings"

	"github.com/gitchat/gcn-punch/internal/gitcmd"
	"github.com/gitchat/gcn-punch/punch"
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
	if ev.Resync {
		return Message{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, gitTimeout)
	defer cancel()
	// A new branch: the commits no other branch of origin has. (With
	// --remotes, --exclude patterns leave out "refs/remotes/".)
	branch := "origin/" + strings.TrimPrefix(ev.Ref, "refs/heads/")
	c, err := gitcmd.PushMessage(ctx, []string{"-C", clone}, ev.Old, ev.New, []string{"--exclude=" + branch, "--remotes=origin"})
	if err != nil {
		return Message{}, false
	}
	return Message{Author: c.Author, Subject: c.Subject, Count: int(c.Count)}, true
}

// env is the message's part of a program's environment.
func (m Message) env() []string {
	out := []string{"GCN_AUTHOR=" + m.Author, "GCN_SUBJECT=" + m.Subject}
	if m.Count > 0 {
		out = append(out, "GCN_COUNT="+strconv.Itoa(m.Count))
	}
	return out
}
