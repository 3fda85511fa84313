package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// Events held in memory for want of disk. When a repository's log cannot
// be written (the disk is full), the rendezvous gives the push's updates
// their numbers all the same (Hold), delivers them from memory, and writes
// them when the disk takes them again (WriteHeld). The numbers are marked
// given out in the sequence mark, rewritten in place, which needs no new
// disk blocks; the mark's "H" tells every hook that events above the log's
// end are held, so that no hook writes past them (Append returns ErrHeld).

// ErrHeld says that a rendezvous holds events of the repository in memory
// for want of disk: new updates must go to it (or, if it is gone, to
// AppendAfterLostHold).
var ErrHeld = errors.New("store: events of this repository are held in memory until the disk takes them")

// ErrHeldLost reports events that a rendezvous held in memory and never
// wrote: their numbers stay given out, and clients that missed them get a
// resync notice.
var ErrHeldLost = errors.New("store: held events were lost")

// HoldRequest is what a hook sends on the rendezvous's control socket when
// it could not write a push's updates: "hold " and this as one JSON line.
// MaxHoldUpdates bounds one request (a larger push is sent in parts).
type HoldRequest struct {
	Repo    string   `json:"repo"`
	Updates []Update `json:"updates"`
}

// MaxHoldUpdates is the most updates one HoldRequest carries: at most
// about 1.2 KB each, a request stays well under the control socket's
// 1 MiB line limit.
const MaxHoldUpdates = 256

// lockToAppend refuses a repository id or an update that cannot become a
// notification, then takes the repository's lock (lockRepo).
func (s *Store) lockToAppend(repoID string, ups []Update) (seqf *os.File, unlock func(), err error) {
	if err := wire.ValidRepoID(repoID); err != nil {
		return nil, nil, err
	}
	for _, u := range ups {
		n := wire.Notify{Seq: 1, RepoID: repoID, Ref: u.Ref, Old: u.Old, New: u.New}
		if err := n.Validate(); err != nil {
			return nil, nil, fmt.Errorf("ref update %s: %w", u.Ref, err)
		}
	}
	return s.lockRepo(repoID)
}

// numbered gives updates the numbers after last.
func numbered(ups []Update, last uint64, now time.Time) []Event {
	evs := make([]Event, 0, len(ups))
	for i, u := range ups {
		evs = append(evs, Event{Seq: last + uint64(i) + 1, TimeMilli: now.UnixMilli(), Old: u.Old, New: u.New, Ref: u.Ref})
	}
	return evs
}

// Hold gives updates their sequence numbers without writing them to the
// log: after the highest number given out, the log's last, and after (what
// the caller already holds). It marks the numbers given out, in place, so
// it works on a full disk where the mark already exists. The caller keeps
// the events, delivers them, and writes them with WriteHeld.
func (s *Store) Hold(repoID string, ups []Update, now time.Time, after uint64) ([]Event, error) {
	seqf, unlock, err := s.lockToAppend(repoID, ups)
	if err != nil {
		return nil, err
	}
	defer unlock()
	highest, _ := readSeq(seqf)
	base := max(highest, after)
	if f, err := os.Open(s.LogPath(repoID)); err == nil {
		if _, last, _, err := logBounds(f); err == nil {
			base = max(base, last)
		}
		f.Close()
	}
	if err := writeSeq(seqf, base+uint64(len(ups)), true); err != nil {
		return nil, err
	}
	return numbered(ups, base, now), nil
}

// WriteHeld appends held events (in order, from Hold) to the log, and
// clears the mark's "H" when nothing above them is held. Events the log
// already has are skipped. It returns ErrHeldLost when the hold was taken
// over meanwhile (the numbers were declared lost and new events follow
// them): the held events can then no longer be written in order.
func (s *Store) WriteHeld(repoID string, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	seqf, unlock, err := s.lockRepo(repoID)
	if err != nil {
		return err
	}
	defer unlock()
	highest, held := readSeq(seqf)
	top := evs[len(evs)-1].Seq
	if !held || highest < top {
		return fmt.Errorf("%w: the hold of events %d to %d was taken over", ErrHeldLost, evs[0].Seq, top)
	}
	f, err := os.OpenFile(s.LogPath(repoID), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return err
	}
	defer f.Close()
	_, last, end, err := logBounds(f)
	if err != nil {
		return err // a damaged end: the next append sets it aside first
	}
	if err := f.Truncate(end); err != nil { // drop a torn tail
		return err
	}
	if _, err := f.Seek(end, io.SeekStart); err != nil {
		return err
	}
	var buf []byte
	for _, e := range evs {
		if e.Seq > last {
			buf = appendEventLine(buf, e)
		}
	}
	if _, err := f.Write(buf); err != nil {
		f.Truncate(end) // a partial write would be a torn line; leave none
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return writeSeq(seqf, highest, highest > top)
}
