package rendezvous

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

type repo struct {
	id     string
	events []store.Event // the log's events, in order; events[i].Seq == first+i
	head   uint64
	offset int64 // bytes of the log file read so far
	ino    uint64
	// subs are the repository's followers: a subSet, so that a follower
	// costs 8 bytes here and a poke's scan walks an array.
	subs subSet
	// With fan-out: each event's server signature, beside events (zero for
	// an event too large to forward), and the followers' tree.
	sigs []eventSigs
	tree *tree
	// held are events given numbers while the log could not be written,
	// delivered from memory until the disk takes them (held.go).
	held []store.Event
	// msgs follows the messages file: an event read from the log takes
	// its message from there.
	msgs store.MessageReader
	// local: this node has the repository's log (it is beside the store),
	// so in a cluster it publishes the events (scaleout.go).
	local bool
}

func (s *Server) repo(id string) *repo {
	r := s.repos[id]
	if r == nil {
		r = &repo{id: id, subs: subSet{slot: repoSlot}}
		s.repos[id] = r
	}
	return r
}

// Poke tells the server that a repository's log has grown. The hook calls it
// through the control socket; it only notes the repository and wakes the
// send loop, so the hook never waits for a large fan-out.
func (s *Server) Poke(repoID string) error {
	if err := wire.ValidRepoID(repoID); err != nil {
		return err
	}
	s.mu.Lock()
	s.poked[repoID] = struct{}{}
	s.mu.Unlock()
	s.kickSender()
	return nil
}

// loadPoked reads the logs that grew and marks their followers due.
func (s *Server) loadPoked() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.poked {
		delete(s.poked, id)
		r, err := s.loadRepo(id)
		if err != nil {
			s.log.Error("cannot read event log", "repo", id, "err", err)
			continue
		}
		s.followersDue(r, time.Now())
		s.kickCluster() // the new events are in memory: publish them now
	}
}

// followersDue marks the followers that lack the repository's head due.
// Called with mu held.
func (s *Server) followersDue(r *repo, now time.Time) {
	for _, su := range r.subs.list {
		if su.acked < r.head && !s.waitForTree(su, now) {
			s.pending.add(su)
		}
	}
}

// eventSigs are an event's server signatures for trees: of the plain
// Forward, and of the one with its message (zero without a message).
type eventSigs struct {
	plain, msg [wire.SigLen]byte
}

// sign signs an event once for every hop of its trees; an event too large
// to forward gets no signature (it goes to everyone directly). Its message
// is shortened, if need be, to what a Forward can carry.
func (s *Server) sign(repoID string, e *store.Event) (sig eventSigs) {
	f := wire.Forward{Seq: e.Seq, TimeMilli: e.TimeMilli, RepoID: repoID, Ref: e.Ref, Old: e.Old, New: e.New}
	if f.Validate() != nil {
		return sig
	}
	f.Sign(s.fan.signer)
	sig.plain = f.Sig
	if e.Chat != nil {
		f.WithMessage, f.Chat = true, *e.Chat
		f.FitMessage()
		f.Sign(s.fan.signer)
		sig.msg = f.Sig
		e.Chat = &f.Chat
	}
	return sig
}

// loadRepo reads what is new in a repository's log; it re-reads the whole
// log when the file was replaced by compaction. Called with mu held, or
// before Run.
func (s *Server) loadRepo(id string) (*repo, error) {
	r := s.repo(id)
	f, err := os.Open(s.cfg.Store.LogPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	defer f.Close()
	r.local = true
	fi, err := f.Stat()
	if err != nil {
		return r, err
	}
	ino := store.Inode(fi)
	after := r.head
	if ino != r.ino || fi.Size() < r.offset {
		// Replaced (compacted): read it whole, so that what it retains
		// stays servable, not only what is newer than the head.
		r.ino, r.offset, r.events, r.sigs = ino, 0, nil, nil
		after = 0
	}
	if _, err := f.Seek(r.offset, 0); err != nil {
		return r, err
	}
	if err := r.msgs.Load(s.cfg.Store.MessagesPath(id)); err != nil {
		// A message is a courtesy: its event goes out without it.
		s.log.Warn("cannot read chat messages", "repo", id, "err", err)
	}
	evs, n, err := store.ReadEvents(f, after)
	r.msgs.Attach(evs)
	var dmg *store.DamageError
	if errors.As(err, &dmg) {
		// Damage costs only the damaged lines: serve the rest, and say it.
		s.log.Error("event log damaged: serving the events around it; a client that needs a lost one gets a resync notice",
			"repo", id, "log", s.cfg.Store.LogPath(id), "err", err)
		err = nil
	}
	if err != nil {
		return r, fmt.Errorf("rendezvous: log of %s: %w", id, err)
	}
	r.offset += n
	s.addEvents(r, evs)
	// Held events not yet in the log stay served from memory, also after
	// the log was read again from its start.
	for _, e := range r.held {
		if e.Seq > r.head {
			s.addEvents(r, []store.Event{e})
		}
	}
	return r, nil
}

// addEvents appends events that follow the repository's head; after a gap
// it keeps only what is contiguous. Called with mu held, or before Run.
func (s *Server) addEvents(r *repo, evs []store.Event) {
	for _, e := range evs {
		if len(r.events) > 0 && e.Seq <= r.events[len(r.events)-1].Seq {
			// Had it: a cluster's copy of a log's event, or the other way
			// round. (Not r.head: a log read again after its compaction
			// starts below it, and must be taken whole.)
			continue
		}
		if len(r.events) > 0 && e.Seq != r.events[len(r.events)-1].Seq+1 {
			r.events, r.sigs = nil, nil // a gap: keep only what is contiguous
		}
		if s.fan != nil {
			r.sigs = append(r.sigs, s.sign(r.id, &e)) // first: it may shorten the message
		}
		r.events = append(r.events, e)
	}
	if len(r.events) > 0 {
		r.head = r.events[len(r.events)-1].Seq
	}
}
