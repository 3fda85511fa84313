package wire

import (
	"crypto/ed25519"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func testSigner(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	seed[0] = 42
	priv := ed25519.NewKeyFromSeed(seed)
	return priv.Public().(ed25519.PublicKey), priv
}

// A signed event verifies after a round trip; any change to a field, or
// another key, makes it fail.
func TestForwardSignature(t *testing.T) {
	pub, priv := testSigner(t)
	m := &Forward{Seq: 7, TimeMilli: 1700000000000, RepoID: "chat.git", Ref: "refs/heads/main", Old: oidA, New: oidB}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	m.Sign(priv)
	got, err := ParsePlaintext(m.AppendPlaintext(nil))
	if err != nil {
		t.Fatal(err)
	}
	f := got.(*Forward)
	if !f.Verify(pub) {
		t.Fatal("a signed event does not verify after a round trip")
	}
	for name, alter := range map[string]func(*Forward){
		"seq":  func(f *Forward) { f.Seq++ },
		"time": func(f *Forward) { f.TimeMilli++ },
		"repo": func(f *Forward) { f.RepoID = "other.git" },
		"ref":  func(f *Forward) { f.Ref = "refs/heads/evil" },
		"old":  func(f *Forward) { f.Old = oidB },
		"new":  func(f *Forward) { f.New = oidA },
		"sig":  func(f *Forward) { f.Sig[5] ^= 1 },
	} {
		c := *f
		alter(&c)
		if c.Verify(pub) {
			t.Errorf("altered %s still verifies", name)
		}
	}
	otherPub, _, _ := ed25519.GenerateKey(nil)
	if f.Verify(otherPub) || f.Verify(nil) {
		t.Error("verifies under another key")
	}
}

// The message of type 0x16 is signed with the event: a peer cannot alter
// it, add one to a plain Forward, or strip it from a signed one.
func TestForwardMessageSignature(t *testing.T) {
	pub, priv := testSigner(t)
	m := &Forward{Seq: 7, TimeMilli: 1, RepoID: "chat.git", Ref: "refs/heads/main", Old: oidA, New: oidB,
		WithMessage: true, Chat: Chat{Count: 2, Author: "alice", Subject: "lunch at 1?"}}
	m.Sign(priv)
	got, err := ParsePlaintext(m.AppendPlaintext(nil))
	if err != nil {
		t.Fatal(err)
	}
	f := got.(*Forward)
	if !f.WithMessage || f.Subject != "lunch at 1?" || !f.Verify(pub) {
		t.Fatalf("round trip: %+v verifies %v", f, f.Verify(pub))
	}
	for name, alter := range map[string]func(*Forward){
		"subject":  func(f *Forward) { f.Subject = "lunch at 2?" },
		"author":   func(f *Forward) { f.Author = "mallory" },
		"count":    func(f *Forward) { f.Count = 3 },
		"stripped": func(f *Forward) { f.WithMessage, f.Chat = false, Chat{} },
	} {
		c := *f
		alter(&c)
		if c.Verify(pub) {
			t.Errorf("altered %s still verifies", name)
		}
	}
	plain := &Forward{Seq: 7, TimeMilli: 1, RepoID: "chat.git", Ref: "refs/heads/main", Old: oidA, New: oidB}
	plain.Sign(priv)
	added := *plain
	added.WithMessage, added.Chat = true, Chat{Subject: "forged"}
	if added.Verify(pub) {
		t.Error("a message added to a plain Forward verifies")
	}
	// The longest event that forwards keeps forwarding with a message: the
	// message is shortened.
	long := &Forward{Seq: 1, RepoID: "r", Ref: "refs/heads/" + strings.Repeat("x", 900), Old: oidA, New: oidB,
		WithMessage: true, Chat: Chat{Author: strings.Repeat("a", MaxAuthor), Subject: strings.Repeat("s", MaxSubject)}}
	long.FitMessage()
	if err := long.Validate(); err != nil {
		t.Fatalf("after FitMessage: %v", err)
	}
}

// A Forward carries 64 bytes of signature where a Notify carries its
// 32-byte recipient: an event at the edge of Notify's size does not fit.
func TestForwardSize(t *testing.T) {
	long := "refs/heads/" + strings.Repeat("x", MaxRef-len("refs/heads/"))
	ok := &Forward{Seq: 1, RepoID: "r", Ref: "refs/heads/main", Old: oidA, New: oidB}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	big := &Forward{Seq: 1, RepoID: "r", Ref: long, Old: strings.Repeat("0", 64), New: strings.Repeat("1", 64)}
	if err := big.Validate(); !errors.Is(err, ErrMessageLarge) {
		t.Fatalf("oversized forward: %v", err)
	}
	if err := (&Notify{Seq: 1, RepoID: "r", Ref: long, Old: strings.Repeat("0", 64), New: strings.Repeat("1", 64)}).Validate(); err != nil {
		t.Fatalf("the same event as a Notify: %v", err)
	}
}

// Each fan-out decoder refuses what its layout forbids.
func TestPeerMessagesRejectBadFields(t *testing.T) {
	good := &Edge{ID: 9, Role: RoleChild, RepoID: "r", Peer: fixedKey(4), LocalUfrag: "abcd", LocalPwd: strings.Repeat("p", 22),
		RemoteUfrag: "efgh", RemotePwd: strings.Repeat("q", 22), Candidates: []Candidate{{CandHost, netip.MustParseAddrPort("198.19.2.10:5000")}}}
	if _, err := ParsePlaintext(good.AppendPlaintext(nil)); err != nil {
		t.Fatal(err)
	}
	bad := []Message{
		&Fanout{Arity: 0},
		&Fanout{Arity: MaxFanout + 1},
		&PeerInfo{Flags: 0x80},
		&PeerInfo{Flags: 0x04},
		&PeerInfo{Mapping: 4},
		&PeerInfo{Host: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:1")}},
		&PeerInfo{Host: []netip.AddrPort{netip.MustParseAddrPort("198.19.1.1:0")}},
		&PeerInfo{Host: make([]netip.AddrPort, MaxHostCands+1)},
		&EdgeState{ID: 0, State: EdgeConnected},
		&EdgeState{ID: 1, State: 9},
		&EdgeState{ID: 1, State: EdgeConnected, PathKind: 7},
		&Forward{Seq: 0, RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB},
		&Forward{Seq: 1, RepoID: "r", Ref: "heads/m", Old: oidA, New: oidB},
	}
	for _, e := range []func(*Edge){
		func(e *Edge) { e.ID = 0 },
		func(e *Edge) { e.Role = 0 },
		func(e *Edge) { e.Role = 4 },
		func(e *Edge) { e.LocalUfrag = "abc" },
		func(e *Edge) { e.RemotePwd = strings.Repeat("q", 21) },
		func(e *Edge) { e.LocalUfrag = "ab d" },
		func(e *Edge) { e.Candidates[0].Kind = 0 },
		func(e *Edge) { e.Candidates = make([]Candidate, MaxCandidates+1) },
		func(e *Edge) { e.Role = RoleDrop }, // a drop with credentials
	} {
		c := *good
		c.Candidates = append([]Candidate(nil), good.Candidates...)
		e(&c)
		bad = append(bad, &c)
	}
	for _, m := range bad {
		if _, err := ParsePlaintext(m.AppendPlaintext(nil)); err == nil {
			t.Errorf("accepted %T %+v", m, m)
		}
	}
	// Truncated and trailing.
	for _, m := range sampleMessages()[9:] {
		p := m.AppendPlaintext(nil)
		for n := 1; n < len(p); n++ {
			if _, err := ParsePlaintext(p[:n]); err == nil {
				t.Errorf("%T accepted truncated to %d of %d bytes", m, n, len(p))
			}
		}
		if _, err := ParsePlaintext(append(p, 0)); !errors.Is(err, ErrTrailing) {
			t.Errorf("%T with a trailing byte: %v", m, err)
		}
	}
}
