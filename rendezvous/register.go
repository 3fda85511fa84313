package rendezvous

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	osuser "os/user"
	"strconv"
	"strings"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// RegistrationLifetime is how long an SSH registration authorises a key.
// Daemons renew once a day, so a machine that is off for up to a week keeps
// its place; one gone longer must reach SSH again, which proves it still
// has access to the repository.
const RegistrationLifetime = 7 * 24 * time.Hour

// ErrHeartbeat prefixes every refusal of gcn-heartbeat.
var ErrHeartbeat = errors.New("gcn-heartbeat")

// HeartbeatRequest is what a daemon sends over SSH.
type HeartbeatRequest struct {
	RepoPath  string // as in the clone's URL: "chat.git", "~/chat.git", "/srv/git/chat.git"
	ID        string // 64 hex characters: the client's public key
	Port      string // the daemon's local UDP port, 1..65535
	Reflexive string // the daemon's public address as STUN saw it, or "" / "-"
	// Proof, when set, is wire.HeartbeatProof: that the caller holds the
	// client key. Without it the key is authorised, but an existing record
	// of the client (its address) is left as it is.
	Proof string
	// Owner is who is registering, from the SSH session, never from the
	// client's arguments: the account, and where sshd exposes it, the
	// key's fingerprint (SSHOwner). Recorded with the client's record.
	Owner string
}

// SSHOwner is who runs this SSH session: $USER (or $LOGNAME), and, when
// sshd exposes the authentication (ExposeAuthInfo yes, $SSH_USER_AUTH),
// the SHA256 fingerprint of the key used, which tells apart people who
// share one git account.
func SSHOwner() string {
	user := os.Getenv("USER")
	if user == "" {
		user = os.Getenv("LOGNAME")
	}
	if user == "" {
		if u, err := osuser.Current(); err == nil {
			user = u.Username
		}
	}
	if f := os.Getenv("SSH_USER_AUTH"); f != "" {
		if b, err := os.ReadFile(f); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				fields := strings.Fields(line)
				if len(fields) >= 3 && fields[0] == "publickey" {
					if blob, err := base64.StdEncoding.DecodeString(fields[2]); err == nil {
						sum := sha256.Sum256(blob)
						return user + " SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
					}
				}
			}
		}
	}
	return user
}

// Heartbeat registers a client for a repository it reached over SSH. It
// validates everything before it writes anything: on any error the store is
// unchanged. A client's record (where the rendezvous may reach it) changes
// only with a proof that the caller holds the client's key; without one it
// is written only when there is none yet (a first registration, before the
// daemon knows the server key to make a proof with). sshConnection is $SSH_CONNECTION ("cip cport sip sport"), home
// the git user's home directory.
func Heartbeat(st *store.Store, req HeartbeatRequest, sshConnection, home string, now time.Time) (wire.HeartbeatReply, error) {
	var reply wire.HeartbeatReply
	fail := func(format string, a ...any) (wire.HeartbeatReply, error) {
		return reply, fmt.Errorf("%w: "+format, append([]any{ErrHeartbeat}, a...)...)
	}
	id, err := wire.ParseKey(req.ID)
	if err != nil || len(req.ID) != 64 {
		return fail("client id must be 64 hex characters")
	}
	port, err := strconv.ParseUint(req.Port, 10, 16)
	if err != nil || port == 0 || strings.TrimLeft(req.Port, "0123456789") != "" {
		return fail("UDP port must be a number from 1 to 65535, got %q", req.Port)
	}
	var reflexive netip.AddrPort
	if req.Reflexive != "" && req.Reflexive != "-" {
		if reflexive, err = netip.ParseAddrPort(req.Reflexive); err != nil || reflexive.Port() == 0 {
			return fail("reflexive address must be IP:PORT or -, got %q", req.Reflexive)
		}
	}
	sc := strings.Fields(sshConnection)
	if len(sc) != 4 {
		return fail("SSH_CONNECTION is not set: run me through ssh")
	}
	clientIP, err1 := netip.ParseAddr(sc[0])
	serverIP, err2 := netip.ParseAddr(sc[2])
	if err1 != nil || err2 != nil {
		return fail("SSH_CONNECTION %q is malformed", sshConnection)
	}
	repoID, err := st.ServedRepo(req.RepoPath, home)
	if err != nil {
		return fail("%v", err)
	}
	addrs, err := advertised(st, serverIP.Unmap())
	if err != nil {
		return fail("%v", err)
	}
	pub, err := st.ServerPublicKey()
	if err != nil {
		return fail("%v", err)
	}
	writeRecord := true
	if req.Proof != "" {
		_, priv, err := st.ExistingServerKeys()
		if err != nil {
			return fail("%v", err)
		}
		shared := wire.SharedKey(id, priv)
		if err := wire.VerifyHeartbeatProof(req.Proof, &shared, req.RepoPath, req.Port, now); err != nil {
			return fail("%w", err)
		}
	} else if _, err := st.ReadClient(id); !errors.Is(err, store.ErrNoClient) {
		// Anyone with SSH access could otherwise point another client's
		// record at themselves: without proof, an existing one stays.
		writeRecord = false
	}
	// The UDP port the rendezvous should use: the NAT's mapping (the
	// reflexive port) when STUN saw the same public IP SSH sees, else the
	// daemon's own port (no NAT, or nothing known yet). Keepalives correct
	// it either way, since only they are authenticated end to end.
	udpPort := uint16(port)
	if reflexive.IsValid() && reflexive.Addr().Unmap() == clientIP.Unmap() {
		udpPort = reflexive.Port()
	}
	expiry := now.Add(RegistrationLifetime)
	if err := st.Authorise(repoID, id, expiry); err != nil {
		return fail("%v", err)
	}
	// A rendezvous in a cluster shares it with the other nodes; best
	// effort and brief (it also shares the store's registrations whenever
	// it joins the cluster).
	control.Dial(st.SocketPath(), "auth "+repoID+" "+id.String(), shareAuthTimeout)
	if writeRecord {
		if req.Owner != "" {
			if err := st.SetOwner(id, req.Owner); err != nil {
				return fail("%v", err)
			}
		}
		if err := st.WriteClient(store.ClientRecord{ID: id, Heartbeat: now, Addr: netip.AddrPortFrom(clientIP.Unmap(), udpPort)}); err != nil {
			return fail("%v", err)
		}
	}
	return wire.HeartbeatReply{RepoID: repoID, Addrs: addrs, ServerKey: pub, Expiry: expiry}, nil
}

// advertised is the rendezvous address clients should use: the bound
// address, with an unspecified host replaced by the address the client
// reached SSH on (the same machine). A rendezvous bound to the IPv6
// unspecified address serves both families, which it says with a second
// address: the other family's unspecified address, on the same port. The
// daemon then resolves the SSH host's name in that family (the rendezvous
// cannot know which of its addresses there the client can reach). One
// bound to a specific address in each family gives both.
func advertised(st *store.Store, sshServerIP netip.Addr) ([]netip.AddrPort, error) {
	all, err := st.RendezvousAddrs()
	if err != nil {
		return nil, err
	}
	ap := all[0]
	if len(all) == 2 {
		// A specific address in each family: the one of the SSH
		// connection's family first.
		if all[1].Addr().Is6() == sshServerIP.Is6() {
			all[0], all[1] = all[1], all[0]
		}
		return all, nil
	}
	if !ap.Addr().IsUnspecified() {
		return []netip.AddrPort{ap}, nil
	}
	out := []netip.AddrPort{netip.AddrPortFrom(sshServerIP, ap.Port())}
	if ap.Addr().Is6() {
		other := netip.IPv6Unspecified()
		if sshServerIP.Is6() {
			other = netip.IPv4Unspecified()
		}
		out = append(out, netip.AddrPortFrom(other, ap.Port()))
	}
	return out, nil
}
