package rendezvous

import ()

// subSet is a set of subscriptions with constant-time add and remove and a
// dense list to scan: no hash table, which a 100k fan-out's adds, removals
// and scans would otherwise spend their time in. Each member keeps 1 + its
// index in list (0: absent) in su.at[slot], so a subscription can be in
// one set of each slot at once. Called with mu held.
type subSet struct {
	list []*sub
	slot int
}

// The subSet slots: the server's pending set, a repository's followers,
// and the bucket of a member waiting for the tree (treeWaits).
const (
	pendingSlot = iota
	repoSlot
	treeSlot
)

func (set *subSet) add(su *sub) {
	if su.at[set.slot] == 0 {
		set.list = append(set.list, su)
		su.at[set.slot] = len(set.list)
	}
}

// remove moves the last member into su's place.
func (set *subSet) remove(su *sub) {
	i := su.at[set.slot] - 1
	if i < 0 {
		return
	}
	n := len(set.list) - 1
	last := set.list[n]
	set.list[i], last.at[set.slot] = last, i+1
	set.list[n] = nil
	set.list = set.list[:n]
	su.at[set.slot] = 0
}
