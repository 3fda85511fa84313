package netsim

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func (l *Lab) addRouter(i int, spec RouterSpec) (*Router, error) {
	if spec.Clients < 1 {
		spec.Clients = 1
	}
	if (spec.Kind == FullCone || spec.Kind == AddressRestricted) && spec.Clients != 1 {
		return nil, fmt.Errorf("netsim: a %s router forwards to exactly one client", spec.Kind)
	}
	if (spec.IPv6 || spec.IPv6Only) && spec.CGNAT {
		return nil, fmt.Errorf("netsim: IPv6 behind a carrier NAT is not emulated")
	}
	spec.IPv6 = spec.IPv6 || spec.IPv6Only
	if spec.Hairpin && spec.Kind == Symmetric {
		return nil, fmt.Errorf("netsim: hairpinning is emulated for endpoint-independent mapping only")
	}
	r := &Router{Spec: spec, lab: l, LANNet: fmt.Sprintf("198.19.%d.0/24", i)}
	r.NS = l.ns(fmt.Sprintf("r%d", i))
	if err := l.addNS(r.NS); err != nil {
		return nil, err
	}
	if spec.CGNAT {
		// home router wan0 → carrier NAT in0 (198.19.100+i.0/24) → WAN.
		r.CGN = &Host{NS: l.ns(fmt.Sprintf("cgn%d", i)), Addr: netip.MustParseAddr(fmt.Sprintf("198.18.0.%d", 50+i))}
		if err := l.addNS(r.CGN.NS); err != nil {
			return nil, err
		}
		if err := l.wanLink(r.CGN.NS, "wan0", fmt.Sprintf("c%d", i), r.CGN.Addr.String()+"/24"); err != nil {
			return nil, err
		}
		inner := fmt.Sprintf("198.19.%d", 100+i)
		if err := sh("ip", "-n", r.NS, "link", "add", "wan0", "type", "veth", "peer", "name", "in0", "netns", r.CGN.NS); err != nil {
			return nil, err
		}
		r.Addr = netip.MustParseAddr(inner + ".2")
		for _, c := range [][]string{
			{r.CGN.NS, "ip", "addr", "add", inner + ".1/24", "dev", "in0"},
			{r.CGN.NS, "ip", "link", "set", "in0", "up"},
			{r.NS, "ip", "addr", "add", inner + ".2/24", "dev", "wan0"},
			{r.NS, "ip", "link", "set", "wan0", "up"},
			{r.NS, "ip", "route", "add", "default", "via", inner + ".1"},
			{r.CGN.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		} {
			if err := inNS(c[0], c[1], c[2:]...); err != nil {
				return nil, err
			}
		}
		// The carrier NAT is a plain Linux masquerade: port-restricted cone.
		if err := nftApply(r.CGN.NS, "table ip gcn {\n chain postrouting {\n  type nat hook postrouting priority 100; policy accept;\n  oifname \"wan0\" masquerade\n }\n"+
			" chain input {\n  type filter hook input priority 0; policy accept;\n  "+wanInputDrop+"\n }\n}\n"); err != nil {
			return nil, err
		}
	} else {
		r.Addr = netip.MustParseAddr(fmt.Sprintf("198.18.0.%d", 10+i))
		if err := l.wanLink(r.NS, "wan0", fmt.Sprintf("r%d", i), r.Addr.String()+"/24"); err != nil {
			return nil, err
		}
	}
	lanGW := fmt.Sprintf("198.19.%d.1", i)
	for _, c := range [][]string{
		{"ip", "link", "add", "lan0", "type", "bridge"},
		{"ip", "addr", "add", lanGW + "/24", "dev", "lan0"},
		{"ip", "link", "set", "lan0", "up"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		if err := inNS(r.NS, c[0], c[1:]...); err != nil {
			return nil, err
		}
	}
	for j := 1; j <= spec.Clients; j++ {
		h := &Host{NS: l.ns(fmt.Sprintf("r%dc%d", i, j)), Addr: netip.MustParseAddr(fmt.Sprintf("198.19.%d.%d", i, 10+j))}
		if err := l.addNS(h.NS); err != nil {
			return nil, err
		}
		port := fmt.Sprintf("c%d", j)
		if err := sh("ip", "-n", h.NS, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", r.NS); err != nil {
			return nil, err
		}
		for _, c := range [][]string{
			{r.NS, "ip", "link", "set", port, "master", "lan0", "up"},
			{h.NS, "ip", "addr", "add", h.Addr.String() + "/24", "dev", "eth0"},
			{h.NS, "ip", "link", "set", "eth0", "up"},
			{h.NS, "ip", "route", "add", "default", "via", lanGW},
		} {
			if err := inNS(c[0], c[1], c[2:]...); err != nil {
				return nil, err
			}
		}
		if spec.IPv6 {
			h.Addr6 = netip.MustParseAddr(fmt.Sprintf("2001:2:%d::%d", i, 10+j))
			for _, c := range [][]string{
				{"ip", "-6", "addr", "add", h.Addr6.String() + "/64", "dev", "eth0", "nodad"},
				{"ip", "-6", "route", "add", "default", "via", fmt.Sprintf("2001:2:%d::1", i)},
			} {
				if err := inNS(h.NS, c[0], c[1:]...); err != nil {
					return nil, err
				}
			}
			if spec.IPv6Only {
				if err := inNS(h.NS, "ip", "route", "del", "default"); err != nil {
					return nil, err
				}
			}
		}
		r.Clients = append(r.Clients, h)
	}
	if spec.IPv6 {
		if err := r.addIPv6(i); err != nil {
			return nil, err
		}
	}
	if spec.UDPTimeout > 0 {
		if err := r.SetUDPTimeout(spec.UDPTimeout); err != nil {
			return nil, err
		}
	}
	return r, r.apply()
}

// addIPv6 gives router i its IPv6 side: 2001:2::2i on the WAN, a route
// from the server back to its LAN, forwarding, and the stateful firewall.
func (r *Router) addIPv6(i int) error {
	r.Addr6 = netip.MustParseAddr(fmt.Sprintf("2001:2::%x", 0x20+i))
	for _, c := range [][]string{
		{r.NS, "ip", "-6", "addr", "add", r.Addr6.String() + "/64", "dev", "wan0", "nodad"},
		{r.NS, "ip", "-6", "addr", "add", fmt.Sprintf("2001:2:%d::1/64", i), "dev", "lan0", "nodad"},
		{r.NS, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{r.lab.Server.NS, "ip", "-6", "route", "add", fmt.Sprintf("2001:2:%d::/64", i), "via", r.Addr6.String()},
	} {
		if err := inNS(c[0], c[1], c[2:]...); err != nil {
			return err
		}
	}
	// The WAN has no upstream router: each IPv6 router gets a route to
	// every other's LAN, so that their clients reach each other.
	for j, o := range r.lab.Routers {
		if !o.Addr6.IsValid() {
			continue
		}
		if err := inNS(o.NS, "ip", "-6", "route", "add", fmt.Sprintf("2001:2:%d::/64", i), "via", r.Addr6.String()); err != nil {
			return err
		}
		if err := inNS(r.NS, "ip", "-6", "route", "add", fmt.Sprintf("2001:2:%d::/64", j+1), "via", o.Addr6.String()); err != nil {
			return err
		}
	}
	// The usual home default: LAN to WAN, answers and related ICMPv6 back,
	// nothing unsolicited in. Its UDP idle timeout is conntrack's, as for v4.
	return nftApply6(r.NS, "table ip6 gcn6 {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n"+
		"  ct state established,related accept\n  iifname \"lan0\" oifname \"wan0\" accept\n  meta l4proto ipv6-icmp accept\n }\n}\n")
}

// nftApply6 loads the router's IPv6 table.
func nftApply6(ns, rules string) error {
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s\n%s", ns, err, bytes.TrimSpace(out), rules)
	}
	return nil
}

// SetUDPTimeout sets the router's conntrack UDP timeouts (the mapping lifetime).
func (r *Router) SetUDPTimeout(d time.Duration) error {
	// Conntrack's sysctls appear in a namespace once it tracks something:
	// load the NAT rules first if needed.
	r.mu.Lock()
	r.Spec.UDPTimeout = d
	r.mu.Unlock()
	if err := r.apply(); err != nil {
		return err
	}
	s := strconv.Itoa(int(d.Seconds()))
	return inNS(r.NS, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout="+s, "net.netfilter.nf_conntrack_udp_timeout_stream="+s)
}

// SetBlockIPv6 starts or stops dropping everything the router forwards
// over IPv6, both ways: the IPv6 side of a dual-stack line going down
// while IPv4 stays up.
func (r *Router) SetBlockIPv6(block bool) error {
	if !block {
		return inNS(r.NS, "nft", "delete", "table", "ip6", "gcn6cut")
	}
	return nftApply6(r.NS, "table ip6 gcn6cut {\n chain forward {\n  type filter hook forward priority -1; policy drop;\n }\n}\n")
}

// SetBlockUDP starts or stops dropping all forwarded UDP, as a network that
// blocks UDP does (TCP, and so SSH, passes either way).
func (r *Router) SetBlockUDP(block bool) error {
	r.mu.Lock()
	r.Spec.BlockUDP = block
	r.mu.Unlock()
	return r.apply()
}

// ruleset renders the router's nftables rules from its spec.
// wanInputDrop drops unsolicited UDP arriving on the WAN for the router
// itself, as home routers' firewalls do. It matters for hole punching: the
// drop comes before conntrack commits the packet, so a peer's first check,
// arriving before this side has sent anything, leaves no entry behind.
// Without it, that entry would hold the mapping's public port and tuple, and
// the masquerade would give this side's own checks another port (a
// conntrack clash): two address-and-port-dependent NATs would then never
// meet.
const wanInputDrop = `iifname "wan0" meta l4proto udp drop`

func (r *Router) ruleset() string {
	client := r.Clients[0].Addr.String()
	var pre, post, fwd []string
	post = append(post, `oifname "wan0" masquerade`)
	if r.Spec.Kind == Symmetric {
		post = []string{`oifname "wan0" masquerade fully-random`}
	}
	if r.rebound {
		// After a reboot the router picks new external ports.
		post = []string{`oifname "wan0" ip protocol udp masquerade to :40000-49999 random`, `oifname "wan0" masquerade`}
	}
	sets := ""
	switch r.Spec.Kind {
	case FullCone:
		pre = append(pre, `iifname "wan0" udp dport 1024-65535 dnat to `+client)
	case AddressRestricted:
		timeout := r.Spec.UDPTimeout
		if timeout == 0 {
			timeout = 120 * time.Second // Linux's stream timeout
		}
		sets = fmt.Sprintf(" set seen {\n  type inet_service . ipv4_addr\n  flags dynamic,timeout\n  timeout %ds\n }\n", int(timeout.Seconds()))
		fwd = append(fwd, `iifname "lan0" oifname "wan0" ip saddr `+client+` update @seen { udp sport . ip daddr }`)
		pre = append(pre, `iifname "wan0" udp dport . ip saddr @seen dnat to `+client)
	}
	if r.Spec.Hairpin {
		// Learn public port → client from outbound traffic (the port is
		// kept by these kinds), send LAN packets for the public address
		// back in, and make them come from the public address.
		timeout := r.Spec.UDPTimeout
		if timeout == 0 {
			timeout = 120 * time.Second
		}
		sets += fmt.Sprintf(" map hairpin {\n  type inet_service : ipv4_addr\n  flags dynamic,timeout\n  timeout %ds\n }\n", int(timeout.Seconds()))
		fwd = append(fwd, `iifname "lan0" oifname "wan0" update @hairpin { udp sport : ip saddr }`)
		pre = append(pre, `iifname "lan0" ip daddr `+r.Addr.String()+` dnat to udp dport map @hairpin`)
		// (postrouting has no input interface: match the LAN source instead)
		post = append([]string{`ip saddr ` + r.LANNet + ` oifname "lan0" ip protocol udp snat to ` + r.Addr.String()}, post...)
	}
	if r.Spec.BlockUDP {
		fwd = append(fwd, `meta l4proto udp drop`)
	}
	if r.Spec.LossPercent > 0 {
		fwd = append(fwd, fmt.Sprintf(`meta l4proto udp numgen random mod 100 < %d drop`, r.Spec.LossPercent))
	}
	chain := func(name, hook string, prio int, stmts []string) string {
		typ := "nat"
		if hook == "forward" || hook == "input" {
			typ = "filter"
		}
		var b strings.Builder
		fmt.Fprintf(&b, " chain %s {\n  type %s hook %s priority %d; policy accept;\n", name, typ, hook, prio)
		for _, s := range stmts {
			b.WriteString("  " + s + "\n")
		}
		b.WriteString(" }\n")
		return b.String()
	}
	return "table ip gcn {\n" + sets + chain("prerouting", "prerouting", -100, pre) +
		chain("postrouting", "postrouting", 100, post) + chain("forward", "forward", 0, fwd) +
		chain("input", "input", 0, []string{wanInputDrop}) + "}\n"
}

func nftApply(ns, rules string) error {
	// Replace the whole table atomically: delete (if present) and add in one run.
	exec.Command("ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "gcn").Run()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s\n%s", ns, err, bytes.TrimSpace(out), rules)
	}
	return nil
}

func (r *Router) apply() error {
	r.mu.Lock()
	rules := r.ruleset()
	r.mu.Unlock()
	return nftApply(r.NS, rules)
}

// Rebind simulates a router reboot: every mapping is forgotten and new
// ones get new external ports.
func (r *Router) Rebind() error {
	r.mu.Lock()
	r.rebound = true
	r.mu.Unlock()
	if err := r.apply(); err != nil {
		return err
	}
	return inNS(r.NS, "conntrack", "-F")
}
