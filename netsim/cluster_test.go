package netsim_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/punch"
)

// The NATS lab ports, on each server host.
const (
	natsClientPort  = 4222
	natsClusterPort = 6222
)

// natsHelper runs a NATS server with JetStream in this (re-executed) test
// binary: "NAME HOST DIR ROUTE,ROUTE,...". It runs until killed.
func natsHelper(spec string) int {
	f := strings.Fields(spec)
	if len(f) != 4 {
		fmt.Println("natsHelper: want NAME HOST DIR ROUTES")
		return 2
	}
	s, err := natsserver.NewServer(&natsserver.Options{
		ServerName: f[0], Host: f[1], Port: natsClientPort, JetStream: true, StoreDir: f[2],
		Cluster: natsserver.ClusterOpts{Name: "gcn", Host: f[1], Port: natsClusterPort},
		Routes:  natsserver.RoutesFromStr(f[3]),
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	s.ConfigureLogger()
	s.Start()
	s.WaitForShutdown()
	return 0
}

// startNATS runs a NATS server process in h's namespace, routed to the
// others.
func startNATS(t *testing.T, h *netsim.Host, name, dir string, hosts []netip.Addr) *proc {
	t.Helper()
	var routes []string
	for _, a := range hosts {
		routes = append(routes, fmt.Sprintf("nats://%s:%d", a, natsClusterPort))
	}
	cmd := h.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), "GCN_NATS_HELPER="+strings.Join([]string{name, h.Addr.String(), filepath.Join(dir, name), strings.Join(routes, ",")}, " "))
	return startCmd(t, cmd, filepath.Join(dir, name+".log"))
}

// Three rendezvous nodes on a three-server NATS JetStream cluster, one node
// and one NATS server per server host, daemons behind two NATs spread over
// the nodes. Killing a node with SIGKILL mid-stream moves its daemons to
// another node; killing a NATS server stops nothing; cutting a node off
// from NATS delays its daemons' notifications until it is back. Every
// daemon handles every push exactly once, in order, throughout.
func TestNATClusterFailover(t *testing.T) {
	skipUnlessLab(t)
	t.Parallel()
	lab := newLab(t, netsim.RouterSpec{Kind: netsim.PortRestricted, Clients: 2}, netsim.RouterSpec{Kind: netsim.Symmetric, Clients: 2})
	hosts := []*netsim.Host{lab.Server}
	for i, a := range []string{"198.18.0.201", "198.18.0.202"} {
		h, err := lab.AddWANHost(fmt.Sprintf("node%d", i+2), netip.MustParseAddr(a))
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	var addrs []netip.Addr
	var urls []string
	for _, h := range hosts {
		addrs = append(addrs, h.Addr)
		urls = append(urls, fmt.Sprintf("nats://%s:%d", h.Addr, natsClientPort))
	}
	natsDir := t.TempDir()
	var natsProcs []*proc
	for i, h := range hosts {
		natsProcs = append(natsProcs, startNATS(t, h, fmt.Sprintf("n%d", i+1), natsDir, addrs))
	}
	cluster := strings.Join(urls, ",")
	// Node 1 beside the git server's store (the hook runs there); nodes 2
	// and 3 with copies of its keys, started once it made them.
	s := startServer(t, lab, "--cluster", cluster, "--node", "node1")
	nodes := []*proc{s.rv}
	for i, h := range hosts[1:] {
		store := filepath.Join(s.dir, fmt.Sprintf("store%d", i+2))
		os.MkdirAll(store, 0o700)
		for _, f := range []string{"server.key", "server.pub", "server.sign"} {
			if b, err := os.ReadFile(filepath.Join(s.store, f)); err == nil {
				os.WriteFile(filepath.Join(store, f), b, 0o600)
			}
		}
		nodes = append(nodes, startIn(t, h, filepath.Join(s.dir, fmt.Sprintf("node%d.log", i+2)),
			"rendezvous", "--listen", h.Addr.String()+":3478", "--store", store, "--open", "--cluster", cluster, "--node", fmt.Sprintf("node%d", i+2)))
	}
	ready := poll(90*time.Second, func() bool {
		out, err := exec.Command(binary, "status", "--store", s.store, "--cluster", "--json").Output()
		var st struct {
			Ready bool
			Nodes []struct{ Name string }
		}
		return err == nil && json.Unmarshal(out, &st) == nil && st.Ready && len(st.Nodes) == 3
	})
	if !ready {
		out, _ := exec.Command(binary, "status", "--store", s.store, "--cluster").CombinedOutput()
		t.Fatalf("the cluster never formed: %s\n%s\n%s", out, nodes[1].text(), natsProcs[0].text())
	}
	// Two daemons at node 2, one at node 3 and one at node 1, behind both
	// NATs; 5 s keepalives keep the test short (a move is due one interval
	// and 8 s after a node dies).
	kind := "3 nodes, 3 NATS servers"
	var clients []*client
	at := []int{1, 1, 2, 0}
	for i, h := range []*netsim.Host{lab.Routers[0].Clients[0], lab.Routers[1].Clients[0], lab.Routers[0].Clients[1], lab.Routers[1].Clients[1]} {
		node := netip.AddrPortFrom(hosts[at[i]].Addr, 3478).String()
		clients = append(clients, s.startClient(h, kind, "--server", node, "--keepalive", "5s"))
	}
	for _, c := range clients {
		c.ready(t)
	}
	// Every daemon learns the three nodes.
	if !poll(60*time.Second, func() bool {
		for _, c := range clients {
			if len(c.nodes()) != 3 {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("the daemons never learned the nodes: %v", clients[0].nodes())
	}
	n := 0
	pushes := func(k int, name string, limit time.Duration) string {
		t.Helper()
		start := time.Now()
		for range k {
			s.push()
			n++
		}
		for _, c := range clients {
			if err := c.exactly(n, limit); err != nil {
				t.Fatalf("%s: %v\n%s\n%s", name, err, c.text(), nodeLogs(nodes))
			}
		}
		return fmt.Sprintf("all %d at every daemon in %v", n, time.Since(start).Round(100*time.Millisecond))
	}
	record(t, row{"cluster: pushes through JetStream", kind, "ok", pushes(5, "through the cluster", 30*time.Second), "5s (set)"})

	nodes[1].stop(syscall.SIGKILL) // node 2, with two daemons, mid-stream
	got := pushes(5, "node 2 killed", 90*time.Second)
	for _, c := range clients[:2] {
		if st := c.stats(); st.NodeMoves == 0 {
			t.Fatalf("%s did not move off the killed node: %+v\n%s", c.name, st, c.text())
		}
	}
	record(t, row{"cluster: a node killed (SIGKILL) mid-stream", kind, "ok", got + ", its daemons moved", "5s (set)"})

	natsProcs[1].stop(syscall.SIGKILL) // a NATS server
	record(t, row{"cluster: a NATS server killed", kind, "ok", pushes(5, "a NATS server killed", 60*time.Second), "5s (set)"})

	// Node 3 cut off from NATS: its host drops its NATS client traffic both
	// ways (a server keeps pushing a pull consumer's messages after the
	// client's own packets stop, so dropping only what node 3 sends is no
	// partition). Node 3 is the only NATS client on its host, and its NATS
	// server's own traffic to the other nodes (from port 4222, and on the
	// route port) is neither of these.
	cut := fmt.Sprintf("table inet gcncut {\n chain out {\n  type filter hook output priority 0;\n  tcp dport %d drop\n }\n chain in {\n  type filter hook input priority 0;\n  tcp sport %d drop\n }\n}\n", natsClientPort, natsClientPort)
	nft := hosts[2].Command("nft", "-f", "-")
	nft.Stdin = strings.NewReader(cut)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	start := time.Now()
	for range 5 {
		s.push()
		n++
	}
	time.Sleep(5 * time.Second)
	// The cut held: node 3's daemon has not had the pushes made during it
	// (the others have).
	if got := len(clients[2].got()); got >= n {
		t.Fatalf("node 3's daemon handled %d of %d while its node was cut off from NATS: no partition", got, n)
	}
	if out, err := hosts[2].Command("nft", "delete", "table", "inet", "gcncut").CombinedOutput(); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	for _, c := range clients {
		if err := c.exactly(n, 90*time.Second); err != nil {
			t.Fatalf("after node 3's partition: %v\n%s\n%s", err, c.text(), nodeLogs(nodes))
		}
	}
	record(t, row{"cluster: a node cut off from NATS for 5 s", kind, "ok",
		fmt.Sprintf("all %d at every daemon %v after the cut", n, time.Since(start).Round(100*time.Millisecond)), "5s (set)"})
}

// nodeLogs is the last lines of each rendezvous node's log, for a failure's
// message.
func nodeLogs(nodes []*proc) string {
	var b strings.Builder
	for i, p := range nodes {
		lines := strings.Split(strings.TrimSpace(p.text()), "\n")
		fmt.Fprintf(&b, "--- node%d (last %d lines)\n%s\n", i+1, min(40, len(lines)), strings.Join(lines[max(0, len(lines)-40):], "\n"))
	}
	return b.String()
}

// nodes is the cluster's nodes as the daemon knows them.
func (c *client) nodes() []string {
	b, err := exec.Command(binary, "status", "--state", c.state, "--json").Output()
	if err != nil {
		return nil
	}
	var st punch.Status
	if json.Unmarshal(b, &st) != nil || len(st.Servers) == 0 {
		return nil
	}
	return st.Servers[0].Nodes
}
