package punch

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"
)

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
	v := ProbeVerdict{PeerToPeer: map[string]string{}, IPv6: verdictIPv6(r)}
	if !r.UDP {
		v.Push = "over SSH: UDP to the rendezvous gets no answer (blocked here, or the server is down); a daemon that follows a clone over SSH (--repo) turns to a stream over that SSH access within 8 s and gets its notifications there, and moves back to UDP when UDP answers"
		v.Keepalive = "none over UDP while it is blocked; the stream over SSH keeps itself alive"
		return v
	}
	v.Push = "yes: the rendezvous sends each notification down the path your NAT keeps open for the daemon's keepalives; no port needs opening"
	if r.LifetimeSec != nil && r.LifetimeUnder {
		v.Keepalive = fmt.Sprintf("your NAT forgot an idle mapping within %.0f s: the daemon keeps it with a keepalive every 2 s (its shortest), if that suffices; otherwise it turns to its SSH path", *r.LifetimeSec)
	} else if r.LifetimeSec != nil && r.LifetimeAtLeast {
		v.Keepalive = fmt.Sprintf("your NAT kept an idle mapping at least %.0f s (nothing expired within --lifetime-max): a keepalive every %.0f s suffices, and a longer one may; the daemon finds the real bound by itself", *r.LifetimeSec, *r.LifetimeSec*safetyMargin)
	} else if r.LifetimeSec != nil {
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

// verdictIPv6 says what IPv6 does for notifications.
func verdictIPv6(r ProbeReport) string {
	switch {
	case r.IPv6 == nil:
		return "not tested: no IPv6 address for the rendezvous (give --server a name with an AAAA record, or [IPv6]:PORT)"
	case !*r.IPv6:
		return "no: the rendezvous gets no answer over IPv6 from here (no IPv6 route, or a firewall drops it); use its IPv4 address"
	case r.IPv6Global:
		return "yes: a global address, no NAT; a daemon given the rendezvous's IPv6 address gets its notifications over IPv6, and its keepalives hold the firewall's pinhole open as they hold a NAT mapping"
	}
	return "yes, through a NAT66 or a translating firewall: a daemon given the rendezvous's IPv6 address gets its notifications over IPv6"
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
	fmt.Fprintf(w, "  IPv6 to the rendezvous  %s\n", yes(r.IPv6))
	if r.IPv6Reflexive != "" {
		global := "no (NAT66 or a translating firewall)"
		if r.IPv6Global {
			global = "yes, this machine's own"
		}
		fmt.Fprintf(w, "  IPv6 public address     %s (global: %s)\n", r.IPv6Reflexive, global)
		fmt.Fprintf(w, "  IPv6 filtering          %s\n", val(r.IPv6Filtering))
	}
	if r.LifetimeSec != nil && r.LifetimeUnder {
		fmt.Fprintf(w, "  mapping lifetime        under %.0f s idle\n", *r.LifetimeSec)
	} else if r.LifetimeSec != nil && r.LifetimeAtLeast {
		fmt.Fprintf(w, "  mapping lifetime        at least %.0f s idle (nothing expired within --lifetime-max)\n", *r.LifetimeSec)
	} else if r.LifetimeSec != nil {
		fmt.Fprintf(w, "  mapping lifetime        %.0f s idle\n", *r.LifetimeSec)
	}
	fmt.Fprintf(w, "\nWill push notifications reach this machine?\n  %s\nOver IPv6:\n  %s\nKeepalive:\n  %s\n", r.Verdict.Push, r.Verdict.IPv6, r.Verdict.Keepalive)
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
