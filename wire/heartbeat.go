package wire

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ErrReply reports a heartbeat reply line that does not parse.
var ErrReply = errors.New("wire: malformed heartbeat reply")

// ReplyVersion starts every heartbeat reply line.
const ReplyVersion = "gcn1"

// HeartbeatReply is the one line a successful heartbeat prints:
//
//	gcn1 <repo-id> <udp-addr>[,<udp-addr>] <server-key-hex> <expiry-unix>\n
type HeartbeatReply struct {
	RepoID    string
	Addrs     []netip.AddrPort
	ServerKey Key
	Expiry    time.Time
}

// String renders the reply line, newline included.
func (r HeartbeatReply) String() string {
	addrs := make([]string, len(r.Addrs))
	for i, a := range r.Addrs {
		addrs[i] = a.String()
	}
	return fmt.Sprintf("%s %s %s %s %d\n", ReplyVersion, r.RepoID, strings.Join(addrs, ","), r.ServerKey, r.Expiry.Unix())
}

// ParseHeartbeatReply parses the reply line strictly: the version, exactly
// five fields, one line.
func ParseHeartbeatReply(s string) (HeartbeatReply, error) {
	var r HeartbeatReply
	line, rest, found := strings.Cut(s, "\n")
	if !found || rest != "" {
		return r, fmt.Errorf("%w: want exactly one line ending in a newline, got %q", ErrReply, s)
	}
	f := strings.Split(line, " ")
	if len(f) != 5 || f[0] != ReplyVersion {
		return r, fmt.Errorf("%w: want %q and 4 fields, got %q (is the server's gcn-punch too old or too new?)", ErrReply, ReplyVersion, line)
	}
	if err := ValidRepoID(f[1]); err != nil {
		return r, fmt.Errorf("%w: %w", ErrReply, err)
	}
	r.RepoID = f[1]
	for _, a := range strings.Split(f[2], ",") {
		ap, err := netip.ParseAddrPort(a)
		if err != nil || ap.Port() == 0 || len(r.Addrs) == 2 {
			return r, fmt.Errorf("%w: bad rendezvous address %q", ErrReply, a)
		}
		r.Addrs = append(r.Addrs, ap)
	}
	k, err := ParseKey(f[3])
	if err != nil {
		return r, fmt.Errorf("%w: %w", ErrReply, err)
	}
	r.ServerKey = k
	exp, err := strconv.ParseInt(f[4], 10, 64)
	if err != nil || exp <= 0 {
		return r, fmt.Errorf("%w: bad expiry %q", ErrReply, f[4])
	}
	r.Expiry = time.Unix(exp, 0)
	return r, nil
}
