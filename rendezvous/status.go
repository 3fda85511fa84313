package rendezvous

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/rendezvous/cluster"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// statusTimeout bounds the status query on the control socket.
const statusTimeout = 2 * time.Second

// WriteStatus prints the registered clients: id, address, last seen, last
// acked sequence per repository. The live view comes from the running
// rendezvous; when it is down, the records on disk are shown without acks.
func WriteStatus(w io.Writer, storeDir string, asJSON bool) error {
	st, err := store.OpenExisting(storeDir)
	if err != nil {
		return err
	}
	rows, live := []ClientStatus(nil), false
	if control.AskJSON(st.SocketPath(), "status", statusTimeout, &rows) == nil {
		live = true
	}
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.ID] = true
	}
	recs, bad, err := st.Clients()
	if err != nil {
		return err
	}
	for _, r := range recs {
		if !seen[r.ID.String()] {
			rows = append(rows, ClientStatus{ID: r.ID.String(), Addr: r.Addr.String(), LastSeen: r.Heartbeat})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	for i := range rows {
		if id, err := wire.ParseKey(rows[i].ID); err == nil {
			rows[i].Owner = st.Owner(id)
		}
	}
	if asJSON {
		return json.NewEncoder(w).Encode(struct {
			Live    bool           `json:"live"`
			Clients []ClientStatus `json:"clients"`
			Bad     []string       `json:"malformed_records,omitempty"`
		}{live, rows, bad})
	}
	if !live {
		fmt.Fprintln(w, "rendezvous not running: showing records on disk (no ack positions)")
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tSSH USER\tADDRESS\tLAST SEEN\tLAST ACKED SEQ\tPATH")
	for _, r := range rows {
		var acks []string
		for repo, seq := range r.Acked {
			acks = append(acks, fmt.Sprintf("%s=%d", repo, seq))
		}
		sort.Strings(acks)
		a := strings.Join(acks, ",")
		if a == "" {
			a = "-"
		}
		path := "-"
		if r.Path != "" && r.Since != nil {
			path = r.Path + " since " + r.Since.UTC().Format(time.RFC3339)
		}
		addr := r.Addr
		if r.Standby != "" {
			addr += " (standby " + r.Standby + ")"
		}
		owner := r.Owner
		if owner == "" {
			owner = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, owner, addr, r.LastSeen.UTC().Format(time.RFC3339), a, path)
	}
	for _, b := range bad {
		fmt.Fprintf(tw, "%s\t\t(malformed record)\t\t\n", b)
	}
	return tw.Flush()
}

// WriteTrees prints each repository's fan-out tree as the running
// rendezvous has it: as JSON (RepoTree), or as an indented outline.
func WriteTrees(w io.Writer, storeDir string, asJSON bool) error {
	st, err := store.OpenExisting(storeDir)
	if err != nil {
		return err
	}
	var trees []RepoTree
	if err := control.AskJSON(st.SocketPath(), "tree", statusTimeout, &trees); err != nil {
		return askFailed(st.Dir, err)
	}
	if asJSON {
		return json.NewEncoder(w).Encode(trees)
	}
	if len(trees) == 0 {
		fmt.Fprintln(w, "no trees: the rendezvous runs without --fanout, or no client takes part yet")
	}
	for _, t := range trees {
		fmt.Fprintf(w, "%s: %d members, arity %d, height %d\n", t.Repo, t.Size, t.Arity, t.Height)
		for _, m := range t.Members {
			path := m.Edge
			if m.Path != "" {
				path += " via " + m.Path
			}
			if m.RTTMicro > 0 {
				path += fmt.Sprintf(", rtt %.1f ms", float64(m.RTTMicro)/1000)
			}
			if m.Parent == "rendezvous" {
				path = "from the rendezvous"
			}
			leaf := ""
			if m.Leaf {
				leaf = " (leaf)"
			}
			fmt.Fprintf(w, "%s%s%s  %s\n", strings.Repeat("  ", m.Depth+1), m.Client[:16], leaf, path)
		}
	}
	return nil
}

// WriteStats prints the running rendezvous's counters as one JSON object.
func WriteStats(w io.Writer, storeDir string) error {
	st, err := store.OpenExisting(storeDir)
	if err != nil {
		return err
	}
	var stats Stats
	if err := control.AskJSON(st.SocketPath(), "stats", statusTimeout, &stats); err != nil {
		return askFailed(st.Dir, err)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(stats)
}

// WriteCluster prints the cluster as the running rendezvous sees it: its
// connection, the events stream, and the live nodes with their clients.
func WriteCluster(w io.Writer, storeDir string, asJSON bool) error {
	st, err := store.OpenExisting(storeDir)
	if err != nil {
		return err
	}
	var cs cluster.Status
	// The answer waits for the stream's and the nodes' state.
	if err := control.AskJSON(st.SocketPath(), "cluster", clusterStatusTimeout, &cs); err != nil {
		return askFailed(st.Dir, err)
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(cs)
	}
	conn := cs.Connected
	if conn == "" {
		conn = "not connected"
	}
	fmt.Fprintf(w, "node %s, NATS %s", cs.Node, conn)
	if !cs.Ready {
		fmt.Fprintln(w, "; the stream is not set up yet (the cluster is unreachable or electing its leader)")
		return nil
	}
	fmt.Fprintf(w, "\nstream %s: %d events of %d repositories, %d bytes, sequence %d..%d, %d replicas (%d current, leader %s)\n",
		cluster.StreamName, cs.Stream.Messages, cs.Stream.Subjects, cs.Stream.Bytes, cs.Stream.FirstSeq, cs.Stream.LastSeq,
		cs.Stream.Replicas, cs.Stream.InCluster, cs.Stream.Leader)
	fmt.Fprintf(w, "%-20s %-40s %8s  %s\n", "NODE", "UDP", "CLIENTS", "LAST SEEN")
	for _, n := range cs.Nodes {
		fmt.Fprintf(w, "%-20s %-40s %8d  %s ago\n", n.Name, strings.Join(n.UDP, ","), n.Clients, time.Since(n.Updated).Round(time.Second))
	}
	return nil
}

// clusterStatusTimeout bounds `status --cluster`: the node asks NATS for
// the stream's and the nodes' state, a few round trips.
const clusterStatusTimeout = 10 * time.Second

// askFailed says why the rendezvous on a store did not answer, and what to do.
func askFailed(storeDir string, err error) error {
	if errors.Is(err, control.ErrNotRunning) {
		return control.NotRunning(fmt.Sprintf("no rendezvous is running on the store %s: start it with `systemctl start gcn-punch-rendezvous`, or `gcn-punch rendezvous --store %s`", storeDir, storeDir))
	}
	return fmt.Errorf("rendezvous: %w", err)
}

// ClientStatus is one row of `gcn-punch status`.
type ClientStatus struct {
	ID string `json:"id"`
	// Owner is who registered it over SSH: the account, and the key's
	// fingerprint where sshd exposes it; empty when unknown (--open).
	Owner string `json:"ssh_user,omitempty"`
	Addr  string `json:"address"`
	// Standby is a dual-stack client's address on its other family, when
	// it is proven: where deliveries go if the first stops answering.
	Standby  string            `json:"standby_address,omitempty"`
	Path     string            `json:"path,omitempty"`       // "udp", or "ssh" (a stream); live only
	Since    *time.Time        `json:"path_since,omitempty"` // on that path since`
	LastSeen time.Time         `json:"last_seen"`
	Acked    map[string]uint64 `json:"last_acked_seq"`
}

// Clients reports the live registry.
func (s *Server) Clients() []ClientStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ClientStatus, 0, len(s.clients))
	for _, c := range s.clients {
		since := time.Unix(0, c.pathSince)
		cs := ClientStatus{ID: c.key.String(), Addr: c.addr.String(), Path: pathName(c.addr), Since: &since, LastSeen: time.Unix(0, c.lastSeen), Acked: map[string]uint64{}}
		if sb := c.standby; sb != nil && sb.proven == sb.addr && sb.addr.IsValid() {
			cs.Standby = sb.addr.String()
		}
		for _, su := range c.subs {
			cs.Acked[su.r.id] = su.acked
		}
		out = append(out, cs)
	}
	return out
}
