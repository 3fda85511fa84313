package netsim_test

// Peer-to-peer fan-out in the NAT lab: which pairs of NAT kinds form a
// direct path (the pair matrix), a crowd of daemons behind mixed routers
// fed through a tree, and the tree healing when interior members die.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/rendezvous"
)

// pairRow is one row of the pair matrix.
type pairRow struct{ parent, child, result, kind, took, rtt string }

var pairs struct {
	sync.Mutex
	rows []pairRow
}

// trees asks the lab's rendezvous for its trees.
func (s *server) trees() []rendezvous.RepoTree {
	out, err := exec.Command(binary, "status", "--store", s.store, "--tree", "--json").Output()
	if err != nil {
		return nil
	}
	var t []rendezvous.RepoTree
	json.Unmarshal(out, &t)
	return t
}

func (s *server) tree(repo string) *rendezvous.RepoTree {
	for _, t := range s.trees() {
		if t.Repo == repo {
			return &t
		}
	}
	return nil
}

// stats asks the lab's rendezvous for its counters.
func (s *server) stats() rendezvous.Stats {
	var st rendezvous.Stats
	if out, err := exec.Command(binary, "status", "--store", s.store, "--stats").Output(); err == nil {
		json.Unmarshal(out, &st)
	}
	return st
}

// daemonStats asks a daemon for its counters over its control socket.
func (c *client) stats() punch.Stats {
	var st punch.Stats
	if out, err := exec.Command(binary, "status", "--state", c.state, "--stats").Output(); err == nil {
		json.Unmarshal(out, &st)
	}
	return st
}

var (
	formedRE   = regexp.MustCompile(`msg="peer: path formed".* kind=(\S+) .*took=(\S+)`)
	formedRTT  = regexp.MustCompile(`msg="peer: path formed".* rtt=(\S+)`)
	noPathRE   = regexp.MustCompile(`msg="peer: no path formed"`)
	natKindRE  = regexp.MustCompile(`msg="peer: NAT behaviour".* mapping=(\S+) filtering=(\S+)`)
	kindsOrder = []netsim.RouterSpec{{Kind: netsim.FullCone}, {Kind: netsim.AddressRestricted}, {Kind: netsim.PortRestricted},
		{Kind: netsim.Symmetric}, {Kind: netsim.PortRestricted, CGNAT: true}}
)

// mayForm says whether RFC 4787 lets a direct path form between a parent
// and a child behind these NATs without a relay, with simultaneous checks
// and peer-reflexive learning (what ICE does): yes unless one side maps per
// destination while the other filters by port, or both map per destination.
func mayForm(parent, child netsim.RouterSpec) bool {
	sym := func(s netsim.RouterSpec) bool { return s.Kind == netsim.Symmetric }
	portFilter := func(s netsim.RouterSpec) bool { return s.Kind == netsim.PortRestricted || s.Kind == netsim.Symmetric }
	switch {
	case sym(parent) && sym(child):
		return false
	case sym(child):
		return !portFilter(parent)
	case sym(parent):
		return !portFilter(child)
	}
	return true
}

// The pair matrix: for every pair of NAT kinds the lab has, and for two
// clients behind one NAT, a two-member tree (arity 1) in a repository of
// its own. The parent joins first; then the child. The matrix records
// whether a direct path formed, by which candidate kind, how long from the
// edge's assignment, and the RTT; where RFC 4787 allows a direct path, it
// must form.
func TestNATFanoutPairMatrix(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	type pair struct {
		parent, child netsim.RouterSpec
		same          bool
	}
	var ps []pair
	var specs []netsim.RouterSpec
	for i, a := range kindsOrder {
		for _, b := range kindsOrder[i:] {
			// A symmetric NAT's daemon is a leaf: the other side parents.
			if a.Kind == netsim.Symmetric && b.Kind != netsim.Symmetric {
				a, b = b, a
			}
			ps = append(ps, pair{parent: a, child: b})
			specs = append(specs, a, b)
		}
	}
	for _, k := range []netsim.RouterSpec{{Kind: netsim.PortRestricted, Clients: 2}, {Kind: netsim.Symmetric, Clients: 2}, {Kind: netsim.PortRestricted, CGNAT: true, Clients: 2}} {
		ps = append(ps, pair{parent: k, child: k, same: true})
		specs = append(specs, k)
	}
	lab := newLab(t, specs...)
	s := startServer(t, lab, "--fanout", "1")
	type member struct{ parent, child *client }
	members := make([]member, len(ps))
	hosts := make([][2]*netsim.Host, len(ps))
	ri := 0
	for i, p := range ps {
		if p.same {
			hosts[i] = [2]*netsim.Host{lab.Routers[ri].Clients[0], lab.Routers[ri].Clients[1]}
			ri++
		} else {
			hosts[i] = [2]*netsim.Host{lab.Routers[ri].Clients[0], lab.Routers[ri+1].Clients[0]}
			ri += 2
		}
		members[i].parent = s.launchClient(hosts[i][0], kindName(p.parent), fmt.Sprintf("pair%02d.git", i))
	}
	// Every parent first: each alone in its tree.
	for i := range ps {
		repo := fmt.Sprintf("pair%02d.git", i)
		if !poll(60*time.Second, func() bool { tr := s.tree(repo); return tr != nil && tr.Size == 1 }) {
			t.Fatalf("%s: the parent never joined its tree:\n%s", repo, members[i].parent.text())
		}
	}
	for i, p := range ps {
		members[i].child = s.launchClient(hosts[i][1], kindName(p.child), fmt.Sprintf("pair%02d.git", i))
	}
	// An edge ends connected, or failed (ICE gives up within about 15 s), or
	// is never tried: the rendezvous serves both members itself, knowing the
	// child cannot reach the parent.
	settled := func(i int, trees map[string]rendezvous.RepoTree) bool {
		txt := members[i].child.text()
		if formedRE.MatchString(txt) || noPathRE.MatchString(txt) {
			return true
		}
		tr, ok := trees[fmt.Sprintf("pair%02d.git", i)]
		return ok && tr.Size == 2 && tr.Height == 1
	}
	poll(90*time.Second, func() bool {
		trees := map[string]rendezvous.RepoTree{}
		for _, tr := range s.trees() {
			trees[tr.Repo] = tr
		}
		for i := range ps {
			if !settled(i, trees) {
				return false
			}
		}
		return true
	})
	for i, p := range ps {
		child := members[i].child.text()
		r := pairRow{parent: kindName(p.parent), child: kindName(p.child)}
		if p.same {
			r.child = "the same NAT"
		}
		if m := formedRE.FindStringSubmatch(child); m != nil {
			r.result, r.kind, r.took = "direct", m[1], m[2]
			if mr := formedRTT.FindStringSubmatch(child); mr != nil {
				r.rtt = mr[1]
			}
		} else if noPathRE.MatchString(child) {
			r.result = "no direct path: served by the rendezvous"
		} else {
			r.result = "not tried: served by the rendezvous (the child's NAT maps per destination, the parent's filters by port)"
		}
		want := p.same || mayForm(p.parent, p.child)
		if want && r.result != "direct" {
			t.Errorf("%s parent, %s child: RFC 4787 allows a direct path, got %q\nparent:\n%s\nchild:\n%s", r.parent, r.child, r.result, tail(members[i].parent.text(), 15), tail(child, 15))
		}
		if !want && r.result == "direct" {
			t.Logf("%s parent, %s child: a direct path formed where none was expected", r.parent, r.child)
		}
		t.Logf("pair: %-28s %-28s %-10s %-6s %-8s %s", r.parent, r.child, r.result, r.kind, r.took, r.rtt)
		pairs.Lock()
		pairs.rows = append(pairs.rows, r)
		pairs.Unlock()
	}
	contributed.Store(t.Name(), true)
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// nftCounter counts the rendezvous's outgoing UDP datagrams in the server's
// namespace.
type nftCounter struct{ ns *netsim.Host }

func newNFTCounter(t *testing.T, h *netsim.Host) *nftCounter {
	t.Helper()
	rules := "table ip gcncount {\n chain out {\n  type filter hook output priority 0; policy accept;\n  udp sport { 3478, 3479 } counter\n }\n}\n"
	cmd := h.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft counter: %v\n%s", err, out)
	}
	return &nftCounter{ns: h}
}

var packetsRE = regexp.MustCompile(`counter packets (\d+)`)

func (n *nftCounter) packets(t *testing.T) int64 {
	out, err := n.ns.Command("nft", "list", "table", "ip", "gcncount").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	m := packetsRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no counter in:\n%s", out)
	}
	v, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return v
}

// crowdSpecs: 30 daemons behind 8 routers of mixed kinds.
func crowdSpecs() []netsim.RouterSpec {
	return []netsim.RouterSpec{
		{Kind: netsim.FullCone}, {Kind: netsim.FullCone},
		{Kind: netsim.AddressRestricted}, {Kind: netsim.AddressRestricted},
		{Kind: netsim.PortRestricted, Clients: 6}, {Kind: netsim.PortRestricted, Clients: 6},
		{Kind: netsim.Symmetric, Clients: 5},
		{Kind: netsim.PortRestricted, CGNAT: true, Clients: 9},
	}
}

// startCrowd starts a daemon per client and waits until every one is in
// the tree and has its position.
func startCrowd(t *testing.T, s *server, lab *netsim.Lab, specs []netsim.RouterSpec) []*client {
	t.Helper()
	var clients []*client
	for i, r := range lab.Routers {
		for _, h := range r.Clients {
			clients = append(clients, s.startClient(h, kindName(specs[i])))
		}
	}
	for _, c := range clients {
		c.ready(t)
	}
	if !poll(90*time.Second, func() bool {
		tr := s.tree("chat.git")
		if tr == nil || tr.Size != len(clients) {
			return false
		}
		for _, m := range tr.Members {
			if m.Parent != "rendezvous" && m.Edge != "connected" {
				return false
			}
		}
		return true
	}) {
		byKey := map[string]*client{}
		for _, c := range clients {
			byKey[strings.TrimSpace(readFile(c.state+"/client.pub"))] = c
		}
		var b strings.Builder
		if tr := s.tree("chat.git"); tr != nil {
			for _, m := range tr.Members {
				if m.Parent == "rendezvous" || m.Edge == "connected" {
					continue
				}
				for _, who := range []string{m.Client, m.Parent} {
					if c := byKey[who]; c != nil {
						fmt.Fprintf(&b, "--- %s (%s), edge %q:\n%s", c.name, c.kind, m.Edge, peerLines(c.text()))
					}
				}
			}
		}
		t.Fatalf("the tree did not settle: %+v\n%s\nrendezvous:\n%s", s.tree("chat.git"), b.String(), s.rv.text())
	}
	return clients
}

// tail is a log's last n lines.
func tail(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n") + "\n"
}

// peerLines keeps a daemon log's fan-out lines.
func peerLines(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "peer:") || strings.Contains(l, "rendezvous sees") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n") + "\n"
}

// A crowd: 30 daemons behind 8 routers of mixed kinds, --fanout 3. Every
// notification of a stream arrives exactly once, in order, at every daemon.
// The rendezvous's outgoing datagrams (an nftables counter in its
// namespace) per notification are at most K plus its direct sends to
// members the tree did not reach in time, plus its answers to keepalives.
func TestNATFanoutCrowd(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	const k, pushes = 3, 20
	specs := crowdSpecs()
	lab := newLab(t, specs...)
	s := startServer(t, lab, "--fanout", strconv.Itoa(k))
	clients := startCrowd(t, s, lab, specs)
	count := newNFTCounter(t, lab.Server)
	before, st0 := count.packets(t), s.stats()
	for range pushes {
		s.push()
	}
	failed := false
	for _, c := range clients {
		if err := c.exactly(pushes, 60*time.Second); err != nil {
			failed = true
			t.Errorf("crowd: %v\n%s", err, c.text())
		}
	}
	out, st1 := count.packets(t)-before, s.stats()
	tr := s.tree("chat.git")
	// Direct sends: what the rendezvous sent beyond its own children's
	// share; control: its answers and edge messages meanwhile.
	direct := int64(st1.Notifies+st1.Retransmits-st0.Notifies-st0.Retransmits) - int64(k*pushes)
	control := int64((st1.Keepalives - st1.Quiet) - (st0.Keepalives - st0.Quiet) + st1.STUN - st0.STUN + st1.Pings - st0.Pings + st1.Probes - st0.Probes)
	var fromPeer uint64
	for _, c := range clients {
		fromPeer += c.stats().FromPeer
	}
	t.Logf("crowd: %d daemons, %d routers, arity %d, tree height %d; %d pushes: rendezvous sent %d datagrams (%.1f per push; K = %d, direct sends %d, fallbacks %d, control %d); daemons took %d of %d events from peers",
		len(clients), len(lab.Routers), k, tr.Height, pushes, out, float64(out)/pushes, k, direct, st1.DirectFallbacks-st0.DirectFallbacks, control, fromPeer, (len(clients)-k)*pushes)
	if out > int64(k*pushes)+max(direct, 0)+control+int64(pushes) {
		t.Errorf("the rendezvous sent %d datagrams for %d pushes: more than K per push plus its direct sends (%d) and control (%d)", out, pushes, direct, control)
	}
	if fromPeer < uint64((len(clients)-k)*pushes/2) {
		t.Errorf("only %d of %d events came from peers: the tree did not carry the stream", fromPeer, (len(clients)-k)*pushes)
	}
	res := "ok"
	if failed {
		res = "FAIL"
	}
	record(t, row{fmt.Sprintf("fan-out crowd, --fanout %d, %d pushes", k, pushes), fmt.Sprintf("%d daemons, 8 mixed routers", len(clients)), res,
		fmt.Sprintf("%.1f datagrams out per push (K=%d; %d direct sends, %d control); %d of %d events via peers", float64(out)/pushes, k, max(direct, 0), control, fromPeer, (len(clients)-k)*pushes), "-"})
}

// Churn: kill 30% of the tree's interior members in the middle of a stream.
// Every survivor still gets every notification exactly once, in order, and
// the tree heals: no survivor is left under a dead parent.
func TestNATFanoutChurn(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	const k, pushes = 2, 30
	specs := []netsim.RouterSpec{{Kind: netsim.PortRestricted, Clients: 5}, {Kind: netsim.PortRestricted, Clients: 5},
		{Kind: netsim.FullCone}, {Kind: netsim.AddressRestricted}, {Kind: netsim.PortRestricted, CGNAT: true, Clients: 4}}
	lab := newLab(t, specs...)
	s := startServer(t, lab, "--fanout", strconv.Itoa(k))
	clients := startCrowd(t, s, lab, specs)
	byKey := map[string]*client{}
	for _, c := range clients {
		key := strings.TrimSpace(readFile(c.state + "/client.pub"))
		byKey[key] = c
	}
	var interior []*client
	for _, m := range s.tree("chat.git").Members {
		if m.Children > 0 {
			interior = append(interior, byKey[m.Client])
		}
	}
	sort.Slice(interior, func(i, j int) bool { return interior[i].name < interior[j].name })
	kill := interior[:max(1, (len(interior)*3+9)/10)] // at least 30%, rounded up
	dead := map[*client]bool{}
	for i := range pushes {
		if i == pushes/2 {
			for _, c := range kill {
				c.stop(syscall.SIGKILL)
				dead[c] = true
			}
		}
		s.push()
	}
	failed := false
	for _, c := range clients {
		if dead[c] {
			continue
		}
		if err := c.exactly(pushes, 60*time.Second); err != nil {
			failed = true
			t.Errorf("churn: %v\n%s", err, c.text())
		}
	}
	healed := poll(60*time.Second, func() bool {
		tr := s.tree("chat.git")
		if tr == nil {
			return false
		}
		for _, m := range tr.Members {
			if p := byKey[m.Parent]; p != nil && dead[p] && !dead[byKey[m.Client]] {
				return false
			}
		}
		return true
	})
	if !healed {
		t.Errorf("the tree did not heal: a survivor still hangs under a dead member: %+v", s.tree("chat.git"))
	}
	st := s.stats()
	res := "ok"
	if failed || !healed {
		res = "FAIL"
	}
	t.Logf("churn: %d of %d interior members killed mid-stream; %d evicted, %d direct fallbacks", len(kill), len(interior), st.TreeEvictions, st.DirectFallbacks)
	record(t, row{fmt.Sprintf("fan-out churn: %d of %d interior members killed mid-stream", len(kill), len(interior)), fmt.Sprintf("%d daemons, mixed", len(clients)), res,
		fmt.Sprintf("healed; %d evictions, %d direct fallbacks", st.TreeEvictions, st.DirectFallbacks), "-"})
}

// Two daemons on IPv6-only networks behind home routers' IPv6 firewalls (no
// NAT, nothing unsolicited in): their simultaneous checks open both
// pinholes, a direct path forms, and the child takes every event from its
// parent exactly once, in order.
func TestNATFanoutIPv6Pair(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	spec := netsim.RouterSpec{Kind: netsim.PortRestricted, IPv6Only: true}
	lab := newLab(t, spec, spec)
	s := startServer(t, lab, "--listen", "[::]:3478", "--alt-listen", "", "--fanout", "1")
	server6 := netip.AddrPortFrom(netsim.ServerAddr6, 3478).String()
	parent := s.startClient(lab.Routers[0].Clients[0], "IPv6 firewall", "--server", server6)
	if !poll(60*time.Second, func() bool { tr := s.tree("chat.git"); return tr != nil && tr.Size == 1 }) {
		t.Fatalf("the parent never joined its tree:\n%s", parent.text())
	}
	child := s.startClient(lab.Routers[1].Clients[0], "IPv6 firewall", "--server", server6)
	if !poll(60*time.Second, func() bool { return formedRE.MatchString(child.text()) || noPathRE.MatchString(child.text()) }) {
		t.Fatalf("the edge never settled:\nparent:\n%s\nchild:\n%s", tail(parent.text(), 15), tail(child.text(), 15))
	}
	// No NAT, but a firewall: the daemon does not claim to know its
	// filtering (the rendezvous here has no second address to test it).
	if !strings.Contains(child.text(), `msg="peer: NAT behaviour" server=[2001:2::10]:3478 mapping=endpoint-independent filtering=unknown`) {
		t.Errorf("the child's NAT measurement behind an IPv6 firewall:\n%s", tail(child.text(), 15))
	}
	m := formedRE.FindStringSubmatch(child.text())
	if m == nil {
		t.Fatalf("no direct path across two IPv6 firewalls:\nparent:\n%s\nchild:\n%s", tail(parent.text(), 15), tail(child.text(), 15))
	}
	r := pairRow{parent: "IPv6 firewall (IPv6-only)", child: "IPv6 firewall (IPv6-only)", result: "direct", kind: m[1], took: m[2]}
	if mr := formedRTT.FindStringSubmatch(child.text()); mr != nil {
		r.rtt = mr[1]
	}
	const n = 5
	for range n {
		s.push()
	}
	for _, c := range []*client{parent, child} {
		if err := c.exactly(n, 30*time.Second); err != nil {
			t.Fatalf("%v\n%s", err, c.text())
		}
	}
	if st := child.stats(); st.FromPeer == 0 {
		t.Fatalf("the child took nothing from its parent: %+v", st)
	}
	pairs.Lock()
	pairs.rows = append(pairs.rows, r)
	pairs.Unlock()
	contributed.Store(t.Name(), true)
}
