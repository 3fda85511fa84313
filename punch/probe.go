package punch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
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
	lifetimeStart           = 10 * time.Second
	lifetimeMaxDefault      = 4 * time.Minute
	lifetimeGrace           = time.Second
)

// ProbeOptions configure a probe.
type ProbeOptions struct {
	Server      netip.AddrPort
	Lifetime    bool          // also measure the mapping lifetime (slow)
	LifetimeMax time.Duration // bound on the lifetime measurement's waiting
	Progress    io.Writer     // progress while measuring the lifetime
}

// ProbeReport is what `gcn-punch probe --json` prints. Nil fields could not
// be tested; Untested says why.
type ProbeReport struct {
	Server         string       `json:"server"`
	OtherAddress   string       `json:"other_address,omitempty"`
	UDP            bool         `json:"udp"`
	Reflexive      []string     `json:"reflexive"`
	PortPreserving *bool        `json:"port_preserving"`
	Mapping        *string      `json:"mapping"`
	Filtering      *string      `json:"filtering"`
	Hairpinning    *bool        `json:"hairpinning"`
	NoNAT          bool         `json:"no_nat"`
	LifetimeSec    *float64     `json:"mapping_lifetime_s,omitempty"`
	Untested       []string     `json:"untested,omitempty"`
	Verdict        ProbeVerdict `json:"verdict"`
	DurationMillis int64        `json:"duration_ms"`
}

// ProbeVerdict says, in plain words, what will work.
type ProbeVerdict struct {
	Push       string            `json:"push"`
	Keepalive  string            `json:"keepalive"`
	PeerToPeer map[string]string `json:"peer_to_peer"`
}

// stunSocket is one local UDP socket of the probe with its own reader, so
// several transactions (and an incoming hairpinned request) can be told apart.
type stunSocket struct {
	conn udpconn.Conn
	*stunClient
}

func newSTUNSocket() (*stunSocket, error) {
	c, err := udpconn.Listen("0.0.0.0:0", nil)
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
	req := stun.MustBuild(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, extra...)...)
	ctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	return s.stunClient.transact(ctx, s.conn, dst, req, probeTry, probeWait)
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
	s1, err := newSTUNSocket()
	if err != nil {
		return r, err
	}
	defer s1.conn.Close()

	// Test I: the mapping towards the primary address.
	resp := s1.transact(ctx, o.Server)
	if resp == nil {
		r.Untested = append(r.Untested, "everything: no answer from the rendezvous over UDP (blocked, or the server is down)")
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
			s4, err := newSTUNSocket()
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
			s3, err := newSTUNSocket()
			if err != nil {
				return
			}
			defer s3.conn.Close()
			if s3.transact(ctx, o.Server) == nil {
				untested("filtering: the rendezvous stopped answering")
				return
			}
			switch {
			case s3.transact(ctx, o.Server, changeRequest(0x06)) != nil:
				r.Filtering = str(EndpointIndependent)
			case s3.transact(ctx, o.Server, changeRequest(0x02)) != nil:
				r.Filtering = str(AddressDependent)
			default:
				r.Filtering = str(AddressAndPortDependent)
			}
		})
	}
	wg.Wait()
	if o.Lifetime {
		if lt, ok := measureLifetime(ctx, o, s1); ok {
			r.LifetimeSec = &lt
		} else {
			r.Untested = append(r.Untested, "mapping lifetime: the rendezvous does not honour RESPONSE-PORT, or no answer came back")
		}
	}
	r.Verdict = verdict(r)
	r.DurationMillis = time.Since(start).Milliseconds()
	return r, nil
}

// measureLifetime finds how long the NAT keeps an idle mapping (RFC 5780
// §4.6): after waiting T, a fresh socket asks the rendezvous to answer to the
// first socket's public port (RESPONSE-PORT); the answer gets through only
// if the mapping is still there. T doubles from 10 s, then one bisection.
func measureLifetime(ctx context.Context, o ProbeOptions, s1 *stunSocket) (float64, bool) {
	max := o.LifetimeMax
	if max <= 0 {
		max = lifetimeMaxDefault
	}
	progress := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	survives := func(t time.Duration) (bool, bool) {
		m1 := mapped(s1.transact(ctx, o.Server)) // (re)open the mapping
		if !m1.IsValid() {
			return false, false
		}
		progress("  mapping lifetime: idle %v ...", t)
		select {
		case <-ctx.Done():
			return false, false
		case <-time.After(t):
		}
		s5, err := newSTUNSocket()
		if err != nil {
			return false, false
		}
		defer s5.conn.Close()
		req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, responsePort(m1.Port()))
		// The answer goes to s1, so watch for its transaction there.
		ch, done := s1.expect(req.TransactionID)
		defer done()
		for i := 0; i < 3; i++ {
			udpconn.WriteTo(s5.conn, req.Raw, o.Server)
			select {
			case <-ch:
				progress("  ... kept")
				return true, true
			case <-time.After(lifetimeGrace / 3):
			}
		}
		progress("  ... gone")
		return false, true
	}
	var lo, hi time.Duration
	var waited time.Duration
	for t := lifetimeStart; waited+t <= max; t *= 2 {
		ok, valid := survives(t)
		if !valid {
			return 0, false
		}
		waited += t
		if !ok {
			hi = t
			break
		}
		lo = t
	}
	if hi == 0 {
		return lo.Seconds(), lo > 0 // kept for as long as we waited: at least lo
	}
	if mid := (lo + hi) / 2; lo > 0 && waited+mid <= max {
		if ok, valid := survives(mid); valid && ok {
			lo = mid
		}
	}
	return lo.Seconds(), true
}

// kinds are the other side's NATs a peer-to-peer path is judged against.
var kinds = []struct{ name, mapping, filtering string }{
	{"full cone", EndpointIndependent, EndpointIndependent},
	{"address-restricted cone", EndpointIndependent, AddressDependent},
	{"port-restricted cone", EndpointIndependent, AddressAndPortDependent},
	{"symmetric", AddressAndPortDependent, AddressAndPortDependent},
}

// punchable says whether two NATs can be hole-punched directly: a side
// whose mapping varies by destination can only be reached by a peer whose
// filtering does not care about the port.
func punchable(m1, f1, m2, f2 string) bool {
	v1, v2 := m1 != EndpointIndependent, m2 != EndpointIndependent
	switch {
	case !v1 && !v2:
		return true
	case v1 && v2:
		return false
	case v1:
		return f2 != AddressAndPortDependent
	default:
		return f1 != AddressAndPortDependent
	}
}

func verdict(r ProbeReport) ProbeVerdict {
	v := ProbeVerdict{PeerToPeer: map[string]string{}}
	if !r.UDP {
		v.Push = "no: UDP to the rendezvous gets no answer (blocked here, or the server is down); notifications cannot arrive until that changes"
		v.Keepalive = "none can help while UDP is blocked"
		return v
	}
	v.Push = "yes: the rendezvous sends each notification down the path your NAT keeps open for the daemon's keepalives; no port needs opening"
	if r.LifetimeSec != nil {
		iv := time.Duration(*r.LifetimeSec * safetyMargin * float64(time.Second)).Round(time.Second)
		v.Keepalive = fmt.Sprintf("your NAT kept an idle mapping %.0f s: a keepalive every %v suffices (the daemon finds this by itself)", *r.LifetimeSec, iv)
	} else {
		v.Keepalive = "the daemon learns your NAT's mapping lifetime by itself, starting at 25 s (measure it here with --lifetime)"
	}
	if r.Mapping == nil || r.Filtering == nil {
		for _, k := range kinds {
			v.PeerToPeer[k.name] = "unknown: mapping or filtering could not be tested"
		}
		return v
	}
	for _, k := range kinds {
		if punchable(*r.Mapping, *r.Filtering, k.mapping, k.filtering) {
			v.PeerToPeer[k.name] = "direct (hole punching works)"
		} else {
			v.PeerToPeer[k.name] = "needs a relay; notifications still arrive through the rendezvous"
		}
	}
	return v
}

// WriteHuman prints the report for a person.
func (r ProbeReport) WriteHuman(w io.Writer) {
	val := func(s *string) string {
		if s == nil {
			return "not tested"
		}
		return *s
	}
	yes := func(b *bool) string {
		switch {
		case b == nil:
			return "not tested"
		case *b:
			return "yes"
		}
		return "no"
	}
	fmt.Fprintf(w, "gcn-punch probe: rendezvous %s", r.Server)
	if r.OtherAddress != "" {
		fmt.Fprintf(w, " (second address %s)", r.OtherAddress)
	}
	fmt.Fprintf(w, ", %d ms\n\n", r.DurationMillis)
	fmt.Fprintf(w, "  UDP to the rendezvous   %s\n", yes(&r.UDP))
	if len(r.Reflexive) > 0 {
		fmt.Fprintf(w, "  public address          %s (port preserved: %s)\n", strings.Join(r.Reflexive, ", "), yes(r.PortPreserving))
	}
	if r.NoNAT {
		fmt.Fprintln(w, "                          (this machine's own address: no NAT in between)")
	}
	fmt.Fprintf(w, "  mapping                 %s\n", val(r.Mapping))
	fmt.Fprintf(w, "  filtering               %s\n", val(r.Filtering))
	if r.Mapping != nil && r.Filtering != nil && !r.NoNAT {
		for _, k := range kinds {
			if k.mapping == *r.Mapping && k.filtering == *r.Filtering {
				fmt.Fprintf(w, "                          (a %s NAT)\n", k.name)
			}
		}
	}
	fmt.Fprintf(w, "  hairpinning             %s\n", yes(r.Hairpinning))
	if r.LifetimeSec != nil {
		fmt.Fprintf(w, "  mapping lifetime        %.0f s idle\n", *r.LifetimeSec)
	}
	fmt.Fprintf(w, "\nWill push notifications reach this machine?\n  %s\nKeepalive:\n  %s\n", r.Verdict.Push, r.Verdict.Keepalive)
	if len(r.Verdict.PeerToPeer) > 0 {
		fmt.Fprintln(w, "Peer-to-peer with a client behind:")
		for _, k := range kinds {
			fmt.Fprintf(w, "  %-25s %s\n", k.name, r.Verdict.PeerToPeer[k.name])
		}
	}
	if len(r.Untested) > 0 {
		fmt.Fprintln(w, "\nCould not test:")
		for _, u := range r.Untested {
			fmt.Fprintf(w, "  - %s\n", u)
		}
	}
}

func noNATFor(m1 netip.AddrPort, preserved bool) bool { return preserved && isLocalAddr(m1.Addr()) }

// isLocalAddr reports whether ip is one of this machine's own addresses:
// then there is no NAT between it and the rendezvous.
func isLocalAddr(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil && pfx.Addr().Unmap() == ip {
			return true
		}
	}
	return false
}
