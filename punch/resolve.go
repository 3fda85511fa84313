package punch

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ResolveRendezvous resolves HOST:PORT, or one per family separated by a
// comma, to the rendezvous's address on each family it has: an IPv4 and
// an IPv6 address, either zero when there is none. A literal address gives
// its own family only.
func ResolveRendezvous(ctx context.Context, hostports string) (v4, v6 netip.AddrPort, err error) {
	for _, hp := range strings.Split(hostports, ",") {
		a4, a6, err := resolveOne(ctx, hp)
		if err != nil {
			return v4, v6, err
		}
		if !v4.IsValid() {
			v4 = a4
		}
		if !v6.IsValid() {
			v6 = a6
		}
	}
	return v4, v6, nil
}

func resolveOne(ctx context.Context, hostport string) (v4, v6 netip.AddrPort, err error) {
	host, portText, err := net.SplitHostPort(hostport)
	if err != nil {
		return v4, v6, err
	}
	port, err := net.LookupPort("udp", portText)
	if err != nil {
		return v4, v6, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return v4, v6, err
	}
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip.Unmap(), uint16(port))
		switch {
		case ap.Addr().Is4() && !v4.IsValid():
			v4 = ap
		case ap.Addr().Is6() && !v6.IsValid():
			v6 = ap
		}
	}
	return v4, v6, nil
}

// sshHostname is the host name ssh connects to for host, after its
// configuration (`ssh -G`, which reads the configuration and connects
// nowhere; sshArgs go before it, e.g. "-F", FILE); "" when it cannot tell.
func sshHostname(ctx context.Context, host string, sshArgs ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh", append(sshArgs, "-G", "--", host)...).Output()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(out), "\n") {
		if name, ok := strings.CutPrefix(line, "hostname "); ok {
			return strings.TrimSpace(name)
		}
	}
	return ""
}

// otherFamily finds, for a rendezvous that said it serves the other address
// family too (an unspecified address of that family in its heartbeat
// reply), its address there: the SSH host's name resolved in that family,
// on the port the reply gave. Zero when the name has no such address.
func otherFamily(ctx context.Context, host string, hint netip.AddrPort) netip.AddrPort {
	v4, v6, err := ResolveRendezvous(ctx, net.JoinHostPort(host, strconv.Itoa(int(hint.Port()))))
	if err != nil {
		// An alias from ~/.ssh/config ("Host chat" / "HostName
		// chat.example.org"): resolve the name ssh connects to.
		if real := sshHostname(ctx, host); real != "" && real != host {
			v4, v6, err = ResolveRendezvous(ctx, net.JoinHostPort(real, strconv.Itoa(int(hint.Port()))))
		}
	}
	if err != nil {
		return netip.AddrPort{}
	}
	if hint.Addr().Is6() {
		return v6
	}
	return v4
}
