package rendezvous

import (
	"context"
	"errors"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// Events held in memory for want of disk. A hook whose append fails (the
// disk is full) hands the push's updates to the rendezvous (Hold): the
// rendezvous tries the disk itself, and if that fails too, gives them
// their numbers (marked given out in the store, in place), delivers them
// from memory like any other, and writes them to the log once the disk
// takes them again. Nothing of a successful push is lost while this
// rendezvous runs; what a restart before the write loses, and what clients
// then see, is in docs/security.md.

// HeldRetry is how often held events are offered to the disk again: space
// that an operator frees is used within seconds, and a failing attempt
// costs an open and a failed write.
const HeldRetry = 5 * time.Second

// Hold records a push's updates that the hook could not write. It returns
// the events and whether they are held in memory (else they are in the
// log). Only one Hold or write-back runs at a time (holdMu), and none with
// mu held across disk I/O.
func (s *Server) Hold(repoID string, ups []store.Update) (evs []store.Event, held bool, err error) {
	s.holdMu.Lock()
	defer s.holdMu.Unlock()
	now := time.Now()
	st := s.cfg.Store
	if s.writeHeld(repoID) {
		// Nothing is held (any more): the disk may take these too.
		evs, err := st.Append(repoID, ups, now)
		if errors.Is(err, store.ErrHeld) {
			// The mark says held, but this rendezvous holds nothing: the
			// one that did is gone.
			evs, err = st.AppendAfterLostHold(repoID, ups, now)
		}
		if len(evs) > 0 {
			if err != nil {
				s.log.Error("event log", "repo", repoID, "err", err)
			}
			return evs, false, s.Poke(repoID)
		}
		s.log.Warn("event log cannot be written: holding the push's events in memory", "repo", repoID, "err", err)
	}
	s.mu.Lock()
	after := s.repo(repoID).head
	s.mu.Unlock()
	evs, err = st.Hold(repoID, ups, now, after)
	if err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.loadRepo(repoID) // what the log gained meanwhile comes first
	if err != nil {
		s.log.Error("cannot read event log", "repo", repoID, "err", err)
	}
	r.held = append(r.held, evs...)
	s.stats.Held += uint64(len(evs))
	s.addEvents(r, evs)
	s.followersDue(r, now)
	s.kickSender()
	return evs, true, nil
}

// writeHeld writes a repository's held events to its log and reports
// whether none are held any more. Called with holdMu held.
func (s *Server) writeHeld(repoID string) bool {
	s.mu.Lock()
	held := s.repo(repoID).held
	s.mu.Unlock()
	if len(held) == 0 {
		return true
	}
	err := s.cfg.Store.WriteHeld(repoID, held)
	if err != nil && !errors.Is(err, store.ErrHeldLost) {
		return false // still no room: they stay in memory
	}
	s.mu.Lock()
	s.repo(repoID).held = nil
	if err == nil {
		s.stats.HeldWritten += uint64(len(held))
	}
	s.mu.Unlock()
	if err != nil {
		// Another hook declared them lost: served from memory all the
		// same until a restart, but never written.
		s.log.Error("held events cannot be written in order any more", "repo", repoID, "err", err)
		return true
	}
	s.log.Info("held events written to the event log", "repo", repoID, "events", len(held), "first", held[0].Seq, "last", held[len(held)-1].Seq)
	return true
}

// heldWriter offers held events to the disk every HeldRetry.
func (s *Server) heldWriter(ctx context.Context) {
	t := time.NewTicker(HeldRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		var ids []string
		for id, r := range s.repos {
			if len(r.held) > 0 {
				ids = append(ids, id)
			}
		}
		s.mu.Unlock()
		s.holdMu.Lock()
		for _, id := range ids {
			s.writeHeld(id)
		}
		s.holdMu.Unlock()
	}
}
