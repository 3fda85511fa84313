package rendezvous

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/cluster"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// Scale-out over NATS JetStream (--cluster). The node beside the git
// server's store publishes each event of its logs to the stream, in order,
// once (JetStream drops a repeat of a repository and sequence number); every
// node, that one included, takes the stream's events into memory and
// delivers them to its own clients as if they came from a log. The node
// with the store also goes on delivering from its logs, so that a cluster
// that is down costs its clients nothing; what it could not publish, it
// publishes from the logs once the cluster is back. Authorisations go to a
// key-value bucket that every node mirrors in memory; membership to another.

// clusterPublishEvery is how often the publisher looks for events it has
// not published yet (a poke looks at once): a cluster that was unreachable
// gets the backlog within this of coming back.
const clusterPublishEvery = time.Second

// shareAuthTimeout bounds gcn-heartbeat's hand-over of a registration to a
// clustered rendezvous: a local socket answers in well under a millisecond,
// and the sharing itself goes on without the heartbeat waiting.
const shareAuthTimeout = 200 * time.Millisecond

// clusterState is a node's part in the cluster. Its maps are under the
// server's mu.
type clusterState struct {
	cl *cluster.Cluster
	// published is, per repository, the highest sequence number known to
	// be in the stream (read from it once, then raised by what this node
	// publishes or consumes).
	published map[string]uint64
	// auth mirrors the authorisations bucket: expiry, Unix seconds.
	auth map[authEntry]int64
	// unshared are registrations the cluster could not take yet.
	unshared map[authEntry]bool
	// nodes are the live nodes' advertised addresses, sorted, and
	// nodesVer counts their changes (clients are sent each version once).
	nodes    []netip.AddrPort
	nodesVer uint32
	kick     chan struct{}
}

type authEntry struct {
	repo string
	key  wire.Key
}

func newClusterState(cl *cluster.Cluster) *clusterState {
	return &clusterState{cl: cl, published: map[string]uint64{}, auth: map[authEntry]int64{}, unshared: map[authEntry]bool{}, kick: make(chan struct{}, 1)}
}

// runCluster sets the cluster up (retrying while it is unreachable), then
// consumes its events and authorisations and publishes this node's logs,
// until ctx ends.
func (s *Server) runCluster(ctx context.Context) {
	cs := s.cluster
	if err := cs.cl.Setup(ctx); err != nil {
		return
	}
	s.log.Info("cluster ready", "node", cs.cl.Name())
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		if err := cs.cl.ConsumeEvents(ctx, s.onClusterEvent); err != nil {
			s.log.Error("cluster events", "err", err)
		}
	})
	wg.Go(func() {
		if err := cs.cl.WatchAuth(ctx, s.onClusterAuth); err != nil {
			s.log.Error("cluster authorisations", "err", err)
		}
	})
	s.shareStoreAuth(ctx)
	tick := time.NewTicker(clusterPublishEvery)
	defer tick.Stop()
	var lastNode time.Time
	for {
		s.publishLogs(ctx)
		s.shareUnshared(ctx)
		if time.Since(lastNode) >= cluster.NodeRefresh {
			if err := cs.cl.PutNode(ctx, s.nodeInfo()); err == nil {
				lastNode = time.Now()
			}
			s.refreshNodes(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-cs.kick:
		}
	}
}

// nodeInfo is what this node tells the others of itself: the addresses
// clients reach it at (--advertise, else its bound addresses that name a
// host).
func (s *Server) nodeInfo() cluster.NodeInfo {
	n := cluster.NodeInfo{Name: s.cluster.cl.Name(), Updated: time.Now()}
	for _, a := range s.cfg.Advertise {
		n.UDP = append(n.UDP, a.String())
	}
	for _, g := range s.grids {
		if c := g[0][0]; c != nil && len(s.cfg.Advertise) == 0 && !c.LocalAddrPort().Addr().IsUnspecified() {
			n.UDP = append(n.UDP, c.LocalAddrPort().String())
		}
	}
	s.mu.Lock()
	n.Clients = len(s.clients)
	s.mu.Unlock()
	return n
}

// publishLogs publishes, repository by repository and in order, the events
// of this node's logs that the stream does not have yet. A failure stops a
// repository's turn; the next one starts where it stopped.
func (s *Server) publishLogs(ctx context.Context) {
	cs := s.cluster
	type todo struct {
		id    string
		known bool
		from  uint64
	}
	var repos []todo
	s.mu.Lock()
	for id, r := range s.repos {
		if !r.local && len(r.held) == 0 {
			continue // not this node's to publish: it has no log of it
		}
		pub, known := cs.published[id]
		if !known || pub < r.head {
			repos = append(repos, todo{id, known, pub})
		}
	}
	s.mu.Unlock()
	for _, t := range repos {
		if !t.known {
			last, err := cs.cl.LastPublished(ctx, t.id)
			if err != nil {
				continue
			}
			s.mu.Lock()
			cs.published[t.id] = max(cs.published[t.id], last)
			t.from = cs.published[t.id]
			s.mu.Unlock()
		}
		for _, e := range s.eventsAfter(t.id, t.from) {
			if err := cs.cl.Publish(ctx, t.id, e); err != nil {
				s.log.Debug("cluster publish", "repo", t.id, "seq", e.Seq, "err", err)
				break
			}
			s.mu.Lock()
			cs.published[t.id] = max(cs.published[t.id], e.Seq)
			s.stats.ClusterPublished++
			s.mu.Unlock()
		}
	}
}

// eventsAfter copies a repository's events in memory after seq.
func (s *Server) eventsAfter(id string, seq uint64) []store.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.repos[id]
	if r == nil || len(r.events) == 0 || seq >= r.head {
		return nil
	}
	first := r.events[0].Seq
	from := max(seq+1, first)
	return append([]store.Event(nil), r.events[from-first:]...)
}

// onClusterEvent takes an event from the stream: an event this node has
// (from its log, or an earlier copy) changes nothing.
func (s *Server) onClusterEvent(repo string, e store.Event) {
	now := time.Now()
	s.mu.Lock()
	r := s.repo(repo)
	head := r.head
	s.addEvents(r, []store.Event{e})
	s.cluster.published[repo] = max(s.cluster.published[repo], e.Seq)
	if r.head > head {
		s.stats.ClusterEvents++
		s.followersDue(r, now)
	}
	s.mu.Unlock()
	s.kickSender()
}

// onClusterAuth mirrors one change of the authorisations bucket. An
// authorisation that ends drops its client here as revocation does.
func (s *Server) onClusterAuth(ch cluster.AuthChange) {
	k := authEntry{ch.Repo, ch.Key}
	if !ch.Deleted {
		s.mu.Lock()
		s.cluster.auth[k] = ch.Expiry.Unix()
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.cluster.auth, k)
	if s.clients[ch.Key] != nil && !s.cfg.Store.Authorised(ch.Repo, ch.Key, time.Now()) {
		s.dropRevoked(ch.Key)
	}
}

// clusterAuthExpiry is the cluster's authorisation of key for repoID.
// Called with mu held.
func (s *Server) clusterAuthExpiry(repoID string, key wire.Key) (time.Time, bool) {
	if s.cluster == nil {
		return time.Time{}, false
	}
	exp, ok := s.cluster.auth[authEntry{repoID, key}]
	return time.Unix(exp, 0), ok
}

// shareStoreAuth puts the store's live authorisations that the bucket
// lacks (or holds with an earlier expiry) into it: registrations made
// while the cluster was away.
func (s *Server) shareStoreAuth(ctx context.Context) {
	now := time.Now()
	type entry struct {
		authEntry
		exp time.Time
	}
	var todo []entry
	s.cfg.Store.EachAuth(func(repo string, key wire.Key, exp time.Time) {
		if exp.After(now) {
			todo = append(todo, entry{authEntry{repo, key}, exp})
		}
	})
	for _, e := range todo {
		s.mu.Lock()
		have := s.cluster.auth[e.authEntry]
		s.mu.Unlock()
		if have < e.exp.Unix() {
			s.cluster.cl.PutAuth(ctx, e.repo, e.key, e.exp)
		}
	}
}

// ShareAuth puts one authorisation the store holds into the cluster (the
// heartbeat asks, on the control socket). It reads the store rather than
// trusting the request.
func (s *Server) ShareAuth(repoID string, key wire.Key) error {
	if s.cluster == nil {
		return nil
	}
	exp, ok := s.cfg.Store.AuthExpiry(repoID, key)
	if !ok {
		return os.ErrNotExist
	}
	err := s.cluster.cl.PutAuth(context.Background(), repoID, key, exp)
	if err != nil {
		// The cluster is away: the publisher's loop shares it later.
		s.mu.Lock()
		s.cluster.unshared[authEntry{repoID, key}] = true
		s.mu.Unlock()
	}
	return err
}

// shareUnshared retries the registrations the cluster could not take.
func (s *Server) shareUnshared(ctx context.Context) {
	s.mu.Lock()
	var todo []authEntry
	for k := range s.cluster.unshared {
		todo = append(todo, k)
	}
	s.mu.Unlock()
	for _, k := range todo {
		exp, ok := s.cfg.Store.AuthExpiry(k.repo, k.key)
		if ok && s.cluster.cl.PutAuth(ctx, k.repo, k.key, exp) != nil {
			continue
		}
		s.mu.Lock()
		delete(s.cluster.unshared, k)
		s.mu.Unlock()
	}
}

// unshareAuth ends a revoked client's authorisations on every node, in the
// background (the network may be slow or away). Called with mu held.
func (s *Server) unshareAuth(key wire.Key) {
	if s.cluster == nil {
		return
	}
	var repos []string
	for k := range s.cluster.auth {
		if k.key == key {
			repos = append(repos, k.repo)
			delete(s.cluster.auth, k) // here at once; the others when the bucket tells them
		}
	}
	if len(repos) == 0 {
		return
	}
	go func() {
		if err := s.cluster.cl.DeleteAuth(context.Background(), repos, key); err != nil {
			s.log.Warn("cluster: could not end the revoked client's authorisations on the other nodes", "client", key.String()[:16], "err", err)
		}
	}()
}

// kickCluster asks the publisher to look at once (a poke).
func (s *Server) kickCluster() {
	if s.cluster == nil {
		return
	}
	select {
	case s.cluster.kick <- struct{}{}:
	default:
	}
}

// ClusterStatus is the cluster as this node sees it; ok is false without
// --cluster.
func (s *Server) ClusterStatus(ctx context.Context) (st cluster.Status, ok bool) {
	if s.cluster == nil {
		return st, false
	}
	return s.cluster.cl.Status(ctx), true
}

// refreshNodes reads the live nodes' addresses; a change makes a new
// version, which each client that reads Nodes is sent with its next pong.
func (s *Server) refreshNodes(ctx context.Context) {
	infos, err := s.cluster.cl.Nodes(ctx)
	if err != nil {
		return
	}
	var addrs []netip.AddrPort
	for _, n := range infos {
		for _, u := range n.UDP {
			if a, err := netip.ParseAddrPort(u); err == nil && !a.Addr().IsUnspecified() && len(addrs) < wire.MaxNodes {
				addrs = append(addrs, a)
			}
		}
	}
	slices.SortFunc(addrs, func(a, b netip.AddrPort) int { return a.Compare(b) })
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Equal(addrs, s.cluster.nodes) {
		s.cluster.nodes = addrs
		s.cluster.nodesVer++
		s.log.Info("cluster nodes", "udp", addrs)
	}
}

// nodesNews reports whether a client that reads them has not been sent
// the current node list: news, which a quiet keepalive is answered for.
// Called with mu held.
func (s *Server) nodesNews(c *client) bool {
	return s.cluster != nil && c != nil && c.prefs != nil && c.prefs.nodes && len(s.cluster.nodes) > 0 && c.prefs.nodesSent != s.cluster.nodesVer
}

// offerNodes sends a client that reads them the cluster's nodes, once per
// version of the list. Called with mu held.
func (s *Server) offerNodes(c *client) {
	if !s.nodesNews(c) {
		return
	}
	c.prefs.nodesSent = s.cluster.nodesVer
	s.note(c, &wire.Nodes{Addrs: slices.Clone(s.cluster.nodes)})
}
