package rendezvous

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/rendezvous/store"
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
	Logger     *slog.Logger
}

// ListenAndServe opens the UDP sockets and the control socket and serves
// until ctx is done.
func ListenAndServe(ctx context.Context, o Options) error {
	st, err := store.Open(o.StoreDir)
	if err != nil {
		return err
	}
	conn, err := listenUDP(o.Listen)
	if err != nil {
		return err
	}
	defer conn.Close()
	cfg := Config{Conn: conn, Store: st, Open: o.Open, Fanout: o.Fanout, NewKeyRate: o.NewKeyRate, MaxStreams: o.MaxStreams, Logger: o.Logger}
	if o.AltListen != "" {
		grid, closeAll, err := listenGrid(conn, o.AltListen, o.Logger)
		if err != nil {
			return err
		}
		defer closeAll()
		cfg.Grid = grid
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
	if err := st.SetRendezvous(conn.LocalAddrPort(), o.Open); err != nil {
		return err
	}
	o.Logger.Info("rendezvous up", "udp", conn.LocalAddrPort().String(), "server_key", srv.PublicKey().String(), "open", o.Open, "fanout", o.Fanout, "store", st.Dir)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { control.Serve(ctx, ctl, srv.log, srv.answerControl) })
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
//	hold <json>\n      → "ok held|recorded <first> <last>\n" or "error <reason>\n"
//	                     (a store.HoldRequest: updates the hook could not write)
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
	default:
		fmt.Fprintf(w, "error unknown command %q\n", cmd)
	}
}

// listenUDP opens one of the rendezvous's UDP sockets, with large buffers;
// on Linux, outside the netpoller (see udpconn).
func listenUDP(addr string) (udpconn.Conn, error) {
	c, err := udpconn.Listen(addr, udpconn.LargeBuffers(socketBuffer))
	if err != nil {
		return nil, fmt.Errorf("rendezvous: listen %s: %w", addr, err)
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
