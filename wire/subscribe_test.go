package wire

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestMatchRef(t *testing.T) {
	cases := []struct {
		pattern, ref string
		want         bool
	}{
		{"refs/heads/main", "refs/heads/main", true},
		{"refs/heads/main", "refs/heads/main2", false},
		{"refs/heads", "refs/heads/main", true},   // a prefix up to a slash, as for-each-ref
		{"refs/heads/", "refs/heads/a/b", true},   // the same, with its slash
		{"refs/heads", "refs/headsx/main", false}, // not at a slash
		{"refs/heads/*", "refs/heads/main", true}, // * within one component
		{"refs/heads/*", "refs/heads/a/b", false}, // but not across a slash
		{"refs/heads/**", "refs/heads/a/b", true}, // ** across components
		{"refs/**/main", "refs/heads/main", true}, // ** in the middle
		{"refs/**/main", "refs/main", true},       // ** matches zero components
		{"refs/heads/rel-?", "refs/heads/rel-1", true},
		{"refs/heads/[ab]*", "refs/heads/bob", true},
		{"refs/heads/[ab]*", "refs/heads/carol", false},
		{"refs/tags/*", "refs/heads/main", false},
	}
	for _, c := range cases {
		if err := ValidRefPattern(c.pattern); err != nil {
			t.Fatalf("%q: %v", c.pattern, err)
		}
		if got := MatchRef(c.pattern, c.ref); got != c.want {
			t.Errorf("MatchRef(%q, %q) = %v, want %v", c.pattern, c.ref, got, c.want)
		}
	}
	if !MatchAny(nil, "refs/x/y") {
		t.Error("no patterns must match every ref")
	}
	if MatchAny([]string{"refs/tags/*"}, "refs/heads/main") || !MatchAny([]string{"refs/tags/*", "refs/heads/*"}, "refs/heads/main") {
		t.Error("MatchAny must match when any pattern does")
	}
}

func TestTrimText(t *testing.T) {
	cases := []struct {
		in   string
		max  int
		want string
	}{
		{"lunch at 1?", 200, "lunch at 1?"},
		{"a\tb\nc\x1b[31m", 200, "a b c [31m"},
		{"\xff\xfeok", 200, "\uFFFDok"},
		{"  padded  ", 200, "padded"},
		{"héllo", 2, "h"}, // never half a character
		{strings.Repeat("é", 150), 200, strings.Repeat("é", 98) + "…"},
	}
	for _, c := range cases {
		got := TrimText(c.in, c.max)
		if got != c.want || !utf8.ValidString(got) || len(got) > c.max {
			t.Errorf("TrimText(%q, %d) = %q, want %q", c.in, c.max, got, c.want)
		}
	}
}

// A notification with the longest ref that fits keeps fitting when its
// message is added: the message is shortened, the event never.
func TestFitMessage(t *testing.T) {
	n := Notify{Seq: 2, After: 1, RepoID: strings.Repeat("r", MaxRepoID), Ref: "refs/heads/" + strings.Repeat("x", 880), Old: oidA, New: oidB,
		WithMessage: true, Chat: Chat{Count: 1, Author: strings.Repeat("a", MaxAuthor), Subject: strings.Repeat("s", MaxSubject)}}
	if err := (&Notify{Seq: 1, RepoID: n.RepoID, Ref: n.Ref, Old: oidA, New: oidB}).Validate(); err != nil {
		t.Fatalf("the event alone must fit: %v", err)
	}
	n.FitMessage()
	if err := n.Validate(); err != nil {
		t.Fatalf("after FitMessage: %v", err)
	}
	if len(n.Subject) >= MaxSubject {
		t.Fatalf("subject not shortened: %d bytes", len(n.Subject))
	}
	if _, err := ParsePlaintext(n.AppendPlaintext(nil)); err != nil {
		t.Fatalf("fitted notification does not decode: %v", err)
	}
	short := Notify{Seq: 2, After: 1, RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB, WithMessage: true, Chat: Chat{Subject: "kept"}}
	short.FitMessage()
	if short.Subject != "kept" {
		t.Fatal("a message that fits must stay whole")
	}
}

func TestSubscribeDigestDiffers(t *testing.T) {
	a := Subscribe{Flags: SubscribeMessages, Repos: []RepoPrefs{{RepoID: "r", Refs: []string{"refs/heads/*"}}}}
	b := Subscribe{Flags: SubscribeMessages, Repos: []RepoPrefs{{RepoID: "r", Refs: []string{"refs/tags/*"}}}}
	if a.Digest() == b.Digest() || a.Digest() != a.Digest() {
		t.Fatal("digest must depend on the patterns and only on them")
	}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
}
