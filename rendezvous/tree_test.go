package rendezvous

import (
	"math"
	"math/rand/v2"
	"testing"
)

// checkTree verifies the tree's invariants and returns its members.
func checkTree(t *testing.T, tr *tree) map[*tnode]bool {
	t.Helper()
	seen := map[*tnode]bool{}
	tr.walk(func(n *tnode) {
		if seen[n] {
			t.Fatal("a member appears twice")
		}
		seen[n] = true
		if n.su == nil {
			t.Fatal("a removed member is still in the tree")
		}
		want := 0
		if n.parent != nil {
			want = n.parent.depth + 1
		}
		if n.depth != want {
			t.Fatalf("depth %d, want %d", n.depth, want)
		}
		if len(n.children) > tr.arity || (n.leaf && len(n.children) > 0 && tr.sameSite == nil) {
			t.Fatalf("a member with %d children (leaf %v, arity %d)", len(n.children), n.leaf, tr.arity)
		}
		for _, c := range n.children {
			if c.parent != n {
				t.Fatal("a child does not point at its parent")
			}
		}
	})
	if len(seen) != tr.size {
		t.Fatalf("%d members reachable, size says %d", len(seen), tr.size)
	}
	return seen
}

// The tree fills level by level: 1000 members with arity 3 are 7 levels
// deep at most (3+9+...+729 = 1092), and no member has more than 3 children.
func TestTreeFillsShallowestFirst(t *testing.T) {
	tr := newTree(3)
	for range 1000 {
		tr.insert(&sub{}, false)
	}
	checkTree(t, tr)
	if h, most := tr.height(), int(math.Ceil(math.Log(1000*2/3+1)/math.Log(3))); h > most {
		t.Fatalf("height %d, want at most %d", h, most)
	}
}

// Leaves never get children; when every member is a leaf or full, the
// rendezvous takes more than arity children itself.
func TestTreeLeavesAndOverflow(t *testing.T) {
	tr := newTree(2)
	for i := range 50 {
		tr.insert(&sub{}, i%3 != 0) // two in three are leaves
	}
	checkTree(t, tr)
	all := newTree(2)
	for range 5 {
		all.insert(&sub{}, true)
	}
	checkTree(t, all)
	if len(all.roots) != 5 {
		t.Fatalf("%d roots, want all 5 leaves served by the rendezvous", len(all.roots))
	}
	// A member that may forward adopts the rendezvous's extra children.
	n, adopted := all.insert(&sub{}, false)
	checkTree(t, all)
	if len(adopted) != 2 || len(n.children) != 2 || len(all.roots) != 4 {
		t.Fatalf("adopted %d, has %d children, rendezvous has %d; want 2, 2, 4", len(adopted), len(n.children), len(all.roots))
	}
}

// Removing a member moves only its children (each with its subtree intact);
// after removing 30% of the interior members, in random order, the tree
// still holds every other member, within its invariants.
func TestTreeChurnMovesOnlyOrphans(t *testing.T) {
	tr := newTree(3)
	var nodes []*tnode
	for range 300 {
		n, _ := tr.insert(&sub{}, false)
		nodes = append(nodes, n)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var interior []*tnode
	for _, n := range nodes {
		if len(n.children) > 0 {
			interior = append(interior, n)
		}
	}
	rng.Shuffle(len(interior), func(i, j int) { interior[i], interior[j] = interior[j], interior[i] })
	gone := map[*tnode]bool{}
	for _, n := range interior[:len(interior)*3/10] {
		before := map[*tnode]*tnode{}
		grand := map[*tnode][]*tnode{}
		for _, m := range nodes {
			if !gone[m] && m != n {
				before[m] = m.parent
			}
		}
		for _, c := range n.children {
			grand[c] = append([]*tnode(nil), c.children...)
		}
		moved := tr.remove(n)
		gone[n] = true
		if len(moved) != len(grand) {
			t.Fatalf("remove returned %d moved, the member had %d children", len(moved), len(grand))
		}
		for m, p := range before {
			if _, isOrphan := grand[m]; isOrphan {
				continue
			}
			if m.parent != p && !(p == nil || p == n) {
				t.Fatalf("a member that was not a child of the removed one changed parent")
			}
		}
		for c, kids := range grand {
			if len(c.children) < len(kids) {
				t.Fatal("a moved subtree lost children")
			}
		}
		checkTree(t, tr)
	}
	if tr.size != 300-len(gone) {
		t.Fatalf("size %d, want %d", tr.size, 300-len(gone))
	}
	// Moved subtrees keep their shape, so churn may deepen the tree, but
	// within twice the height of a full one (6 for 300 at arity 3).
	if h := tr.height(); h > 12 {
		t.Fatalf("height %d after churn", h)
	}
}

// A member whose path to its parent failed moves elsewhere, never back under
// the same parent; with nowhere else, the rendezvous serves it.
func TestTreeMoveAvoidsFailedParent(t *testing.T) {
	tr := newTree(2)
	var nodes []*tnode
	for range 7 {
		n, _ := tr.insert(&sub{}, false)
		nodes = append(nodes, n)
	}
	n := nodes[6] // depth 1 or deeper
	old := n.parent
	if old == nil {
		t.Fatal("the seventh member should have a parent")
	}
	tr.move(n)
	if n.parent == old {
		t.Fatal("moved back under the parent it could not reach")
	}
	checkTree(t, tr)
	two := newTree(1)
	a, _ := two.insert(&sub{}, false)
	b, _ := two.insert(&sub{}, false)
	if b.parent != a {
		t.Fatal("the second member should hang under the first")
	}
	two.move(b)
	if b.parent != nil {
		t.Fatal("with no other place, the rendezvous must take the member")
	}
	checkTree(t, two)
}

// A child that can only hang under some parents (a symmetric NAT under a
// parent that filters by port) goes to the shallowest one that fits, or to
// the rendezvous when none does.
func TestTreePlacementHonoursReach(t *testing.T) {
	tr := newTree(2)
	strict := map[*tnode]bool{}
	picky := map[*tnode]bool{}
	tr.canReach = func(p, c *tnode) bool { return !picky[c] || !strict[p] }
	a, _ := tr.insert(&sub{}, false)
	b, _ := tr.insert(&sub{}, false)
	strict[a] = true // a filters by port: no picky child under it
	c := &tnode{su: &sub{}, leaf: true}
	picky[c] = true
	p := tr.slot(c)
	if p != b {
		t.Fatalf("picky child placed under %p, want the reachable parent %p", p, b)
	}
	strict[b] = true
	if p := tr.slot(c); p != nil {
		t.Fatal("with no reachable parent the rendezvous must take the child")
	}
}

// BenchmarkTreeInsert100k builds a 100k-member tree of arity 3: the cost of
// forming a large repository's tree, which must grow with N, not N².
func BenchmarkTreeInsert100k(b *testing.B) {
	for b.Loop() {
		tr := newTree(3)
		for range 100000 {
			tr.insert(&sub{}, false)
		}
	}
}

// A tree sends signed messages (Forward 0x16) only while none of its
// members is an old reader: the count follows joins, leaves and Subscribes.
func TestTreeCountsOldReaders(t *testing.T) {
	tr := newTree(2)
	newer := &client{prefs: &prefs{messages: true}}
	older := &client{}
	a, _ := tr.insert(&sub{c: newer}, false)
	if !tr.signedMessages() {
		t.Fatal("a tree of new readers must send messages")
	}
	b, _ := tr.insert(&sub{c: older}, false)
	if tr.signedMessages() {
		t.Fatal("an old reader joined: messages must stop")
	}
	tr.setOldReader(b, false) // its Subscribe arrived
	tr.setOldReader(b, false) // twice changes nothing
	if !tr.signedMessages() || tr.oldReaders != 0 {
		t.Fatalf("after the old reader subscribed: %d old readers", tr.oldReaders)
	}
	tr.setOldReader(a, true)
	tr.remove(a)
	if !tr.signedMessages() || tr.oldReaders != 0 {
		t.Fatalf("after the old reader left: %d old readers", tr.oldReaders)
	}
	checkTree(t, tr)
}
