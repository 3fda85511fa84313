package punch

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/logging"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// ICE (pion/ice/v2) on the daemon's one UDP socket. The read loop stays the
// only reader: it hands ICE the STUN datagrams that are not answers to the
// daemon's own requests, through muxConn, and ICE writes through the same
// socket. ICE only finds the path; notifications travel as gcn datagrams to
// the address it selects.

// ICE timing, with reasons.
const (
	// iceCheckInterval paces connectivity checks: a check every 50 ms makes
	// a path in about two round trips, yet 8 candidate pairs cost at most
	// 160 small datagrams a second while checking.
	iceCheckInterval = 50 * time.Millisecond
	// iceConnectTimeout bounds forming a path: past it the edge is
	// reported failed and the rendezvous moves the child.
	iceConnectTimeout = 15 * time.Second
	// A selected path is kept open by consent checks every half keepalive
	// interval (the NAT's mapping must not idle out), at least every
	// iceMinConsent. It is suspect after missing two checks and gone after
	// missing four more: ICE's timeouts must exceed the check interval, or an
	// idle path would be declared dead between two checks. Nothing waits on
	// this: a child's events fall back to the rendezvous after its tree
	// deadline, and a parent that answers nobody leaves the tree.
	iceMinConsent     = time.Second
	iceSuspectChecks  = 2
	iceGoneAfterCheck = 4
	// muxQueue is how many STUN datagrams wait for ICE; past it, like a
	// full socket buffer, they are dropped (ICE retransmits its checks).
	muxQueue = 256
)

// muxConn is the net.PacketConn the ICE mux reads and writes: reads come
// from the daemon's read loop (copies, dropped when ICE falls behind, never
// blocking the loop), writes go to the real socket, and closing it never
// closes the real socket.
type muxConn struct {
	conn  udpconn.Conn
	local *net.UDPAddr
	in    chan muxDatagram
	done  chan struct{}
	once  sync.Once
}

type muxDatagram struct {
	b    []byte
	from netip.AddrPort
}

func newMuxConn(conn udpconn.Conn) *muxConn {
	return &muxConn{conn: conn, local: net.UDPAddrFromAddrPort(conn.LocalAddrPort()),
		in: make(chan muxDatagram, muxQueue), done: make(chan struct{})}
}

// feed hands ICE one datagram; it reports false when ICE's queue was full.
func (m *muxConn) feed(b []byte, from netip.AddrPort) bool {
	select {
	case m.in <- muxDatagram{append([]byte(nil), b...), from}:
		return true
	default:
		return false
	}
}

func (m *muxConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case d := <-m.in:
		return copy(b, d.b), net.UDPAddrFromAddrPort(d.from), nil
	case <-m.done:
		return 0, nil, io.EOF // the mux's worker ends quietly on EOF
	}
}

func (m *muxConn) WriteTo(b []byte, to net.Addr) (int, error) {
	ua, ok := to.(*net.UDPAddr)
	if !ok {
		return 0, net.InvalidAddrError("not a UDP address")
	}
	if err := udpconn.WriteTo(m.conn, b, udpconn.Unmap(ua.AddrPort())); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (m *muxConn) Close() error {
	m.once.Do(func() { close(m.done) })
	return nil
}

func (m *muxConn) LocalAddr() net.Addr              { return m.local }
func (m *muxConn) SetDeadline(time.Time) error      { return nil }
func (m *muxConn) SetReadDeadline(time.Time) error  { return nil }
func (m *muxConn) SetWriteDeadline(time.Time) error { return nil }

// iceLogs silences pion's own logging: the daemon logs what an edge did.
var iceLogs = func() logging.LoggerFactory {
	f := logging.NewDefaultLoggerFactory()
	f.DefaultLogLevel = logging.LogLevelDisabled
	return f
}()

// newAgent makes the ICE agent of one edge, with the credentials the
// rendezvous made for it, host candidates from the shared socket only (the
// reflexive address comes from the rendezvous as a remote candidate of the
// other side), no mDNS, and no waiting before a pair may be chosen.
func newAgent(mux ice.UDPMux, e *wire.Edge, keepalive time.Duration) (*ice.Agent, error) {
	zero := time.Duration(0)
	check := iceCheckInterval
	ka, disc, failed := iceConsent(keepalive)
	a, err := ice.NewAgent(&ice.AgentConfig{
		UDPMux:                 mux,
		NetworkTypes:           []ice.NetworkType{ice.NetworkTypeUDP4, ice.NetworkTypeUDP6},
		CandidateTypes:         []ice.CandidateType{ice.CandidateTypeHost},
		MulticastDNSMode:       ice.MulticastDNSModeDisabled,
		LocalUfrag:             e.LocalUfrag,
		LocalPwd:               e.LocalPwd,
		CheckInterval:          &check,
		KeepaliveInterval:      &ka,
		DisconnectedTimeout:    &disc,
		FailedTimeout:          &failed,
		HostAcceptanceMinWait:  &zero,
		SrflxAcceptanceMinWait: &zero,
		PrflxAcceptanceMinWait: &zero,
		RelayAcceptanceMinWait: &zero,
		IncludeLoopback:        true,
		LoggerFactory:          iceLogs,
	})
	if err != nil {
		return nil, err
	}
	if err := a.OnCandidate(func(ice.Candidate) {}); err != nil {
		a.Close()
		return nil, err
	}
	if err := a.GatherCandidates(); err != nil {
		a.Close()
		return nil, err
	}
	for _, c := range e.Candidates {
		rc, err := remoteCandidate(c)
		if err != nil {
			continue
		}
		a.AddRemoteCandidate(rc)
	}
	return a, nil
}

// iceConsent derives from the keepalive interval ICE's consent-check
// interval and its disconnected and failed timeouts (pion counts the failed
// one on top of the disconnected one).
func iceConsent(keepalive time.Duration) (every, suspect, failed time.Duration) {
	every = max(keepalive/2, iceMinConsent)
	return every, iceSuspectChecks*every + every/2, iceGoneAfterCheck * every
}

// remoteCandidate turns a signalled candidate into ICE's.
func remoteCandidate(c wire.Candidate) (ice.Candidate, error) {
	ip, port := c.Addr.Addr().Unmap().String(), int(c.Addr.Port())
	if c.Kind == wire.CandSrflx {
		return ice.NewCandidateServerReflexive(&ice.CandidateServerReflexiveConfig{Network: "udp", Address: ip, Port: port, Component: 1, RelAddr: ip, RelPort: port})
	}
	return ice.NewCandidateHost(&ice.CandidateHostConfig{Network: "udp", Address: ip, Port: port, Component: 1})
}

// selected is the remote end of an agent's selected pair, its kind and the
// pair's round-trip time.
func selected(a *ice.Agent) (addr netip.AddrPort, kind byte, rtt time.Duration, ok bool) {
	pair, err := a.GetSelectedCandidatePair()
	if err != nil || pair == nil {
		return addr, 0, 0, false
	}
	ip, err := netip.ParseAddr(pair.Remote.Address())
	if err != nil {
		return addr, 0, 0, false
	}
	addr = netip.AddrPortFrom(ip.Unmap(), uint16(pair.Remote.Port()))
	switch pair.Remote.Type() {
	case ice.CandidateTypeHost:
		kind = wire.CandHost
	case ice.CandidateTypeServerReflexive:
		kind = wire.CandSrflx
	case ice.CandidateTypePeerReflexive:
		kind = wire.CandPrflx
	case ice.CandidateTypeRelay:
		kind = wire.CandRelay
	}
	if st, ok := a.GetSelectedCandidatePairStats(); ok {
		rtt = time.Duration(st.CurrentRoundTripTime * float64(time.Second))
	}
	return addr, kind, rtt, true
}
