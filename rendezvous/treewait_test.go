package rendezvous

import (
	"testing"
	"time"
)

// Deadlines round up to a tick, members of one tick share a bucket, and
// expire hands over exactly the members whose deadlines passed.
func TestTreeWaitsBucketsByDeadline(t *testing.T) {
	var w treeWaits
	base := time.Unix(1000, 0)
	a, b, c := &sub{}, &sub{}, &sub{}
	da := w.park(a, base.Add(250*time.Millisecond+time.Nanosecond).UnixNano())
	db := w.park(b, base.Add(255*time.Millisecond).UnixNano())
	dc := w.park(c, base.Add(400*time.Millisecond).UnixNano())
	if want := base.Add(260 * time.Millisecond).UnixNano(); da != want || db != want {
		t.Fatalf("deadlines %d and %d, want both rounded up to %d", da, db, want)
	}
	if len(w.buckets) != 2 {
		t.Fatalf("%d buckets, want 2", len(w.buckets))
	}
	if got := w.earliest(); !got.Equal(time.Unix(0, da)) {
		t.Fatalf("earliest %v, want %v", got, time.Unix(0, da))
	}
	w.unpark(b, db)
	var got []*sub
	w.expire(time.Unix(0, da-1), func(su *sub) { got = append(got, su) })
	if len(got) != 0 {
		t.Fatalf("expired %d members before their deadline", len(got))
	}
	w.expire(time.Unix(0, da), func(su *sub) { got = append(got, su) })
	if len(got) != 1 || got[0] != a || a.at[treeSlot] != 0 {
		t.Fatalf("expired %v, want only a, out of its bucket", got)
	}
	if w.earliest().UnixNano() != dc {
		t.Fatalf("earliest %v after the first bucket, want c's", w.earliest())
	}
	w.unpark(c, dc)
	if len(w.buckets) != 0 || !w.earliest().IsZero() {
		t.Fatalf("%d buckets left after every member left", len(w.buckets))
	}
}
