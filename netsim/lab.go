package netsim

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kind is a NAT's behaviour in RFC 4787 terms.
type Kind string

// NAT kinds.
const (
	FullCone          Kind = "full-cone"          // EIM / EIF
	AddressRestricted Kind = "address-restricted" // EIM / ADF
	PortRestricted    Kind = "port-restricted"    // EIM / APDF (Linux masquerade)
	Symmetric         Kind = "symmetric"          // APDM / APDF
)

// Kinds lists every NAT kind, most open first.
var Kinds = []Kind{FullCone, AddressRestricted, PortRestricted, Symmetric}

// Mapping and Filtering name a kind's behaviour as RFC 4787 (and `gcn-punch
// probe`) says it.
func (k Kind) Mapping() string {
	if k == Symmetric {
		return "address-and-port-dependent"
	}
	return "endpoint-independent"
}

// Filtering names the kind's filtering behaviour.
func (k Kind) Filtering() string {
	switch k {
	case FullCone:
		return "endpoint-independent"
	case AddressRestricted:
		return "address-dependent"
	}
	return "address-and-port-dependent"
}

// RouterSpec describes one home router and the clients behind it.
type RouterSpec struct {
	Kind    Kind
	Clients int // at least 1; full cone and address-restricted forward to one client
	// UDPTimeout sets the router's conntrack UDP timeouts (both the
	// unreplied and the stream one); zero keeps Linux's 30 s / 120 s.
	UDPTimeout  time.Duration
	LossPercent int  // random UDP loss in the router's forward path, both ways
	CGNAT       bool // a carrier NAT (port-restricted) between this router and the WAN
	BlockUDP    bool // the router drops all forwarded UDP
	// IPv6 gives the router's network IPv6 besides its IPv4 NAT, as most
	// home routers now do: global addresses, no NAT, and a stateful
	// firewall (what went out may answer; nothing unsolicited comes in).
	// IPv6Only also takes IPv4 away from the clients (no IPv4 route), as on
	// an IPv6-only mobile network. Not with CGNAT.
	IPv6, IPv6Only bool
	// Hairpin lets a client reach another behind the same router through
	// the router's public address, as RFC 4787 REQ-9 asks. The lab does it
	// for the endpoint-independent kinds, whose mappings keep the port.
	Hairpin bool
}

// Address plan: only 198.18.0.0/15 (RFC 2544, for benchmark tests), and
// for IPv6 only 2001:2::/48 (RFC 5180, likewise): the WAN is 2001:2::/64,
// router i's LAN 2001:2:i::/64.
var (
	ServerAddr    = netip.MustParseAddr("198.18.0.1")
	ServerAltAddr = netip.MustParseAddr("198.18.0.2")
	ServerAddr6   = netip.MustParseAddr("2001:2::10")
	// ServerAltAddr6 is the server's second IPv6 address, for RFC 5780
	// service in that family.
	ServerAltAddr6 = netip.MustParseAddr("2001:2::11")
)

// Lab is a running topology: a server with two addresses on a WAN, and home
// routers with clients behind them, each in its own network namespace.
type Lab struct {
	Prefix  string
	Server  *Host
	Routers []*Router
	wan     string
	nsList  []string
	closed  sync.Once
}

// Host is one namespace that runs programs.
type Host struct {
	NS    string
	Addr  netip.Addr
	Addr6 netip.Addr // the invalid Addr when it has no IPv6
}

// Router is a home router namespace.
type Router struct {
	Host    // NS, and its WAN addresses
	Spec    RouterSpec
	LANNet  string // e.g. 198.19.1.0/24
	Clients []*Host
	CGN     *Host // the carrier NAT, when Spec.CGNAT
	lab     *Lab
	mu      sync.Mutex
	rebound bool
}

// Available reports why netns labs cannot run here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	for _, p := range []string{"ip", "nft", "conntrack", "sysctl"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install iproute2 nftables conntrack procps)", p)
		}
	}
	return nil
}

func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func inNS(ns string, name string, args ...string) error {
	return sh("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Command returns a command that runs name in the host's namespace.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// CleanStale deletes namespaces left by earlier runs whose process is gone.
// Names are "gcn<pid>x<n>-<role>".
func CleanStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, "gcn")
		if !ok {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "x")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil {
			continue
		}
		if pid == os.Getpid() {
			continue // ours: another lab of this process
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // its owner is still running
		}
		exec.Command("ip", "netns", "del", name).Run()
	}
}

var labSeq struct {
	sync.Mutex
	n int
}

// New builds a lab. On error everything built so far is torn down. Call
// Close when done (also on failure and panic: defer it).
func New(specs ...RouterSpec) (lab *Lab, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	CleanStale()
	labSeq.Lock()
	labSeq.n++
	prefix := fmt.Sprintf("gcn%dx%d", os.Getpid(), labSeq.n)
	labSeq.Unlock()
	l := &Lab{Prefix: prefix}
	defer func() {
		if err != nil {
			l.Close()
			lab = nil
		}
	}()
	l.wan = l.ns("wan")
	if err := l.addNS(l.wan); err != nil {
		return nil, err
	}
	if err := inNS(l.wan, "ip", "link", "add", "br0", "type", "bridge"); err != nil {
		return nil, err
	}
	if err := inNS(l.wan, "ip", "link", "set", "br0", "up"); err != nil {
		return nil, err
	}
	l.Server = &Host{NS: l.ns("srv"), Addr: ServerAddr}
	if err := l.addNS(l.Server.NS); err != nil {
		return nil, err
	}
	if err := l.wanLink(l.Server.NS, "eth0", "srv", ServerAddr.String()+"/24", ServerAltAddr.String()+"/24"); err != nil {
		return nil, err
	}
	// nodad: duplicate address detection would leave the address unusable
	// for a second or two after it is added.
	if err := inNS(l.Server.NS, "ip", "-6", "addr", "add", ServerAddr6.String()+"/64", "dev", "eth0", "nodad"); err != nil {
		return nil, err
	}
	// The alternate is deprecated (preferred_lft 0): a socket bound to
	// [::] answers from the kernel's choice of source address, which must
	// stay the address clients talk to, or their firewalls drop the
	// answers. Bound explicitly (RFC 5780 service), it works as any other.
	if err := inNS(l.Server.NS, "ip", "-6", "addr", "add", ServerAltAddr6.String()+"/64", "dev", "eth0", "nodad", "preferred_lft", "0"); err != nil {
		return nil, err
	}
	l.Server.Addr6 = ServerAddr6
	for i, spec := range specs {
		r, err := l.addRouter(i+1, spec)
		if err != nil {
			return nil, err
		}
		l.Routers = append(l.Routers, r)
	}
	return l, nil
}

func (l *Lab) ns(role string) string { return l.Prefix + "-" + role }

// AddWANHost adds a host with no NAT on the WAN, at addr (inside
// 198.18.0.0/24, away from the server's .1-.2, the routers' .11-.. and
// the carrier NATs' .51-..: e.g. .200 and up), named role: an attacker, or
// the victim an attacker names as its source.
func (l *Lab) AddWANHost(role string, addr netip.Addr) (*Host, error) {
	if !netip.MustParsePrefix("198.18.0.0/24").Contains(addr) {
		return nil, fmt.Errorf("netsim: WAN host %s outside 198.18.0.0/24", addr)
	}
	h := &Host{NS: l.ns(role), Addr: addr}
	if err := l.addNS(h.NS); err != nil {
		return nil, err
	}
	if err := l.wanLink(h.NS, "eth0", "w"+role, addr.String()+"/24"); err != nil {
		return nil, err
	}
	return h, nil
}

func (l *Lab) addNS(ns string) error {
	exec.Command("ip", "netns", "del", ns).Run()
	if err := sh("ip", "netns", "add", ns); err != nil {
		return err
	}
	l.nsList = append(l.nsList, ns)
	return inNS(ns, "ip", "link", "set", "lo", "up")
}

// wanLink connects ns to the WAN bridge with interface ifname and addresses.
func (l *Lab) wanLink(ns, ifname, port string, addrs ...string) error {
	if err := sh("ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", l.wan); err != nil {
		return err
	}
	if err := inNS(l.wan, "ip", "link", "set", port, "master", "br0", "up"); err != nil {
		return err
	}
	for _, a := range addrs {
		if err := inNS(ns, "ip", "addr", "add", a, "dev", ifname); err != nil {
			return err
		}
	}
	return inNS(ns, "ip", "link", "set", ifname, "up")
}

// Close deletes every namespace of the lab; safe to call more than once.
func (l *Lab) Close() error {
	var errs []error
	l.closed.Do(func() {
		for i := len(l.nsList) - 1; i >= 0; i-- {
			// Kill what still runs inside, then delete the namespace.
			if out, err := exec.Command("ip", "netns", "pids", l.nsList[i]).Output(); err == nil {
				for _, p := range strings.Fields(string(out)) {
					if pid, err := strconv.Atoi(p); err == nil {
						if proc, err := os.FindProcess(pid); err == nil {
							proc.Kill()
						}
					}
				}
			}
			if err := sh("ip", "netns", "del", l.nsList[i]); err != nil {
				errs = append(errs, err)
			}
		}
	})
	return errors.Join(errs...)
}
