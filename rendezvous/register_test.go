package rendezvous

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// Anyone with SSH access could point another client's record at their own
// address with `gcn-heartbeat --id THEIRS` (issue 14, item 7). Now a record
// changes only with a proof that the caller holds the client's key: a
// registration without one is authorised but leaves an existing record as
// it is; a wrong, reused-elsewhere or stale proof is refused outright.
func TestRegistrationRecordChangesOnlyWithProof(t *testing.T) {
	st, home := registrationStore(t, "198.18.0.1:3478")
	serverPub, err := st.ServerPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	victimPub, victimPriv, _ := wire.GenerateKey()
	_, otherPriv, _ := wire.GenerateKey()
	now := time.Unix(1800000000, 0)
	register := func(ip string, proof string) error {
		req := HeartbeatRequest{RepoPath: "chat.git", ID: victimPub.String(), Port: "4000", Reflexive: "-", Proof: proof}
		_, err := Heartbeat(st, req, ip+" 50000 198.18.0.1 22", home, now)
		return err
	}
	recordIP := func() string {
		r, err := st.ReadClient(victimPub)
		if err != nil {
			t.Fatal(err)
		}
		return r.Addr.Addr().String()
	}
	proof := func(priv wire.Key, repo, port string, at time.Time) string {
		shared := wire.SharedKey(serverPub, priv)
		p, err := wire.HeartbeatProof(&shared, repo, port, at)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	// First registration: no record yet, no key to prove with yet.
	if err := register("198.18.5.1", ""); err != nil {
		t.Fatal(err)
	}
	if ip := recordIP(); ip != "198.18.5.1" {
		t.Fatalf("first registration recorded %s", ip)
	}
	// Another SSH user, without the key: authorised, but the record stays.
	if err := register("198.18.6.66", ""); err != nil {
		t.Fatal(err)
	}
	if ip := recordIP(); ip != "198.18.5.1" {
		t.Fatalf("a registration without proof moved the record to %s", ip)
	}
	for name, p := range map[string]string{
		"another key":        proof(otherPriv, "chat.git", "4000", now),
		"another port":       proof(victimPriv, "chat.git", "4001", now),
		"another repo":       proof(victimPriv, "other.git", "4000", now),
		"eleven minutes old": proof(victimPriv, "chat.git", "4000", now.Add(-11*time.Minute)),
		"garbage":            "123.zz",
	} {
		if err := register("198.18.6.66", p); !errors.Is(err, wire.ErrProof) {
			t.Fatalf("%s: %v, want a refused proof", name, err)
		}
		if ip := recordIP(); ip != "198.18.5.1" {
			t.Fatalf("%s: the record moved to %s", name, ip)
		}
	}
	// The daemon itself, with its key, moves it.
	if err := register("198.18.7.7", proof(victimPriv, "chat.git", "4000", now.Add(-time.Minute))); err != nil {
		t.Fatal(err)
	}
	if ip := recordIP(); ip != "198.18.7.7" {
		t.Fatalf("a proven registration recorded %s", ip)
	}
}

// Registration over SSH reached over IPv6 records the client's IPv6
// address, and a rendezvous bound to [::] (both families) is advertised at
// the address the client reached SSH on, in that family, and as serving
// the other family too (its unspecified address, which the daemon resolves
// the SSH host's name for). One bound to a single address is advertised
// there alone.
func TestRegistrationOverIPv6(t *testing.T) {
	for _, c := range []struct{ listen, conn, record, advertised string }{
		{"[::]:3478", "2001:2:1::10 50000 2001:2::10 22", "[2001:2:1::10]:4000", "[2001:2::10]:3478,0.0.0.0:3478"},
		{"[::]:3478", "198.19.1.11 50000 198.18.0.1 22", "198.19.1.11:4000", "198.18.0.1:3478,[::]:3478"},
		{"0.0.0.0:3478", "198.19.1.11 50000 198.18.0.1 22", "198.19.1.11:4000", "198.18.0.1:3478"},
		{"[2001:2::10]:3478", "2001:2:1::10 50000 2001:2::10 22", "[2001:2:1::10]:4000", "[2001:2::10]:3478"},
	} {
		st, home := registrationStore(t, c.listen)
		pub, _, _ := wire.GenerateKey() // a new client each time
		reply, err := Heartbeat(st, HeartbeatRequest{RepoPath: "chat.git", ID: pub.String(), Port: "4000", Reflexive: "-"}, c.conn, home, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		r, err := st.ReadClient(pub)
		if err != nil {
			t.Fatal(err)
		}
		var adv []string
		for _, a := range reply.Addrs {
			adv = append(adv, a.String())
		}
		if r.Addr.String() != c.record || strings.Join(adv, ",") != c.advertised {
			t.Errorf("SSH_CONNECTION %q: record %s, advertised %v; want %s and %s", c.conn, r.Addr, reply.Addrs, c.record, c.advertised)
		}
	}
}

// registrationStore is a store with server keys, a rendezvous bound to
// listen, and chat.git served from a fresh home directory.
func registrationStore(t *testing.T, listen string) (*store.Store, string) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.ServerKeys(); err != nil {
		t.Fatal(err)
	}
	if err := st.SetRendezvous(netip.MustParseAddrPort(listen), false); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, "chat.git"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := st.Serve("chat.git", filepath.Join(home, "chat.git")); err != nil {
		t.Fatal(err)
	}
	return st, home
}

// Registration records who registered (the SSH account, and the key's
// fingerprint where sshd exposes it), the same fingerprint ssh-keygen
// shows; an unproven repeat from someone else does not change it.
func TestRegistrationRecordsTheOwner(t *testing.T) {
	dir := t.TempDir()
	pubFile := filepath.Join(dir, "id.pub")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", filepath.Join(dir, "id")).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	line, _ := os.ReadFile(pubFile)
	auth := filepath.Join(dir, "auth")
	os.WriteFile(auth, append([]byte("publickey "), line...), 0o600)
	fp, err := exec.Command("ssh-keygen", "-l", "-E", "sha256", "-f", pubFile).Output()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("USER", "git")
	t.Setenv("SSH_USER_AUTH", auth)
	owner := SSHOwner()
	if want := "git " + strings.Fields(string(fp))[1]; owner != want {
		t.Fatalf("owner %q, want %q", owner, want)
	}

	st, home := registrationStore(t, "[::]:3478")
	pub, _, _ := wire.GenerateKey()
	req := HeartbeatRequest{RepoPath: "chat.git", ID: pub.String(), Port: "4000", Reflexive: "-", Owner: owner}
	if _, err := Heartbeat(st, req, "198.19.1.11 50000 198.18.0.1 22", home, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := st.Owner(pub); got != owner {
		t.Fatalf("recorded owner %q, want %q", got, owner)
	}
	req.Owner = "mallory"
	if _, err := Heartbeat(st, req, "198.19.1.66 50000 198.18.0.1 22", home, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := st.Owner(pub); got != owner {
		t.Fatalf("an unproven registration changed the owner to %q", got)
	}
}
