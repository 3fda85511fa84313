package rendezvous

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// Options are the `gcn-punch rendezvous` flags.
type Options struct {
	Listen    string
	AltListen string
	StoreDir  string
	Open      bool
	Logger    *slog.Logger
}

// ListenAndServe opens the UDP sockets and the control socket and serves
// until ctx is done.
func ListenAndServe(ctx context.Context, o Options) error {
	st, err := store.Open(o.StoreDir)
	if err != nil {
		return err
	}
	conn, err := listenUDP(o.Listen, o.Logger)
	if err != nil {
		return err
	}
	defer conn.Close()
	cfg := Config{Conn: conn, Store: st, Open: o.Open, Logger: o.Logger}
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
	ctl, err := listenControl(st.SocketPath())
	if err != nil {
		return err
	}
	defer ctl.Close()
	if err := store.WriteFileAtomic(st.AddrPath(), []byte(conn.LocalAddr().String()+"\n"), 0o644); err != nil {
		return err
	}
	mode := ModeRegistered
	if o.Open {
		mode = ModeOpen
	}
	if err := store.WriteFileAtomic(modePath(st), []byte(mode+"\n"), 0o644); err != nil {
		return err
	}
	o.Logger.Info("rendezvous up", "udp", conn.LocalAddr().String(), "server_key", srv.PublicKey().String(), "open", o.Open, "store", st.Dir)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { srv.serveControl(ctx, ctl) })
	err = srv.Run(ctx)
	cancel()
	ctl.Close()
	wg.Wait()
	return err
}

// Access modes, as written to STORE/rendezvous.mode for the hook.
const (
	ModeOpen       = "open"       // any key may follow any repository
	ModeRegistered = "registered" // only keys registered over SSH
)

func modePath(st *store.Store) string { return filepath.Join(st.Dir, "rendezvous.mode") }

// ReadMode returns the access mode the rendezvous last started with;
// registered when unknown, the safe default.
func ReadMode(st *store.Store) string {
	b, _ := os.ReadFile(modePath(st))
	if strings.TrimSpace(string(b)) == ModeOpen {
		return ModeOpen
	}
	return ModeRegistered
}

func listenControl(path string) (net.Listener, error) {
	// A socket left by a killed rendezvous is stale if nobody answers on it.
	if c, err := net.DialTimeout("unix", path, 100*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("rendezvous: another rendezvous is serving %s", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("rendezvous: control socket: %w", err)
	}
	os.Chmod(path, 0o660)
	return l, nil
}

// Control socket protocol, one request line per connection:
//
//	poke <repo-id>\n   → "ok\n" or "error <reason>\n"
//	status\n           → one JSON array of ClientStatus, then "\n"
//	stats\n            → one JSON object of Stats (the counters), then "\n"
func (s *Server) serveControl(ctx context.Context, l net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("control socket accept", "err", err)
			continue
		}
		wg.Go(func() {
			defer c.Close()
			// A control client gets a second; the hook itself waits far less.
			c.SetDeadline(time.Now().Add(time.Second))
			line, err := bufio.NewReaderSize(c, 256).ReadString('\n')
			if err != nil {
				return
			}
			cmd, arg, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
			switch cmd {
			case "poke":
				if err := s.Poke(arg); err != nil {
					fmt.Fprintf(c, "error %v\n", err)
					return
				}
				c.Write([]byte("ok\n"))
			case "status":
				json.NewEncoder(c).Encode(s.Clients())
			case "stats":
				json.NewEncoder(c).Encode(s.Stats())
			default:
				fmt.Fprintf(c, "error unknown command %q\n", cmd)
			}
		})
	}
}

// Dial sends one control request and returns the reply line(s).
func Dial(socket, request string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(request + "\n")); err != nil {
		return "", err
	}
	var sb strings.Builder
	_, err = bufio.NewReader(c).WriteTo(&sb)
	if err != nil && sb.Len() == 0 {
		return "", err
	}
	return sb.String(), nil
}

// listenUDP opens one of the rendezvous's UDP sockets, tuned, and outside
// the netpoller (see udpSocket).
func listenUDP(addr string, log *slog.Logger) (*udpSocket, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("rendezvous: listen %s: %w", addr, err)
	}
	growBuffers(pc, log)
	u, err := takeUDP(pc)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("rendezvous: listen %s: %w", addr, err)
	}
	return u, nil
}

// socketBuffer is what the rendezvous asks for each way: a fan-out to 100k
// clients sends, and gets acks, far faster than the default 208 KiB absorbs.
const socketBuffer = 8 << 20

// growBuffers enlarges the socket buffers (as root it may exceed the sysctl
// limits with SO_RCVBUFFORCE, otherwise it gets what they allow) and sets
// Don't Fragment on IPv4.
func growBuffers(conn net.PacketConn, log *slog.Logger) {
	uc, ok := conn.(*net.UDPConn)
	if !ok {
		return
	}
	uc.SetReadBuffer(socketBuffer)
	uc.SetWriteBuffer(socketBuffer)
	raw, err := uc.SyscallConn()
	if err != nil {
		return
	}
	v4 := false
	if local, _ := uc.LocalAddr().(*net.UDPAddr); local != nil && local.IP.To4() != nil {
		v4 = true
	}
	raw.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, socketBuffer)
		syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, socketBuffer)
		if v4 {
			// Don't Fragment on every datagram (ours are at most 1200 bytes,
			// below any real path MTU), without path-MTU errors. A datagram
			// that may be fragmented needs a fresh IP ID from a hash table
			// shared by all sockets: 3% of a 100k fan-out's CPU in a profile.
			// With DF the ID is simply zero (RFC 6864).
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_PROBE)
		}
	})
}

// listenGrid opens the alternate address and, when it differs from the
// primary in both IP and port, the two cross addresses RFC 5780 needs.
func listenGrid(primary net.PacketConn, altListen string, log *slog.Logger) (*Grid, func(), error) {
	var g Grid
	var opened []net.PacketConn
	closeAll := func() {
		for _, c := range opened {
			c.Close()
		}
	}
	listen := func(addr string) (net.PacketConn, error) {
		c, err := listenUDP(addr, log)
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
	a, _ := addrPort(primary.LocalAddr())
	b, _ := addrPort(alt.LocalAddr())
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
