package hook

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// HoldTimeout bounds the hand-over of a push that the log did not take: the
// rendezvous tries the disk itself before it holds the events (one append
// and an fsync), so this is longer than a poke, and still short of what a
// person notices in a push.
const HoldTimeout = 300 * time.Millisecond

// hold records updates that the event log did not take (cause). First the
// rendezvous: it holds them in memory, delivers them and writes them when
// the disk takes them again. When it is not reachable either, the numbers
// are given out here (the mark is rewritten in place, which a full disk
// allows), the events are sent directly as a best effort, and a follower
// that misses them gets a resync notice once the rendezvous is back. Only
// when even that fails is the notification lost, and the pusher is told.
func hold(st *store.Store, id string, ups []store.Update, cause error, res *Result, o Options) error {
	now := o.Now()
	var how string
	var err error
	for start := 0; start < len(ups) && err == nil; start += store.MaxHoldUpdates {
		part := ups[start:min(start+store.MaxHoldUpdates, len(ups))]
		var evs []store.Event
		how, evs, err = askHold(st.SocketPath(), id, part, now)
		res.Events = append(res.Events, evs...)
	}
	if err == nil {
		res.Poked = true
		res.Held = how == "held"
		if res.Held {
			fmt.Fprintf(o.Stderr, "gcn-punch: %s: the event log cannot be written (%v); the rendezvous holds events %d to %d in memory, delivers them, and writes them when the disk has room\n",
				id, cause, res.Events[0].Seq, res.Events[len(res.Events)-1].Seq)
		}
		return nil
	}
	if len(res.Events) > 0 {
		// Part of a large push was taken before the rendezvous went away.
		ups = ups[len(res.Events):]
	}
	var evs []store.Event
	if errors.Is(cause, store.ErrHeld) {
		// The rendezvous that held events is gone: go on after them.
		var aerr error
		evs, aerr = st.AppendAfterLostHold(id, ups, now)
		if aerr != nil {
			fmt.Fprintf(o.Stderr, "gcn-punch: %s: %v\n", id, aerr)
		}
		if len(evs) == 0 {
			cause = aerr
		}
	}
	if len(evs) == 0 {
		var herr error
		if evs, herr = st.Hold(id, ups, now, 0); herr != nil {
			return fmt.Errorf("the event log cannot be written (%v) and the rendezvous is not reachable (%v): this push's notification is lost; followers see the push at their next fetch", cause, err)
		}
		res.Held = true
		fmt.Fprintf(o.Stderr, "gcn-punch: %s: the event log cannot be written (%v) and the rendezvous is not reachable (%v): events %d to %d sent directly as a best effort; a follower that misses them gets a resync notice once the rendezvous is back\n",
			id, cause, err, evs[0].Seq, evs[len(evs)-1].Seq)
	}
	res.Events = append(res.Events, evs...)
	res.Direct = sendDirect(st, id, evs, now, o.SendBudget)
	return nil
}

// askHold sends one hold request; it returns how the rendezvous recorded
// the events ("held" or "recorded") and the events with their numbers.
func askHold(socket, id string, ups []store.Update, now time.Time) (how string, evs []store.Event, err error) {
	req, err := json.Marshal(store.HoldRequest{Repo: id, Updates: ups})
	if err != nil {
		return "", nil, err
	}
	reply, err := control.Dial(socket, "hold "+string(req), HoldTimeout)
	if err != nil {
		return "", nil, err
	}
	var first, last uint64
	if _, err := fmt.Sscanf(reply, "ok %s %d %d\n", &how, &first, &last); err != nil || last-first+1 != uint64(len(ups)) {
		return "", nil, fmt.Errorf("rendezvous: %s", strings.TrimSpace(reply))
	}
	for i, u := range ups {
		evs = append(evs, store.Event{Seq: first + uint64(i), TimeMilli: now.UnixMilli(), Old: u.Old, New: u.New, Ref: u.Ref})
	}
	return how, evs, nil
}
