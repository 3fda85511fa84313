package rendezvous

import (
	"context"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// queueRecord schedules a client's record to be written. Called with mu held.
func (s *Server) queueRecord(c *client, now time.Time) {
	c.written = now.UnixNano()
	if isStream(c.addr) {
		return // a stream's address means nothing after it ends
	}
	s.dirty[c.key] = store.ClientRecord{ID: c.key, Heartbeat: now, Addr: c.addr}
	select {
	case s.recordsKick <- struct{}{}:
	default:
	}
}

// recordSweep is how often the records of clients silent for
// store.RecordExpiry are removed: hourly keeps at most an hour's worth of
// extra files, and walking 100k records costs about a second.
const recordSweep = time.Hour

// recordWriter writes client records off the packet path, the latest of
// each client, in batches, and removes the records of long-silent clients.
func (s *Server) recordWriter(ctx context.Context) {
	s.sweepRecords(time.Now())
	sweep := time.NewTicker(recordSweep)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			s.sweepRecords(time.Now())
			continue
		case <-s.recordsKick:
		}
		s.mu.Lock()
		batch := s.dirty
		s.dirty = make(map[wire.Key]store.ClientRecord)
		s.mu.Unlock()
		for _, r := range batch {
			if err := s.cfg.Store.WriteClient(r); err != nil {
				s.log.Error("cannot write client record", "err", err)
			}
			if ctx.Err() != nil {
				return
			}
		}
	}
}

// sweepRecords removes the records of clients silent for store.RecordExpiry.
func (s *Server) sweepRecords(now time.Time) {
	n, err := s.cfg.Store.RemoveStaleClients(now.Add(-store.RecordExpiry))
	if err != nil {
		s.log.Warn("cannot remove old client records", "err", err)
	}
	if n > 0 {
		s.log.Info("removed the records of long-silent clients", "records", n, "silent_for_more_than", store.RecordExpiry)
	}
}

// pingKnownClients asks every client whose record is recent to send a
// keepalive now, so that after a restart delivery resumes at once.
func (s *Server) pingKnownClients() {
	recs, bad, err := s.cfg.Store.Clients()
	if err != nil {
		s.log.Warn("cannot list client records", "err", err)
		return
	}
	for _, name := range bad {
		s.log.Warn("malformed client record", "file", name)
	}
	now := time.Now()
	for _, r := range recs {
		// A record older than this is behind a NAT mapping that is long gone.
		if !r.Recent(now) {
			continue
		}
		shared := wire.SharedKey(r.ID, s.priv)
		s.mu.Lock()
		s.pingSeq++
		b, err := wire.Seal(nil, &wire.Ping{Counter: s.pingSeq}, s.pub, &shared)
		s.stats.Pings++
		s.mu.Unlock()
		if err == nil {
			udpconn.WriteTo(s.connFor(r.Addr), b, r.Addr)
		}
	}
}

// forgetSilent drops clients silent for ForgetAfter. Called with mu held.
func (s *Server) forgetSilent(now time.Time) {
	for _, c := range s.clients {
		if since(now, c.lastHeard()) < ForgetAfter {
			continue
		}
		s.forget(c, now)
		s.stats.Forgotten++
	}
}

// forget drops a client from memory: its subscriptions end, it leaves
// every tree, its probes are cancelled. Called with mu held.
func (s *Server) forget(c *client, now time.Time) {
	for _, su := range c.subs {
		s.dropSub(su, now)
	}
	c.subs = nil
	delete(s.probes, probeKey{c, false})
	delete(s.probes, probeKey{c, true})
	delete(s.clients, c.key)
}
