package punch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
)

// ControlSocket is the daemon's control socket in its state directory.
// Requests, one line per connection:
//
//	status\n  → one JSON object of Status, then "\n"
//	stats\n   → one JSON object of Stats (the counters), then "\n"
func ControlSocket(stateDir string) string { return filepath.Join(stateDir, "daemon.sock") }

// Status is what `gcn-punch status --state DIR --json` prints.
type Status struct {
	Client  string         `json:"client"`
	Servers []ServerStatus `json:"servers"`
}

// ServerStatus is the daemon's view of one rendezvous.
type ServerStatus struct {
	Key       string         `json:"server_key"`
	Addr      string         `json:"address"`
	Observed  string         `json:"observed,omitempty"` // this daemon's public address as the rendezvous sees it
	LastPong  time.Time      `json:"last_pong,omitzero"`
	Path      string         `json:"path"`       // "udp", or "ssh": a stream over SSH (UDP blocked)
	PathSince time.Time      `json:"path_since"` // on that path since
	Keepalive string         `json:"keepalive_interval"`
	Repos     []RepoPosition `json:"repos"`
	// Paths, for a rendezvous reached on both address families: each
	// family's path, the primary carrying the deliveries (paths.go). The
	// fields above are the primary's.
	Paths []PathStatus `json:"paths,omitempty"`
	// Nodes are a clustered rendezvous's nodes, which the daemon may move
	// between (nodes.go).
	Nodes []string `json:"nodes,omitempty"`
}

// PathStatus is one address family's path to a rendezvous.
type PathStatus struct {
	Family    string     `json:"family"` // "ipv4" or "ipv6"
	Addr      string     `json:"address"`
	Role      string     `json:"role"` // "primary" or "standby"
	Answering bool       `json:"answering"`
	Validated bool       `json:"validated"`
	Observed  string     `json:"observed,omitempty"`
	LastPong  *time.Time `json:"last_pong,omitempty"`
	Keepalive string     `json:"keepalive_interval"`
}

// RepoPosition is the daemon's position in one repository, and its tree
// neighbours there when the rendezvous fans out.
type RepoPosition struct {
	Repo     string       `json:"repo"`
	Known    bool         `json:"known"` // a rendezvous has told the daemon where it starts
	LastSeq  uint64       `json:"last_seq"`
	Parent   *PeerStatus  `json:"parent,omitempty"`
	Children []PeerStatus `json:"children,omitempty"`
}

// Status reports the daemon's servers and positions.
func (d *Daemon) Status() Status {
	d.linksMu.RLock()
	links := make([]*serverLink, 0, len(d.links))
	for _, p := range d.links {
		links = append(links, p)
	}
	d.linksMu.RUnlock()
	out := Status{Client: d.pub.String(), Servers: []ServerStatus{}}
	for _, p := range links {
		srv := p.server()
		p.mu.Lock()
		prim := p.primary
		ss := ServerStatus{Key: p.key.String(), Addr: prim.addr.String(), LastPong: prim.lastPong, Keepalive: prim.interval.String(), Path: "udp", PathSince: p.pathSince}
		if p.stream != nil {
			ss.Path = "ssh"
		}
		for _, n := range p.nodes {
			ss.Nodes = append(ss.Nodes, n.String())
		}
		if prim.observed.IsValid() {
			ss.Observed = prim.observed.String()
		}
		if len(p.paths) > 1 {
			for _, u := range p.paths {
				ps := PathStatus{Family: u.family(), Addr: u.addr.String(), Role: "standby", Answering: u.answering, Validated: u.validated, Keepalive: u.interval.String()}
				if u == prim {
					ps.Role = "primary"
				}
				if !u.lastPong.IsZero() {
					lp := u.lastPong
					ps.LastPong = &lp
				}
				if u.observed.IsValid() {
					ps.Observed = u.observed.String()
				}
				ss.Paths = append(ss.Paths, ps)
			}
		}
		p.mu.Unlock()
		for _, r := range srv.Repos {
			d.mu.Lock()
			rs := d.state.repo(p.key, r)
			pos := RepoPosition{Repo: r, Known: rs.Known, LastSeq: rs.LastSeq}
			d.mu.Unlock()
			pos.Parent, pos.Children = d.peerStatus(p, r)
			ss.Repos = append(ss.Repos, pos)
		}
		out.Servers = append(out.Servers, ss)
	}
	return out
}

// answerControl answers one control-socket request.
func (d *Daemon) answerControl(w io.Writer, cmd, _ string) {
	switch cmd {
	case "status":
		json.NewEncoder(w).Encode(d.Status())
	case "stats":
		json.NewEncoder(w).Encode(d.Stats())
	default:
		fmt.Fprintf(w, "error unknown command %q\n", cmd)
	}
}

// controlTimeout bounds a status query on the control socket.
const controlTimeout = 2 * time.Second

// WriteStatus prints the running daemon's servers and positions, as JSON
// (Status) or as a table.
func WriteStatus(w io.Writer, stateDir string, asJSON bool) error {
	var st Status
	if err := control.AskJSON(ControlSocket(stateDir), "status", controlTimeout, &st); err != nil {
		return askFailed(stateDir, err)
	}
	if asJSON {
		return json.NewEncoder(w).Encode(st)
	}
	fmt.Fprintf(w, "client %s\n", st.Client)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER\tSEEN AS\tKEEPALIVE\tREPOSITORY\tLAST SEQ\tPATH")
	for _, s := range st.Servers {
		seen := s.Observed
		if seen == "" {
			seen = "- (no answer yet)"
		}
		path := s.Path
		if !s.PathSince.IsZero() {
			path += " since " + s.PathSince.Local().Format(time.DateTime)
		}
		for _, r := range s.Repos {
			seq := "- (start not known yet)"
			if r.Known {
				seq = fmt.Sprint(r.LastSeq)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Addr, seen, s.Keepalive, r.Repo, seq, path)
			if r.Parent != nil {
				fmt.Fprintf(tw, "\t\t\t  parent %s\t%s\n", r.Parent.Peer, peerLine(*r.Parent))
			}
			for _, c := range r.Children {
				fmt.Fprintf(tw, "\t\t\t  child %s\t%s\n", c.Peer, peerLine(c))
			}
		}
		for _, p := range s.Paths {
			fmt.Fprintf(tw, "  %s %s\t%s\t%s\t\t\t%s\n", p.Family, p.Role, orDash(p.Observed), p.Keepalive, pathLine(p))
		}
	}
	return tw.Flush()
}

// pathLine describes one address family's path in a few words.
func pathLine(p PathStatus) string {
	s := "to " + p.Addr
	switch {
	case p.Answering && p.Validated:
		s += ", answering, validated"
	case p.Answering:
		s += ", answering"
	default:
		s += ", not answering"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// askFailed says why the daemon on stateDir did not answer, and what to do.
func askFailed(stateDir string, err error) error {
	if errors.Is(err, control.ErrNotRunning) {
		return control.NotRunning(fmt.Sprintf("no daemon is running on %s: start it with `systemctl --user start gcn-punch`, or `gcn-punch daemon --state %s ...`", stateDir, stateDir))
	}
	return fmt.Errorf("daemon on %s: %w", stateDir, err)
}

// peerLine describes a tree neighbour in one line.
func peerLine(p PeerStatus) string {
	if p.Path == "" {
		return "checking"
	}
	line := fmt.Sprintf("%s %s, rtt %.1f ms, forwarded %d, received %d", p.Path, p.Address, float64(p.RTTMicro)/1000, p.Forwarded, p.Received)
	if !p.LastSeen.IsZero() {
		line += ", last seen " + p.LastSeen.UTC().Format(time.RFC3339)
	}
	return line
}

// WriteStats prints the running daemon's counters as one JSON object.
func WriteStats(w io.Writer, stateDir string) error {
	var stats Stats
	if err := control.AskJSON(ControlSocket(stateDir), "stats", controlTimeout, &stats); err != nil {
		return askFailed(stateDir, err)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(stats)
}
