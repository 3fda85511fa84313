package action

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestSplitCommand(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"notify-send", []string{"notify-send"}},
		{"  /usr/bin/notify-send  -u low\tgit ", []string{"/usr/bin/notify-send", "-u", "low", "git"}},
		{`say "new message" 'in chat'`, []string{"say", "new message", "in chat"}},
		{`prog "a \"quoted\" word" 'no \escape' back\ slash`, []string{"prog", `a "quoted" word`, `no \escape`, "back slash"}},
		{`prog "" ''`, []string{"prog", "", ""}},
		{`prog $GCN_REPO ; rm -rf ~ | x`, []string{"prog", "$GCN_REPO", ";", "rm", "-rf", "~", "|", "x"}},
		{`"/opt/my tools/notify" --json`, []string{"/opt/my tools/notify", "--json"}},
	} {
		got, err := SplitCommand(c.in)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("SplitCommand(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "   ", `prog "open`, `prog 'open`, `prog \`, "prog\narg", `"" arg`} {
		if got, err := SplitCommand(bad); !errors.Is(err, ErrCommand) {
			t.Errorf("SplitCommand(%q) = %q, %v; want ErrCommand", bad, got, err)
		}
	}
}

// FuzzSplitCommand: no input panics; what splits, quoted again, splits to
// the same words.
func FuzzSplitCommand(f *testing.F) {
	for _, s := range []string{"prog", `a "b c" 'd'`, `x\ y`, `"unclosed`, "", `'it''s'`, "a\tb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		words, err := SplitCommand(s)
		if err != nil {
			return
		}
		if len(words) == 0 || words[0] == "" {
			t.Fatalf("%q split into %q without an error", s, words)
		}
		again, err := SplitCommand(QuoteCommand(words))
		if err != nil || !slices.Equal(again, words) {
			t.Fatalf("%q: %q quoted as %q splits to %q, %v", s, words, QuoteCommand(words), again, err)
		}
		for _, w := range words {
			if strings.ContainsAny(w, "\n\r\x00") {
				t.Fatalf("%q: a control character in %q", s, w)
			}
		}
	})
}
