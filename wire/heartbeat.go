package wire

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/nacl/box"
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

// ErrProof reports a registration proof that is malformed, stale, or not
// the client's.
var ErrProof = errors.New("wire: registration proof refused")

// ProofWindow is how far a registration proof's time may be from the
// server's clock: a daemon makes it just before its SSH call, and clocks
// of machines that use NTP agree within seconds.
const ProofWindow = 10 * time.Minute

// maxProofHex bounds a proof's text: a repository path and a port are short.
const maxProofHex = 4096

// proofContext separates registration proofs from every other box.
const proofContext = "gcn-heartbeat proof v1\x00"

// HeartbeatProof proves to the server that the daemon holds the private key
// of the client id it registers: a box from the client's key to the
// server's over the repository path, the UDP port and the time, so that it
// is worth nothing for another registration or, after ProofWindow, at all.
// Text form: "<unix seconds>.<hex of nonce and box>". shared is
// SharedKey(serverPub, clientPriv).
func HeartbeatProof(shared *[32]byte, repo, port string, now time.Time) (string, error) {
	var nonce [NonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", err
	}
	ts := strconv.FormatInt(now.Unix(), 10)
	msg := proofContext + repo + "\x00" + port + "\x00" + ts
	sealed := box.SealAfterPrecomputation(nonce[:], []byte(msg), &nonce, shared)
	return ts + "." + hex.EncodeToString(sealed), nil
}

// VerifyHeartbeatProof checks a proof made by HeartbeatProof for this
// registration; shared is SharedKey(clientPub, serverPriv).
func VerifyHeartbeatProof(proof string, shared *[32]byte, repo, port string, now time.Time) error {
	ts, sealedHex, ok := strings.Cut(proof, ".")
	secs, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil || strconv.FormatInt(secs, 10) != ts || len(sealedHex) > maxProofHex {
		return fmt.Errorf("%w: want <unix seconds>.<hex>", ErrProof)
	}
	sealed, err := hex.DecodeString(sealedHex)
	if err != nil || len(sealed) < NonceLen+box.Overhead {
		return fmt.Errorf("%w: want <unix seconds>.<hex>", ErrProof)
	}
	if d := now.Sub(time.Unix(secs, 0)); d > ProofWindow || d < -ProofWindow {
		return fmt.Errorf("%w: made at %s, more than %v from the server's clock (%s)", ErrProof,
			time.Unix(secs, 0).UTC().Format(time.RFC3339), ProofWindow, now.UTC().Format(time.RFC3339))
	}
	var nonce [NonceLen]byte
	copy(nonce[:], sealed)
	msg, ok := box.OpenAfterPrecomputation(nil, sealed[NonceLen:], &nonce, shared)
	if !ok || string(msg) != proofContext+repo+"\x00"+port+"\x00"+ts {
		return fmt.Errorf("%w: not made with this client key for this registration", ErrProof)
	}
	return nil
}
