package rendezvous

import "time"

// treeWaitTick is the granularity of the tree's deadlines. The members whose
// deadlines fall in one tick wait in one bucket, so a push to 100k members
// makes a bucket per depth of the tree, not 100k timers; rounding up delays
// a fallback by at most a tick, 4% of the shortest deadline (250 ms).
const treeWaitTick = 10 * time.Millisecond

// treeWaits holds the subscriptions that the tree has until a deadline to
// serve, outside the pending set: the send loop, which scans that set on
// every wake, does not look at a member again until its deadline passes or
// it acks. Called with mu held.
type treeWaits struct {
	// buckets by deadline (unix nanoseconds, a multiple of treeWaitTick),
	// each member's index kept in su.at[treeSlot].
	buckets map[int64]*subSet
}

// park puts su in the bucket of its deadline, rounded up to a tick, and
// returns that rounded deadline.
func (w *treeWaits) park(su *sub, deadline int64) int64 {
	tick := int64(treeWaitTick)
	deadline = (deadline + tick - 1) / tick * tick
	b := w.buckets[deadline]
	if b == nil {
		if w.buckets == nil {
			w.buckets = make(map[int64]*subSet)
		}
		b = &subSet{slot: treeSlot}
		w.buckets[deadline] = b
	}
	b.add(su)
	return deadline
}

// unpark takes su out of the bucket of deadline, if it is in it.
func (w *treeWaits) unpark(su *sub, deadline int64) {
	b := w.buckets[deadline]
	if b == nil {
		return
	}
	b.remove(su)
	if len(b.list) == 0 {
		delete(w.buckets, deadline)
	}
}

// earliest is the first deadline of a waiting member (zero: none). There
// are a few buckets per push in flight, so a walk over them is cheap.
func (w *treeWaits) earliest() time.Time {
	var first int64
	for d := range w.buckets {
		if first == 0 || d < first {
			first = d
		}
	}
	if first == 0 {
		return time.Time{}
	}
	return time.Unix(0, first)
}

// expire empties every bucket whose deadline has passed, handing each of
// its members to f.
func (w *treeWaits) expire(now time.Time, f func(*sub)) {
	for d, b := range w.buckets {
		if d > now.UnixNano() {
			continue
		}
		delete(w.buckets, d)
		for _, su := range b.list {
			su.at[treeSlot] = 0
			f(su)
		}
	}
}
