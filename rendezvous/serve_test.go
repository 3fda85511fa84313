package rendezvous

import (
	"slices"
	"testing"
)

// --listen and --alt-listen take one address, or one per family; the
// alternate addresses go with the listen address of their family, and
// what cannot work is refused with a reason.
func TestFamilyPairs(t *testing.T) {
	for _, c := range []struct {
		listen, alt   string
		listens, alts []string
	}{
		{":3478", "", []string{":3478"}, []string{""}},
		{"[::]:3478", "", []string{"[::]:3478"}, []string{""}},
		{"198.18.0.10:3478", "198.18.0.11:3479", []string{"198.18.0.10:3478"}, []string{"198.18.0.11:3479"}},
		{"198.18.0.10:3478,[2001:2::10]:3478", "", []string{"198.18.0.10:3478", "[2001:2::10]:3478"}, []string{"", ""}},
		{"[2001:2::10]:3478,198.18.0.10:3478", "198.18.0.11:3479,[2001:2::11]:3479",
			[]string{"[2001:2::10]:3478", "198.18.0.10:3478"}, []string{"[2001:2::11]:3479", "198.18.0.11:3479"}},
		{"198.18.0.10:3478,[2001:2::10]:3478", "[2001:2::11]:3479", []string{"198.18.0.10:3478", "[2001:2::10]:3478"}, []string{"", "[2001:2::11]:3479"}},
	} {
		listens, alts, err := familyPairs(c.listen, c.alt)
		if err != nil || !slices.Equal(listens, c.listens) || !slices.Equal(alts, c.alts) {
			t.Errorf("%q, %q: %q, %q, %v; want %q, %q", c.listen, c.alt, listens, alts, err, c.listens, c.alts)
		}
	}
	for _, c := range [][2]string{
		{"198.18.0.10:3478,198.18.0.11:3478", ""},               // one family twice
		{"198.18.0.10:3478,[::]:3478", ""},                      // [::] is both families already
		{"chat.example:3478,[2001:2::10]:3478", ""},             // names cannot say their family
		{"198.18.0.10:3478", "198.18.0.11:3479,[2001:2::11]:1"}, // two alternates for one address
		{"198.18.0.10:3478,[2001:2::10]:3478", "198.18.0.11:3479,198.18.0.12:3479"},
		{"a:1,b:2,c:3", ""},
	} {
		if _, _, err := familyPairs(c[0], c[1]); err == nil {
			t.Errorf("--listen %q --alt-listen %q accepted", c[0], c[1])
		}
	}
}
