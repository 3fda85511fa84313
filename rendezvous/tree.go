package rendezvous

// One repository's fan-out tree. The rendezvous is the root; its children
// (at most arity of them) get each event from it, and every member forwards
// to at most arity children of its own. A member is placed at the shallowest
// free place, so the depth stays about log_arity(N); a member that must not
// forward (a symmetric NAT, or no path to children) is a leaf. A leaving
// member's children move, each with its whole subtree, to the shallowest free
// places: nothing else moves, so churn never reshapes the tree.

// tnode is one member of a tree.
type tnode struct {
	su       *sub
	parent   *tnode // nil: a child of the rendezvous
	children []*tnode
	depth    int   // 0 for the rendezvous's children
	leaf     bool  // never given children
	edge     *edge // to its parent; nil for the rendezvous's children
	failed   int   // edges to a parent on which no path formed
	// open is whether the node sits in its tree's open queue.
	open bool
	// oldReader: its client did not say that it reads signed messages
	// (Forward 0x16); while the tree has one, events go as plain Forward.
	oldReader bool
}

// tree is the fan-out tree of one repository. Called with the server's mu held.
type tree struct {
	arity int
	roots []*tnode
	size  int
	// oldReaders counts the members with oldReader set.
	oldReaders int
	// openAt[d] lists members at depth d that may have room for a child,
	// oldest first; entries that filled up or left are skipped lazily.
	openAt [][]*tnode
	// canReach, when set, says whether a child can have that parent (its
	// NAT must let the child's checks in); nil: any.
	canReach func(parent, child *tnode) bool
	// sameSite, when set, says whether two members sit behind the same NAT,
	// where they reach each other on their own network whatever the NAT
	// does: a leaf may take such a child when nothing else can.
	sameSite func(a, b *tnode) bool
}

func newTree(arity int) *tree { return &tree{arity: arity} }

// room reports whether n can take another child.
func (t *tree) room(n *tnode) bool {
	return !n.leaf && n.su != nil && len(n.children) < t.arity
}

func (t *tree) markOpen(n *tnode) {
	if n.open || !t.room(n) {
		return
	}
	n.open = true
	for len(t.openAt) <= n.depth {
		t.openAt = append(t.openAt, nil)
	}
	t.openAt[n.depth] = append(t.openAt[n.depth], n)
}

// slot returns the shallowest member with room that can be child's parent
// and is not in child's own subtree, or nil when the rendezvous itself must
// take the child.
func (t *tree) slot(child *tnode) *tnode {
	if len(t.roots) < t.arity {
		return nil
	}
	for d := range t.openAt {
		q := t.openAt[d]
		for i := 0; i < len(q); i++ {
			n := q[i]
			// Stale: it moved (and sits in its new depth's queue), or it
			// has no room left.
			if stale := n.depth != d; stale || !t.room(n) {
				if !stale {
					n.open = false
				}
				q = dropAt(q, i)
				i--
				continue
			}
			if n.under(child) || (t.canReach != nil && !t.canReach(n, child)) {
				continue
			}
			t.openAt[d] = q
			return n
		}
		t.openAt[d] = q
	}
	if t.sameSite != nil && child.su != nil {
		var found *tnode
		t.walk(func(n *tnode) {
			if found == nil && n.su != nil && len(n.children) < t.arity && !n.under(child) && t.sameSite(n, child) {
				found = n
			}
		})
		if found != nil {
			return found
		}
	}
	return nil // every member is full, a leaf or unreachable: the rendezvous takes more
}

// dropAt removes q[i]. The queues fill from their front, so that is where
// most removals are: there it costs nothing, where copying the rest would
// make building a tree of N members cost N² (seconds at 100k).
func dropAt(q []*tnode, i int) []*tnode {
	if i == 0 {
		q[0] = nil
		return q[1:]
	}
	return append(q[:i], q[i+1:]...)
}

// under reports whether n is a or lies in a's subtree.
func (n *tnode) under(a *tnode) bool {
	for m := n; m != nil; m = m.parent {
		if m == a {
			return true
		}
	}
	return false
}

// insert places a new member and returns its node. A member that may have
// children adopts members the rendezvous took beyond its arity (when
// nothing had room for them): those it returns, moved.
func (t *tree) insert(su *sub, leaf bool) (n *tnode, adopted []*tnode) {
	n = &tnode{su: su, leaf: leaf}
	t.attach(n, t.slot(n))
	t.size++
	t.setOldReader(n, su.c == nil || su.c.prefs == nil || !su.c.prefs.messages)
	for i := len(t.roots) - 1; i >= 0 && len(t.roots) > t.arity && t.room(n); i-- {
		r := t.roots[i]
		if r == n || n.under(r) || (t.canReach != nil && !t.canReach(n, r)) {
			continue
		}
		t.detach(r) // removes index i: the ones before keep theirs
		t.attach(r, n)
		adopted = append(adopted, r)
	}
	return n, adopted
}

// attach makes n (with its subtree) a child of p, or of the rendezvous.
func (t *tree) attach(n, p *tnode) {
	n.parent = p
	if p == nil {
		t.roots = append(t.roots, n)
	} else {
		p.children = append(p.children, n)
	}
	n.setDepth(t) // a parent that is full now leaves the queue when slot meets it
}

// setDepth renumbers n's subtree after a move and queues members with room.
func (n *tnode) setDepth(t *tree) {
	d := 0
	if n.parent != nil {
		d = n.parent.depth + 1
	}
	n.depth = d
	n.open = false
	t.markOpen(n)
	for _, c := range n.children {
		c.setDepth(t)
	}
}

// detach removes n from its parent's children (or the roots).
func (t *tree) detach(n *tnode) {
	list := &t.roots
	if n.parent != nil {
		list = &n.parent.children
	}
	for i, c := range *list {
		if c == n {
			*list = append((*list)[:i], (*list)[i+1:]...)
			break
		}
	}
	if p := n.parent; p != nil {
		p.open = false
		t.markOpen(p)
	}
	n.parent = nil
}

// remove takes a member out. Its children, each with its subtree, move to
// the shallowest free places; it returns them, so that the caller can tell
// each about its new parent.
func (t *tree) remove(n *tnode) []*tnode {
	t.detach(n)
	t.size--
	t.setOldReader(n, false)
	n.su = nil // no longer has room: the queues skip it
	moved := n.children
	n.children = nil
	for _, c := range moved {
		c.parent = nil
	}
	for _, c := range moved {
		t.attach(c, t.slot(c))
	}
	return moved
}

// move takes a member, with its subtree, to the shallowest free place
// other than under its current parent, after its path to that parent
// failed; with no such place it becomes a child of the rendezvous.
func (t *tree) move(n *tnode) {
	old := n.parent
	t.detach(n)
	var p *tnode
	if old == nil {
		p = t.slot(n)
	} else {
		wasLeaf := old.leaf
		old.leaf = true // not there again
		p = t.slot(n)
		old.leaf = wasLeaf
		t.markOpen(old)
	}
	t.attach(n, p)
}

// serveDirectly makes n a leaf that the rendezvous serves itself; its
// children move, each with its subtree, to the shallowest free places.
func (t *tree) serveDirectly(n *tnode) {
	t.detach(n)
	n.leaf = true
	kids := n.children
	n.children = nil
	for _, c := range kids {
		c.parent = nil
		t.attach(c, t.slot(c))
	}
	t.attach(n, nil)
}

// walk calls fn for every member, parents before children.
func (t *tree) walk(fn func(*tnode)) {
	var visit func(ns []*tnode)
	visit = func(ns []*tnode) {
		for _, n := range ns {
			fn(n)
			visit(n.children)
		}
	}
	visit(t.roots)
}

// height is the greatest depth + 1 (0 for an empty tree).
func (t *tree) height() int {
	h := 0
	t.walk(func(n *tnode) { h = max(h, n.depth+1) })
	return h
}

// setOldReader sets whether a member reads only plain Forward, keeping the
// tree's count.
func (t *tree) setOldReader(n *tnode, old bool) {
	if n.oldReader != old {
		n.oldReader = old
		if old {
			t.oldReaders++
		} else {
			t.oldReaders--
		}
	}
}

// signedMessages reports whether every member reads Forward with a
// message (0x16): then events go to the tree with their messages.
func (t *tree) signedMessages() bool { return t.oldReaders == 0 }
