package store

import (
	"os"
	"strings"
	"testing"

	"github.com/gitchat/gcn-punch/wire"
)

func TestMessagesFollowedByTheReader(t *testing.T) {
	s, _ := Open(t.TempDir())
	var mr MessageReader
	if err := mr.Load(s.MessagesPath("chat.git")); err != nil {
		t.Fatalf("a missing file is no error: %v", err)
	}
	err := s.AppendMessages("chat.git", []Message{
		{Old: oid(1), New: oid(2), Chat: wire.Chat{Count: 2, Author: "alice", Subject: "lunch\tat 1?\nreally"}},
		{Old: oid(2), New: oid(3), Chat: wire.Chat{Author: "bob"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := mr.Load(s.MessagesPath("chat.git")); err != nil {
		t.Fatal(err)
	}
	c, ok := mr.For(oid(1), oid(2))
	if !ok || c.Author != "alice" || c.Subject != "lunch at 1? really" || c.Count != 2 {
		t.Fatalf("first message: %+v %v (tabs and line ends must become spaces)", c, ok)
	}
	if _, ok := mr.For(oid(9), oid(2)); ok {
		t.Fatal("a message for other object ids")
	}
	// A torn line waits; a damaged one is skipped; reading goes on after both.
	f, _ := os.OpenFile(s.MessagesPath("chat.git"), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("garbage line\n" + oid(3) + "\t" + oid(4) + "\t1\tcarol\thalf")
	f.Close()
	mr.Load(s.MessagesPath("chat.git"))
	if _, ok := mr.For(oid(3), oid(4)); ok {
		t.Fatal("a line without its end was taken")
	}
	f, _ = os.OpenFile(s.MessagesPath("chat.git"), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(" done\n")
	f.Close()
	mr.Load(s.MessagesPath("chat.git"))
	if c, ok := mr.For(oid(3), oid(4)); !ok || c.Subject != "half done" {
		t.Fatalf("completed line: %+v %v", c, ok)
	}
}

func TestMessagesFileRewrittenWhenLarge(t *testing.T) {
	s, _ := Open(t.TempDir())
	var mr MessageReader
	long := strings.Repeat("s", wire.MaxSubject)
	n, last := 0, int64(0)
	for {
		fi, err := os.Stat(s.MessagesPath("r"))
		if err == nil && fi.Size() < last {
			break // rewritten
		}
		if err == nil {
			last = fi.Size()
		}
		if n > 20000 {
			t.Fatal("the messages file never shrank")
		}
		n++
		if err := s.AppendMessages("r", []Message{{Old: oid(n), New: oid(n + 1), Chat: wire.Chat{Subject: long}}}); err != nil {
			t.Fatal(err)
		}
		if n%1000 == 0 {
			mr.Load(s.MessagesPath("r"))
		}
	}
	fi, _ := os.Stat(s.MessagesPath("r"))
	if fi.Size() > messagesMax {
		t.Fatalf("rewritten file still %d bytes", fi.Size())
	}
	// The reader notices the new file and finds the newest message in it;
	// it keeps at most messagesKept.
	if err := mr.Load(s.MessagesPath("r")); err != nil {
		t.Fatal(err)
	}
	if _, ok := mr.For(oid(n), oid(n+1)); !ok {
		t.Fatal("newest message not found after the rewrite")
	}
	if len(mr.byIDs) > messagesKept || len(mr.order) != len(mr.byIDs) {
		t.Fatalf("reader holds %d messages (%d in order), at most %d", len(mr.byIDs), len(mr.order), messagesKept)
	}
}
