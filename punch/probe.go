package punch

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v2"

	"github.com/gitchat/gcn-punch/internal/udpconn"
)

// NAT behaviour names (RFC 4787), as `gcn-punch probe` reports them.
const (
	EndpointIndependent     = "endpoint-independent"
	AddressDependent        = "address-dependent"
	AddressAndPortDependent = "address-and-port-dependent"
	probeTry                = 150 * time.Millisecond // first retransmission; doubled each time
	probeWait               = 700 * time.Millisecond // a test with no answer by then had none
	// reach6Wait is how long the first IPv6 request may go unanswered
	// before IPv6 counts as unreachable: a first datagram to a new
	// neighbour waits for neighbour discovery (a second or two after a
	// link comes up), and saying "no IPv6" wrongly costs more than
	// waiting.
	reach6Wait = 3 * time.Second
	// LifetimeStart is the first idle time --lifetime waits: a bound
	// below it measures nothing.
	LifetimeStart      = 10 * time.Second
	lifetimeMaxDefault = 4 * time.Minute
	lifetimeGrace      = time.Second
)

// ProbeOptions configure a probe.
type ProbeOptions struct {
	Server netip.AddrPort
	// Server6, when valid, is the rendezvous's IPv6 address: the probe
	// also tests IPv6 there (Server may be it too).
	Server6     netip.AddrPort
	Lifetime    bool          // also measure the mapping lifetime (slow)
	LifetimeMax time.Duration // bound on the lifetime measurement's waiting
	Progress    io.Writer     // progress while measuring the lifetime
}

// ProbeReport is what `gcn-punch probe --json` prints. Nil fields could not
// be tested; Untested says why.
type ProbeReport struct {
	Server         string   `json:"server"`
	OtherAddress   string   `json:"other_address,omitempty"`
	UDP            bool     `json:"udp"`
	Reflexive      []string `json:"reflexive"`
	PortPreserving *bool    `json:"port_preserving"`
	Mapping        *string  `json:"mapping"`
	Filtering      *string  `json:"filtering"`
	Hairpinning    *bool    `json:"hairpinning"`
	NoNAT          bool     `json:"no_nat"`
	LifetimeSec    *float64 `json:"mapping_lifetime_s,omitempty"`
	// LifetimeAtLeast: nothing expired within --lifetime-max, so the
	// lifetime is at least LifetimeSec.
	LifetimeAtLeast bool `json:"mapping_lifetime_at_least,omitempty"`
	// LifetimeUnder: even LifetimeSec idle was too long (the NAT forgets
	// within it).
	LifetimeUnder bool `json:"mapping_lifetime_under,omitempty"`
	// IPv6: whether the rendezvous answered over IPv6 (nil: not tested, no
	// IPv6 address for it), the address it saw, whether that is one of
	// this machine's own (a global address, no NAT66), and how the
	// firewall filters unsolicited inbound datagrams.
	IPv6           *bool        `json:"ipv6"`
	IPv6Reflexive  string       `json:"ipv6_reflexive,omitempty"`
	IPv6Global     bool         `json:"ipv6_global"`
	IPv6Filtering  *string      `json:"ipv6_filtering"`
	Untested       []string     `json:"untested,omitempty"`
	Verdict        ProbeVerdict `json:"verdict"`
	DurationMillis int64        `json:"duration_ms"`
}

// ProbeVerdict says, in plain words, what will work.
type ProbeVerdict struct {
	Push       string            `json:"push"`
	IPv6       string            `json:"ipv6"`
	Keepalive  string            `json:"keepalive"`
	PeerToPeer map[string]string `json:"peer_to_peer"`
}

// stunSocket is one local UDP socket of the probe with its own reader, so
// several transactions (and an incoming hairpinned request) can be told apart.
type stunSocket struct {
	conn udpconn.Conn
	*stunClient
}

// newSTUNSocket opens a socket of dst's family.
func newSTUNSocket(dst netip.AddrPort) (*stunSocket, error) {
	bind := "0.0.0.0:0"
	if dst.Addr().Is6() {
		bind = "[::]:0"
	}
	c, err := udpconn.Listen(bind, nil)
	if err != nil {
		return nil, err
	}
	s := &stunSocket{conn: c, stunClient: newSTUNClient(true)}
	go func() {
		pkts := []udpconn.Packet{{Buf: make([]byte, 1500)}}
		for {
			if _, err := c.ReadBatch(pkts); err != nil {
				return
			}
			s.handle(pkts[0].Buf)
		}
	}()
	return s, nil
}

func (s *stunSocket) local() netip.AddrPort { return s.conn.LocalAddrPort() }

// transact sends a Binding request with extra attributes to dst,
// retransmitting, and returns the answer or nil after probeWait.
func (s *stunSocket) transact(ctx context.Context, dst netip.AddrPort, extra ...stun.Setter) *stun.Message {
	return s.transactWithin(ctx, dst, probeWait, extra...)
}

// transactWithin is transact, waiting up to wait.
func (s *stunSocket) transactWithin(ctx context.Context, dst netip.AddrPort, wait time.Duration, extra ...stun.Setter) *stun.Message {
	req := stun.MustBuild(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, extra...)...)
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return s.stunClient.transact(ctx, s.conn, dst, req, probeTry, wait)
}

func otherAddress(m *stun.Message) netip.AddrPort {
	var oa stun.OtherAddress
	if m == nil || oa.GetFrom(m) != nil {
		return netip.AddrPort{}
	}
	ip, _ := netip.AddrFromSlice(oa.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(oa.Port))
}

type changeRequest uint32

func (c changeRequest) AddTo(m *stun.Message) error {
	m.Add(stun.AttrChangeRequest, binary.BigEndian.AppendUint32(nil, uint32(c)))
	return nil
}

type responsePort uint16

func (p responsePort) AddTo(m *stun.Message) error {
	m.Add(stun.AttrResponsePort, binary.BigEndian.AppendUint32(nil, uint32(p)<<16))
	return nil
}

// Probe diagnoses the NAT between this machine and the rendezvous, by the
// methods of RFC 5780. Without --lifetime it takes at most about 3 s.
func Probe(ctx context.Context, o ProbeOptions) (ProbeReport, error) {
	start := time.Now()
	r := ProbeReport{Server: o.Server.String(), Reflexive: []string{}}
	str := func(s string) *string { return &s }
	s1, err := newSTUNSocket(o.Server)
	if err != nil {
		return r, err
	}
	defer s1.conn.Close()
	var v6 sync.WaitGroup
	if o.Server6.IsValid() {
		v6.Go(func() { probeIPv6(ctx, o.Server6, &r) })
	}
	defer v6.Wait()

	// Test I: the mapping towards the primary address.
	resp := s1.transact(ctx, o.Server)
	if resp == nil {
		r.Untested = append(r.Untested, "everything: no answer from the rendezvous over UDP (blocked, or the server is down)")
		v6.Wait()
		r.Verdict = verdict(r)
		r.DurationMillis = time.Since(start).Milliseconds()
		return r, errors.New("no UDP answer from the rendezvous: nothing could be learned")
	}
	r.UDP = true
	m1 := mapped(resp)
	r.Reflexive = append(r.Reflexive, m1.String())
	preserved := m1.Port() == s1.local().Port()
	r.PortPreserving = &preserved
	other := otherAddress(resp)
	r.NoNAT = noNATFor(m1, preserved)
	noNAT := r.NoNAT

	var wg sync.WaitGroup
	var untestedMu sync.Mutex
	untested := func(why string) {
		untestedMu.Lock()
		r.Untested = append(r.Untested, why)
		untestedMu.Unlock()
	}
	// Hairpinning: a second socket sends to the first one's public address.
	if noNAT {
		untested("hairpinning: this machine has a public address (no NAT)")
	} else {
		wg.Go(func() {
			s4, err := newSTUNSocket(o.Server)
			if err != nil {
				return
			}
			defer s4.conn.Close()
			req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
			hp := false
			for i := 0; i < 4 && !hp; i++ {
				udpconn.WriteTo(s4.conn, req.Raw, m1)
				time.Sleep(probeTry)
				hp = s1.sawRequest(req.TransactionID)
			}
			r.Hairpinning = &hp
		})
	}
	if !other.IsValid() {
		untested("mapping and filtering: the rendezvous has no second address (start it with --alt-listen on another IP and port)")
	} else {
		r.OtherAddress = other.String()
		// Mapping: the same socket to the alternate IP, then to its port too.
		wg.Go(func() {
			m2 := mapped(s1.transact(ctx, netip.AddrPortFrom(other.Addr(), o.Server.Port())))
			switch {
			case !m2.IsValid():
				untested("mapping: no answer from the alternate address")
				return
			case m2 == m1:
				r.Mapping = str(EndpointIndependent)
				return
			}
			r.Reflexive = append(r.Reflexive, m2.String())
			m3 := mapped(s1.transact(ctx, other))
			switch {
			case !m3.IsValid():
				untested("mapping: no answer from the alternate address and port")
			case m3 == m2:
				r.Mapping = str(AddressDependent)
			default:
				r.Mapping = str(AddressAndPortDependent)
			}
		})
		// Filtering, on a fresh socket: an old mapping that already talked
		// to the alternate address would make the NAT look more open.
		wg.Go(func() {
			s3, err := newSTUNSocket(o.Server)
			if err != nil {
				return
			}
			defer s3.conn.Close()
			if s3.transact(ctx, o.Server) == nil {
				untested("filtering: the rendezvous stopped answering")
				return
			}
			r.Filtering = str(s3.filtering(ctx, o.Server))
		})
	}
	wg.Wait()
	v6.Wait()
	switch {
	case !o.Lifetime:
	case r.OtherAddress == "":
		r.Untested = append(r.Untested, "mapping lifetime: the rendezvous has no second address, and a single address does not answer RESPONSE-PORT, which the measurement needs (start it with --alt-listen on another IP and port); the daemon learns the lifetime by itself")
	default:
		if lt, ok := measureLifetime(ctx, o, s1); ok {
			r.LifetimeSec, r.LifetimeAtLeast, r.LifetimeUnder = &lt.secs, lt.atLeast, lt.under
		} else {
			r.Untested = append(r.Untested, "mapping lifetime: the rendezvous did not answer RESPONSE-PORT even without waiting, or stopped answering")
		}
	}
	r.Verdict = verdict(r)
	r.DurationMillis = time.Since(start).Milliseconds()
	return r, nil
}

// probeIPv6 tests IPv6 to the rendezvous at server: reachability, the
// address it sees, and, when it has a second address, the filtering of the
// firewall in between (a home router's IPv6 firewall usually lets in only
// what answers what went out, without NAT).
func probeIPv6(ctx context.Context, server netip.AddrPort, r *ProbeReport) {
	s, err := newSTUNSocket(server)
	if err != nil {
		no := false
		r.IPv6 = &no
		return
	}
	defer s.conn.Close()
	resp := s.transactWithin(ctx, server, reach6Wait)
	ok := resp != nil
	r.IPv6 = &ok
	if !ok {
		return
	}
	m := mapped(resp)
	r.IPv6Reflexive = m.String()
	r.IPv6Global = noNATFor(m, m.Port() == s.local().Port())
	if !otherAddress(resp).IsValid() {
		return
	}
	f := s.filtering(ctx, server)
	r.IPv6Filtering = &f
}

// filtering tells the filtering in front of s (RFC 5780 §4.4): whether an
// answer from the rendezvous's other IP and port (CHANGE-REQUEST IP and
// port), or from its other port only, gets through the mapping s opened.
func (s *stunSocket) filtering(ctx context.Context, server netip.AddrPort) string {
	switch {
	case s.transact(ctx, server, changeRequest(0x06)) != nil:
		return EndpointIndependent
	case s.transact(ctx, server, changeRequest(0x02)) != nil:
		return AddressDependent
	}
	return AddressAndPortDependent
}
