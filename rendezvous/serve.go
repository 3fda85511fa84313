package rendezvous

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/rendezvous/cluster"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// Options are the `gcn-punch rendezvous` flags.
type Options struct {
	Listen    string
	AltListen string
	StoreDir  string
	Open      bool
	Fanout    int // arity of the peer-to-peer trees; 0: no fan-out
	// NewKeyRate bounds the keys not seen before that may cost a
	// precomputation each second (0: 4000); see Config.
	NewKeyRate float64
	MaxStreams int // streams over SSH accepted at once; 0: DefaultMaxStreams
	// Metrics, when set, is a TCP address where the counters are served as
	// Prometheus text at /metrics.
	Metrics string
	// Version is the build's, for the start line.
	Version string
	// Cluster, with URLs set, joins this node to a cluster (scaleout.go);
	// Advertise, comma-separated HOST:PORTs, is where clients reach it.
	Cluster   cluster.Options
	Advertise string
	Logger    *slog.Logger
}

// ListenAndServe opens the UDP sockets and the control socket and serves
// until ctx is done.
func ListenAndServe(ctx context.Context, o Options) error {
	st, err := store.Open(o.StoreDir)
	if err != nil {
		return err
	}
	listens, alts, err := familyPairs(o.Listen, o.AltListen)
	if err != nil {
		return err
	}
	cfg := Config{Store: st, Open: o.Open, Fanout: o.Fanout, NewKeyRate: o.NewKeyRate, MaxStreams: o.MaxStreams, Logger: o.Logger}
	if o.Cluster.URLs != "" {
		if o.Cluster.Name == "" {
			o.Cluster.Name, _ = os.Hostname()
		}
		o.Cluster.Logger = o.Logger
		cl, err := cluster.Connect(o.Cluster)
		if err != nil {
			return err
		}
		defer cl.Close()
		cfg.Cluster = cl
		for _, a := range strings.Split(o.Advertise, ",") {
			if a = strings.TrimSpace(a); a == "" {
				continue
			}
			ap, err := netip.ParseAddrPort(a)
			if err != nil || ap.Addr().IsUnspecified() || ap.Port() == 0 {
				return fmt.Errorf("--advertise %q: give the IP:PORT clients reach this node at", a)
			}
			cfg.Advertise = append(cfg.Advertise, ap)
		}
	}
	var grids []*Grid
	for i, l := range listens {
		conn, err := listenUDP(l)
		if err != nil {
			return err
		}
		defer conn.Close()
		g := &Grid{{conn}}
		if alts[i] != "" {
			grid, closeAll, err := listenGrid(conn, alts[i], o.Logger)
			if err != nil {
				return err
			}
			defer closeAll()
			g = grid
		}
		grids = append(grids, g)
	}
	cfg.Grid = grids[0]
	conn := grids[0][0][0]
	var second netip.AddrPort
	if len(grids) > 1 {
		cfg.Second = grids[1]
		second = grids[1][0][0].LocalAddrPort()
	}
	srv, err := New(cfg)
	if err != nil {
		return err
	}
	ctl, err := control.Listen(st.SocketPath())
	if err != nil {
		return fmt.Errorf("rendezvous: %w", err)
	}
	defer ctl.Close()
	var metrics net.Listener
	if o.Metrics != "" {
		if metrics, err = net.Listen("tcp", o.Metrics); err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
		defer metrics.Close()
	}
	// The hook publishes each push to the cluster itself (cluster.PublishNow).
	var clusterFile []byte
	if cfg.Cluster != nil {
		clusterFile, _ = json.Marshal(o.Cluster)
	}
	if err := st.SetCluster(clusterFile); err != nil {
		return err
	}
	if err := st.SetRendezvous(conn.LocalAddrPort(), o.Open, second); err != nil {
		return err
	}
	udp := conn.LocalAddrPort().String()
	if second.IsValid() {
		udp += "," + second.String()
	}
	attrs := []any{"version", o.Version, "udp", udp, "server_key", srv.PublicKey().String(), "open", o.Open, "fanout", o.Fanout, "store", st.Dir}
	if metrics != nil {
		attrs = append(attrs, "metrics", "http://"+metrics.Addr().String()+"/metrics")
	}
	if cfg.Cluster != nil {
		attrs = append(attrs, "cluster", o.Cluster.URLs, "node", o.Cluster.Name)
	}
	o.Logger.Info("rendezvous up", attrs...)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { control.Serve(ctx, ctl, srv.log, srv.answerControl) })
	if metrics != nil {
		wg.Go(func() { srv.serveMetrics(ctx, metrics) })
	}
	err = srv.Run(ctx)
	cancel()
	ctl.Close()
	wg.Wait()
	return err
}

// answerControl answers one control-socket request:
//
//	poke <repo-id>\n   → "ok\n" or "error <reason>\n"
//	status\n           → one JSON array of ClientStatus, then "\n"
//	stats\n            → one JSON object of Stats (the counters), then "\n"
//	tree\n             → one JSON array of RepoTree, then "\n"
//	cluster\n          → one JSON cluster.Status, then "\n" (with --cluster)
//	auth <repo> <key>\n → "ok\n": share the store's authorisation with the cluster
//	hold <json>\n      → "ok held|recorded <first> <last>\n" or "error <reason>\n"
//	                     (a store.HoldRequest: updates the hook could not write)
//	revoke <key>\n     → "ok dropped\n" (it was live) or "ok not live\n": Revoke
//	stream\n           → "ok\n", then frames both ways (stream.go), or "error <reason>\n";
//	                     the client sends no frame before it has read "ok"
func (s *Server) answerControl(w io.Writer, cmd, arg string) {
	switch cmd {
	case "stream":
		if c, ok := w.(net.Conn); ok {
			s.ServeStream(context.Background(), c)
		}
	case "hold":
		var req store.HoldRequest
		if err := json.Unmarshal([]byte(arg), &req); err != nil || len(req.Updates) == 0 || len(req.Updates) > store.MaxHoldUpdates {
			fmt.Fprintf(w, "error bad hold request (%d updates, %v)\n", len(req.Updates), err)
			return
		}
		evs, held, err := s.Hold(req.Repo, req.Updates)
		if err != nil {
			fmt.Fprintf(w, "error %v\n", err)
			return
		}
		how := "recorded"
		if held {
			how = "held"
		}
		fmt.Fprintf(w, "ok %s %d %d\n", how, evs[0].Seq, evs[len(evs)-1].Seq)
	case "revoke":
		key, err := wire.ParseKey(arg)
		if err != nil {
			fmt.Fprintf(w, "error %v\n", err)
			return
		}
		if s.Revoke(key) {
			io.WriteString(w, "ok dropped\n")
		} else {
			io.WriteString(w, "ok not live\n")
		}
	case "poke":
		if err := s.Poke(arg); err != nil {
			fmt.Fprintf(w, "error %v\n", err)
			return
		}
		io.WriteString(w, "ok\n")
	case "status":
		json.NewEncoder(w).Encode(s.Clients())
	case "stats":
		json.NewEncoder(w).Encode(s.Stats())
	case "tree":
		json.NewEncoder(w).Encode(s.Trees())
	case "cluster":
		st, ok := s.ClusterStatus(context.Background())
		if !ok {
			io.WriteString(w, "error this rendezvous runs without --cluster\n")
			return
		}
		json.NewEncoder(w).Encode(st)
	case "auth":
		// "auth <repo> <key>": gcn-heartbeat registered a client; share it.
		repo, hexKey, _ := strings.Cut(arg, " ")
		key, err := wire.ParseKey(hexKey)
		if err == nil {
			err = wire.ValidRepoID(repo)
		}
		if err == nil {
			err = s.ShareAuth(repo, key)
		}
		if err != nil {
			fmt.Fprintf(w, "error %v\n", err)
			return
		}
		io.WriteString(w, "ok\n")
	default:
		fmt.Fprintf(w, "error unknown command %q\n", cmd)
	}
}

// familyPairs splits --listen and --alt-listen, each one address or one
// per family ("198.18.0.10:3478,[2001:2::10]:3478"), into the addresses
// to listen on and the alternate address of each ("" for none). Two
// listen addresses must be IP literals of different families, the IPv6
// one specific ([::] already serves both families on one socket).
func familyPairs(listen, altListen string) (listens, alts []string, err error) {
	listens = strings.Split(listen, ",")
	var altList []string
	if altListen != "" {
		altList = strings.Split(altListen, ",")
	}
	if len(listens) > 2 || len(altList) > 2 {
		return nil, nil, fmt.Errorf("rendezvous: give one address, or one per family (IPv4,IPv6), to --listen and --alt-listen")
	}
	alts = make([]string, len(listens))
	if len(listens) == 1 {
		if len(altList) > 1 {
			return nil, nil, fmt.Errorf("rendezvous: --alt-listen %q gives two addresses for one --listen address", altListen)
		}
		if len(altList) == 1 {
			alts[0] = altList[0]
		}
		return listens, alts, nil
	}
	fam := func(s string) (v6 bool, err error) {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return false, fmt.Errorf("rendezvous: %q: with one address per family, give IP literals (%v)", s, err)
		}
		return !ap.Addr().Unmap().Is4(), nil
	}
	var fams [2]bool
	for i, l := range listens {
		if fams[i], err = fam(l); err != nil {
			return nil, nil, err
		}
		if ap := netip.MustParseAddrPort(l); fams[i] && ap.Addr().IsUnspecified() {
			return nil, nil, fmt.Errorf("rendezvous: --listen %q: [::] serves both families alone; give a specific IPv6 address beside an IPv4 one", listen)
		}
	}
	if fams[0] == fams[1] {
		return nil, nil, fmt.Errorf("rendezvous: --listen %q: two addresses of one family; give one IPv4 and one IPv6", listen)
	}
	for _, a := range altList {
		v6, err := fam(a)
		if err != nil {
			return nil, nil, err
		}
		i := 0
		if v6 != fams[0] {
			i = 1
		}
		if alts[i] != "" {
			return nil, nil, fmt.Errorf("rendezvous: --alt-listen %q: two addresses of one family", altListen)
		}
		alts[i] = a
	}
	return listens, alts, nil
}

// listenUDP opens one of the rendezvous's UDP sockets, with large buffers;
// on Linux, outside the netpoller (see udpconn).
func listenUDP(addr string) (udpconn.Conn, error) {
	c, err := udpconn.Listen(addr, udpconn.LargeBuffers(socketBuffer))
	if err != nil {
		return nil, err // "listen udp ADDR: bind: ...": it names the address
	}
	return c, nil
}

// socketBuffer is what the rendezvous asks for each way: a fan-out to 100k
// clients sends, and gets acks, far faster than the default 208 KiB absorbs.
const socketBuffer = 8 << 20

// listenGrid opens the alternate address and, when it differs from the
// primary in both IP and port, the two cross addresses RFC 5780 needs.
func listenGrid(primary udpconn.Conn, altListen string, log *slog.Logger) (*Grid, func(), error) {
	var g Grid
	var opened []udpconn.Conn
	closeAll := func() {
		for _, c := range opened {
			c.Close()
		}
	}
	listen := func(addr string) (udpconn.Conn, error) {
		c, err := listenUDP(addr)
		if err != nil {
			closeAll()
			return nil, err
		}
		opened = append(opened, c)
		return c, nil
	}
	alt, err := listen(altListen)
	if err != nil {
		return nil, nil, err
	}
	g[0][0], g[1][1] = primary, alt
	a, b := primary.LocalAddrPort(), alt.LocalAddrPort()
	if a.Addr().IsUnspecified() || b.Addr().IsUnspecified() || a.Addr() == b.Addr() || a.Port() == b.Port() {
		log.Warn("RFC 5780 NAT discovery needs --listen and --alt-listen on two specific IPs and two ports; serving plain STUN on both, so clients cannot test filtering or address-dependent mapping",
			"listen", a, "alt_listen", b)
		return &g, closeAll, nil
	}
	if g[0][1], err = listen(netip.AddrPortFrom(a.Addr(), b.Port()).String()); err != nil {
		return nil, nil, err
	}
	if g[1][0], err = listen(netip.AddrPortFrom(b.Addr(), a.Port()).String()); err != nil {
		return nil, nil, err
	}
	log.Info("RFC 5780 NAT discovery on", "addresses", []string{a.String(), netip.AddrPortFrom(a.Addr(), b.Port()).String(), netip.AddrPortFrom(b.Addr(), a.Port()).String(), b.String()})
	return &g, closeAll, nil
}
