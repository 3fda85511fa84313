package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func fixedKey(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	return k
}

var oidA = strings.Repeat("ab", 20)
var oidB = strings.Repeat("cd", 20)

func sampleMessages() []Message {
	return []Message{
		&Keepalive{Counter: 7, ProbeMillis: 12500, Subs: []Sub{{RepoID: "chat.git", Known: true, LastSeq: 42}, {RepoID: "team/x", LastSeq: 0}}},
		&Keepalive{Counter: 8, Subs: []Sub{{RepoID: "chat.git", Known: true, LastSeq: 43}}, Quiet: true},
		&Keepalive{Counter: 9, Subs: []Sub{{RepoID: "chat.git", Known: true, LastSeq: 43}}, Standby: true},
		&Keepalive{Counter: 10, ProbeMillis: 30000, Subs: []Sub{{RepoID: "chat.git"}}, Standby: true, Quiet: true},
		&Pong{Counter: 7, Observed: netip.MustParseAddrPort("198.18.0.5:40001"), Advice: 25, Statuses: []SubStatus{{StatusOK, 42}, {StatusNotAuthorised, 0}}},
		&Pong{Counter: 1, Observed: netip.MustParseAddrPort("[2001:db8::1]:9"), Statuses: []SubStatus{}},
		&Notify{Seq: 3, TimeMilli: 1700000000123, Recipient: fixedKey(9), RepoID: "chat.git", Ref: "refs/heads/main", Old: oidA, New: oidB},
		&Notify{Seq: 1, TimeMilli: -1, Recipient: fixedKey(1), RepoID: "r", Ref: "refs/tags/v1", Old: strings.Repeat("0", 64), New: strings.Repeat("f", 64)},
		&Ack{RepoID: "chat.git", Seq: 99},
		&Resync{HeadSeq: 5000, FirstSeq: 904, TimeMilli: 1, Recipient: fixedKey(2), RepoID: "chat.git"},
		&Ping{Counter: 12},
		&Forward{Seq: 3, TimeMilli: 1700000000123, RepoID: "chat.git", Ref: "refs/heads/main", Old: oidA, New: oidB, Sig: [SigLen]byte{1, 2, 3}},
		&Fanout{SigningKey: [32]byte{7}, Arity: 3},
		&PeerInfo{Flags: PeerFlagParent, Mapping: EndpointIndependent, Filtering: AddressAndPortDependent,
			Host: []netip.AddrPort{netip.MustParseAddrPort("198.19.1.10:4000"), netip.MustParseAddrPort("[2001:2:1::10]:4000")}},
		&PeerInfo{},
		&PeerInfo{Flags: PeerFlagRejoin},
		&Challenge{Cookie: [CookieLen]byte{1, 15: 2}},
		&ChallengeReply{Cookie: [CookieLen]byte{3, 15: 4}},
		&Validated{},
		&Edge{ID: 9, Role: RoleChild, RepoID: "chat.git", Peer: fixedKey(4), LocalUfrag: "abcd", LocalPwd: strings.Repeat("p", 22),
			RemoteUfrag: "efgh", RemotePwd: strings.Repeat("q", 24), Candidates: []Candidate{{CandHost, netip.MustParseAddrPort("198.19.2.10:5000")}, {CandSrflx, netip.MustParseAddrPort("198.18.0.12:40000")}}},
		&Edge{ID: 10, Role: RoleDrop, RepoID: "chat.git", Peer: fixedKey(4)},
		&EdgeState{ID: 9, State: EdgeConnected, PathKind: CandSrflx, RTTMicro: 1500},
		&Notify{Seq: 9, After: 5, TimeMilli: 1700000000123, Recipient: fixedKey(9), RepoID: "chat.git", Ref: "refs/heads/main", Old: oidA, New: oidB,
			WithMessage: true, Chat: Chat{Count: 2, Author: "Ålice", Subject: "lunch at 1?"}},
		&Notify{Seq: 1, TimeMilli: 1, Recipient: fixedKey(1), RepoID: "r", Ref: "refs/tags/v1", Old: oidA, New: oidB, WithMessage: true},
		&Subscribe{Flags: SubscribeMessages, Repos: []RepoPrefs{{RepoID: "chat.git", Refs: []string{"refs/heads/main", "refs/heads/release/*"}}, {RepoID: "team/x"}}},
		&Subscribe{},
		&Subscribed{Digest: [SubscribeDigest]byte{1, 7: 2}},
		&Forward{Seq: 4, TimeMilli: 5, RepoID: "chat.git", Ref: "refs/heads/main", Old: oidA, New: oidB, WithMessage: true,
			Chat: Chat{Count: 1, Author: "bob", Subject: "hi"}, Sig: [SigLen]byte{9}},
		&Nodes{Addrs: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:3478"), netip.MustParseAddrPort("[2001:2::1]:3478")}},
		&Subscribe{Flags: SubscribeMessages | SubscribeNodes},
	}
}

// Golden plaintexts, written out field by field from the layout comments.
func TestGoldenPlaintext(t *testing.T) {
	cases := []struct {
		m    Message
		want string
	}{
		{&Ack{RepoID: "ab", Seq: 258}, "04" + "02" + "6162" + "0000000000000102"},
		{&Ping{Counter: 1}, "06" + "0000000000000001"},
		{&Pong{Counter: 2, Observed: netip.MustParseAddrPort("198.18.0.1:4660"), Advice: 25, Statuses: []SubStatus{{0, 7}}},
			"02" + "0000000000000002" + "04" + "c6120001" + "1234" + "00000019" + "01" + "00" + "0000000000000007"},
		{&Notify{Seq: 1, TimeMilli: 2, Recipient: fixedKey(0xee), RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB},
			"03" + "0000000000000001" + "0000000000000002" + strings.Repeat("ee", 32) + "01" + "72" +
				"000c" + hex.EncodeToString([]byte("refs/heads/m")) + "14" + oidA + oidB},
		{&Resync{HeadSeq: 9, FirstSeq: 3, TimeMilli: 4, Recipient: fixedKey(1), RepoID: "r"},
			"05" + "0000000000000009" + "0000000000000003" + "0000000000000004" + strings.Repeat("01", 32) + "01" + "72"},
		{&Keepalive{Counter: 5, ProbeMillis: 25000, Subs: []Sub{{RepoID: "r", Known: true, LastSeq: 3}}},
			"01" + "0000000000000005" + "000061a8" + "01" + "01" + "72" + "01" + "0000000000000003" + strings.Repeat("00", MinKeepalivePlaintext-25)},
		{&Keepalive{Counter: 5, Subs: []Sub{{RepoID: "r", Known: true, LastSeq: 3}}, Quiet: true},
			"07" + "0000000000000005" + "00000000" + "01" + "01" + "72" + "01" + "0000000000000003" + strings.Repeat("00", MinKeepalivePlaintext-25)},
		{&Keepalive{Counter: 5, Subs: []Sub{{RepoID: "r", Known: true, LastSeq: 3}}, Standby: true},
			"11" + "0000000000000005" + "00000000" + "01" + "01" + "72" + "01" + "0000000000000003" + strings.Repeat("00", MinKeepalivePlaintext-25)},
		{&Keepalive{Counter: 5, Subs: []Sub{{RepoID: "r", Known: true, LastSeq: 3}}, Standby: true, Quiet: true},
			"12" + "0000000000000005" + "00000000" + "01" + "01" + "72" + "01" + "0000000000000003" + strings.Repeat("00", MinKeepalivePlaintext-25)},
		{&Forward{Seq: 1, TimeMilli: 2, RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB, Sig: [SigLen]byte{0xaa, 63: 0xbb}},
			"08" + "0000000000000001" + "0000000000000002" + "01" + "72" +
				"000c" + hex.EncodeToString([]byte("refs/heads/m")) + "14" + oidA + oidB + "aa" + strings.Repeat("00", 62) + "bb"},
		{&Fanout{SigningKey: [32]byte{31: 1}, Arity: 3}, "09" + strings.Repeat("00", 31) + "01" + "03"},
		{&PeerInfo{Flags: 1, Mapping: 1, Filtering: 3, Host: []netip.AddrPort{netip.MustParseAddrPort("198.19.1.10:4660")}},
			"0a" + "01" + "01" + "03" + "01" + "04" + "c613010a" + "1234"},
		{&PeerInfo{Flags: PeerFlagParent | PeerFlagRejoin, Mapping: 3, Filtering: 3}, "0a" + "03" + "03" + "03" + "00"},
		{&Challenge{Cookie: [CookieLen]byte{0xaa, 15: 0xbb}}, "0d" + "aa" + strings.Repeat("00", 14) + "bb"},
		{&ChallengeReply{Cookie: [CookieLen]byte{0xcc, 15: 0xdd}}, "0e" + "cc" + strings.Repeat("00", 14) + "dd"},
		{&Validated{}, "0f"},
		{&Edge{ID: 2, Role: RoleParent, RepoID: "r", Peer: fixedKey(5), LocalUfrag: "abcd", LocalPwd: strings.Repeat("p", 22), RemoteUfrag: "wxyz", RemotePwd: strings.Repeat("q", 22),
			Candidates: []Candidate{{CandSrflx, netip.MustParseAddrPort("198.18.0.12:4660")}}},
			"0b" + "0000000000000002" + "01" + "01" + "72" + strings.Repeat("05", 32) +
				"04" + hex.EncodeToString([]byte("abcd")) + "16" + strings.Repeat("70", 22) +
				"04" + hex.EncodeToString([]byte("wxyz")) + "16" + strings.Repeat("71", 22) +
				"01" + "02" + "04" + "c612000c" + "1234"},
		{&EdgeState{ID: 2, State: EdgeFailed, PathKind: 0, RTTMicro: 258}, "0c" + "0000000000000002" + "03" + "00" + "00000102"},
		{&Notify{Seq: 9, After: 7, TimeMilli: 2, Recipient: fixedKey(0xee), RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB,
			WithMessage: true, Chat: Chat{Count: 3, Author: "al", Subject: "hi"}},
			"14" + "0000000000000009" + "0000000000000007" + "0000000000000002" + strings.Repeat("ee", 32) + "01" + "72" +
				"000c" + hex.EncodeToString([]byte("refs/heads/m")) + "14" + oidA + oidB +
				"00000003" + "02" + "616c" + "02" + "6869"},
		{&Subscribe{Flags: SubscribeMessages, Repos: []RepoPrefs{{RepoID: "r", Refs: []string{"refs/h*"}}, {RepoID: "s"}}},
			"13" + "01" + "02" + "01" + "72" + "01" + "07" + hex.EncodeToString([]byte("refs/h*")) + "01" + "73" + "00"},
		{&Subscribed{Digest: [SubscribeDigest]byte{0xaa, 7: 0xbb}}, "15" + "aa" + strings.Repeat("00", 6) + "bb"},
		{&Nodes{Addrs: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:4660")}}, "17" + "01" + "04" + "c6120001" + "1234"},
		{&Forward{Seq: 1, TimeMilli: 2, RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB, WithMessage: true, Chat: Chat{Count: 1, Author: "al", Subject: "hi"},
			Sig: [SigLen]byte{0xaa, 63: 0xbb}},
			"16" + "0000000000000001" + "0000000000000002" + "01" + "72" +
				"000c" + hex.EncodeToString([]byte("refs/heads/m")) + "14" + oidA + oidB +
				"00000001" + "02" + "616c" + "02" + "6869" + "aa" + strings.Repeat("00", 62) + "bb"},
	}
	for _, c := range cases {
		got := hex.EncodeToString(c.m.AppendPlaintext(nil))
		if got != c.want {
			t.Errorf("%T:\n got %s\nwant %s", c.m, got, c.want)
		}
	}
}

// A sealed datagram with fixed keys and nonce. box is deterministic, so the
// bytes are fixed. The public key and the box were computed independently:
// the key with OpenSSL's X25519, the box with tweetnacl-js (nacl.box).
func TestGoldenSealed(t *testing.T) {
	senderPriv, peerPriv := fixedKey(1), fixedKey(2)
	senderPub := publicOf(senderPriv)
	peerPub := publicOf(peerPriv)
	var nonce [NonceLen]byte
	for i := range nonce {
		nonce[i] = byte(i)
	}
	shared := SharedKey(peerPub, senderPriv)
	got, err := SealWithNonce(nil, &Ping{Counter: 1}, senderPub, &nonce, &shared)
	if err != nil {
		t.Fatal(err)
	}
	const want = "67636e01" + // magic "gcn", version 1
		"a4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a209" + // sender public key
		"000102030405060708090a0b0c0d0e0f1011121314151617" + // nonce
		"b91b62ac243eab87183ab797774d54fae4cf83c39a31e636b8" // box: 16-byte tag, 9-byte ciphertext
	if h := hex.EncodeToString(got); h != want {
		t.Fatalf("sealed ping:\n got %s\nwant %s", h, want)
	}
	// The recipient opens it with its own shared key.
	recvShared := SharedKey(senderPub, peerPriv)
	from, m, err := Open(got, &recvShared)
	if err != nil || from != senderPub || !reflect.DeepEqual(m, &Ping{Counter: 1}) {
		t.Fatalf("open: %v %v %#v", err, from, m)
	}
}

func publicOf(priv Key) Key { return PublicKey(priv) }

func TestRoundTrip(t *testing.T) {
	pubA, privA, _ := GenerateKey()
	pubB, privB, _ := GenerateKey()
	sAB, sBA := SharedKey(pubB, privA), SharedKey(pubA, privB)
	for _, m := range sampleMessages() {
		plain := m.AppendPlaintext(nil)
		if n, ok := m.(*Notify); ok && n.plaintextLen() != len(plain) {
			t.Fatalf("Notify.plaintextLen %d, encoded %d", n.plaintextLen(), len(plain))
		}
		back, err := ParsePlaintext(plain)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if !reflect.DeepEqual(normalise(back), normalise(m)) {
			t.Fatalf("%T round trip:\n got %#v\nwant %#v", m, back, m)
		}
		d, err := Seal(nil, m, pubA, &sAB)
		if err != nil {
			t.Fatal(err)
		}
		if len(d) != len(plain)+Overhead {
			t.Fatalf("%T: datagram %d bytes, want %d", m, len(d), len(plain)+Overhead)
		}
		from, back2, err := Open(d, &sBA)
		if err != nil || from != pubA || !reflect.DeepEqual(normalise(back2), normalise(m)) {
			t.Fatalf("%T sealed round trip: %v", m, err)
		}
	}
}

// normalise makes an empty and a nil status slice compare equal.
func normalise(m Message) Message {
	if p, ok := m.(*Pong); ok && len(p.Statuses) == 0 {
		c := *p
		c.Statuses = nil
		return &c
	}
	return m
}

func TestAppendOntoPrefix(t *testing.T) {
	prefix := []byte("prefix-bytes")
	pub, priv, _ := GenerateKey()
	shared := SharedKey(pub, priv)
	for _, m := range sampleMessages() {
		alone := m.AppendPlaintext(nil)
		withPrefix := m.AppendPlaintext(append([]byte(nil), prefix...))
		if !bytes.HasPrefix(withPrefix, prefix) || !bytes.Equal(withPrefix[len(prefix):], alone) {
			t.Fatalf("%T: AppendPlaintext clobbered or misplaced the prefix", m)
		}
		d, err := Seal(append([]byte(nil), prefix...), m, pub, &shared)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(d, prefix) {
			t.Fatalf("%T: Seal lost the prefix", m)
		}
		if _, back, err := Open(d[len(prefix):], &shared); err != nil || !reflect.DeepEqual(normalise(back), normalise(m)) {
			t.Fatalf("%T: open after prefix: %v", m, err)
		}
	}
}

func TestRejects(t *testing.T) {
	pub, priv, _ := GenerateKey()
	shared := SharedKey(pub, priv)
	good, _ := Seal(nil, &Ack{RepoID: "r", Seq: 1}, pub, &shared)

	tamper := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrNotGCN},
		{"stun", []byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42}, ErrNotGCN},
		{"truncated header", good[:40], ErrShort},
		{"truncated box", good[:len(good)-1], ErrAuth},
		{"version", tamper(func(b []byte) []byte { b[3] = 2; return b }), ErrVersion},
		{"forged", tamper(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrAuth},
		{"oversized", append(append([]byte(nil), good...), make([]byte, MaxDatagram)...), ErrTooLarge},
	}
	for _, c := range cases {
		if _, _, err := Open(c.b, &shared); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}

	plain := []struct {
		name string
		p    []byte
		want error
	}{
		{"no type", nil, ErrShort},
		{"unknown type", []byte{0x7f}, ErrUnknownType},
		{"trailing", append((&Ack{RepoID: "r", Seq: 1}).AppendPlaintext(nil), 0), ErrTrailing},
		{"truncated ack", (&Ack{RepoID: "r", Seq: 1}).AppendPlaintext(nil)[:5], ErrShort},
		{"bad repo", (&Ack{RepoID: "../x", Seq: 1}).AppendPlaintext(nil), ErrRepoID},
		{"bad ref", (&Notify{Seq: 1, RepoID: "r", Ref: "HEAD", Old: oidA, New: oidB}).AppendPlaintext(nil), ErrRef},
		{"seq zero", (&Notify{Seq: 0, RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB}).AppendPlaintext(nil), ErrField},
		{"no subs", (&Keepalive{Counter: 1}).AppendPlaintext(nil), ErrField},
		{"previous event not before", (&Notify{Seq: 3, After: 3, RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB, WithMessage: true}).AppendPlaintext(nil), ErrField},
		{"subject with a line end", (&Notify{Seq: 3, After: 2, RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB, WithMessage: true, Chat: Chat{Subject: "a\nb"}}).AppendPlaintext(nil), ErrField},
		{"subject not UTF-8", (&Notify{Seq: 3, After: 2, RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB, WithMessage: true, Chat: Chat{Subject: "\xff"}}).AppendPlaintext(nil), ErrField},
		{"truncated message", (&Notify{Seq: 3, After: 2, RepoID: "r", Ref: "refs/heads/m", Old: oidA, New: oidB, WithMessage: true, Chat: Chat{Subject: "hello"}}).AppendPlaintext(nil)[:123], ErrShort},
		{"subscribe flags", (&Subscribe{Flags: 4}).AppendPlaintext(nil), ErrField},
		{"no nodes", []byte{0x17, 0}, ErrField},
		{"unspecified node", (&Nodes{Addrs: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:3478")}}).AppendPlaintext(nil), ErrField},
		{"node port zero", (&Nodes{Addrs: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:0")}}).AppendPlaintext(nil), ErrField},
		{"subscribe bad pattern", (&Subscribe{Repos: []RepoPrefs{{RepoID: "r", Refs: []string{"heads/*"}}}}).AppendPlaintext(nil), ErrRef},
		{"subscribe bad glob", (&Subscribe{Repos: []RepoPrefs{{RepoID: "r", Refs: []string{"refs/[a"}}}}).AppendPlaintext(nil), ErrRef},
		{"subscribe too many patterns", (&Subscribe{Repos: []RepoPrefs{{RepoID: "r", Refs: strings.Fields(strings.Repeat("refs/a ", MaxRefPatterns+1))}}}).AppendPlaintext(nil), ErrField},
		{"subscribed truncated", []byte{0x15, 1, 2, 3}, ErrShort},
		{"non-zero padding", func() []byte {
			b := (&Keepalive{Counter: 1, Subs: []Sub{{RepoID: "r"}}}).AppendPlaintext(nil)
			b[len(b)-1] = 1
			return b
		}(), ErrTrailing},
	}
	for _, c := range plain {
		if _, err := ParsePlaintext(c.p); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestNotifyValidate(t *testing.T) {
	ok := Notify{Seq: 1, RepoID: "chat.git", Ref: "refs/heads/main", Old: oidA, New: oidB}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	long := ok
	long.RepoID = strings.Repeat("r", MaxRepoID)
	long.Old, long.New = strings.Repeat("a", 64), strings.Repeat("b", 64)
	long.Ref = "refs/heads/" + strings.Repeat("x", MaxRef-len("refs/heads/"))
	if err := long.Validate(); !errors.Is(err, ErrMessageLarge) {
		t.Fatalf("a %d-byte ref: got %v, want ErrMessageLarge", len(long.Ref), err)
	}
	fits := ok
	fits.Ref = "refs/heads/" + strings.Repeat("x", 900)
	if err := fits.Validate(); err != nil {
		t.Fatalf("a 911-byte ref should fit: %v", err)
	}
	for _, bad := range []Notify{
		{Seq: 1, RepoID: "", Ref: ok.Ref, Old: oidA, New: oidB},
		{Seq: 1, RepoID: "a", Ref: "refs/heads/a b", Old: oidA, New: oidB},
		{Seq: 1, RepoID: "a", Ref: ok.Ref, Old: "xyz", New: oidB},
		{Seq: 1, RepoID: "a", Ref: ok.Ref, Old: oidA, New: strings.Repeat("0", 64)},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate accepted %+v", bad)
		}
	}
}

// The largest Pong is no larger than the smallest keepalive: the rendezvous
// never amplifies.
func TestPongNeverLargerThanKeepalive(t *testing.T) {
	small := (&Keepalive{Counter: 1, Subs: []Sub{{RepoID: "r"}}}).AppendPlaintext(nil)
	big := &Pong{Counter: 1, Observed: netip.MustParseAddrPort("[2001:db8::1]:1"), Advice: 1}
	for range MaxSubs {
		big.Statuses = append(big.Statuses, SubStatus{})
	}
	if p := big.AppendPlaintext(nil); len(p) > len(small) {
		t.Fatalf("largest pong %d bytes > smallest keepalive %d bytes", len(p), len(small))
	}
}

func TestValidRepoID(t *testing.T) {
	for _, ok := range []string{"chat.git", "team/chat.git", "a", "A-b_c.9"} {
		if err := ValidRepoID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/abs", "a//b", "a/../b", "..", ".", "a b", "a\x00", strings.Repeat("a", 101), "é"} {
		if err := ValidRepoID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestHeartbeatReply(t *testing.T) {
	r := HeartbeatReply{RepoID: "chat.git", Addrs: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:3478"), netip.MustParseAddrPort("[2001:db8::1]:3479")}, ServerKey: fixedKey(0xab)}
	r.Expiry = time.Unix(1800000000, 0)
	line := r.String()
	if want := "gcn1 chat.git 198.18.0.1:3478,[2001:db8::1]:3479 " + strings.Repeat("ab", 32) + " 1800000000\n"; line != want {
		t.Fatalf("got %q want %q", line, want)
	}
	back, err := ParseHeartbeatReply(line)
	if err != nil || !reflect.DeepEqual(back, r) {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	for _, bad := range []string{
		"", "gcn1 chat.git 198.18.0.1:3478 " + strings.Repeat("ab", 32) + " 1800000000", // no newline
		strings.Replace(line, "gcn1", "gcn2", 1),
		line + "extra\n",
		strings.Replace(line, "chat.git", "../x", 1),
		strings.Replace(line, "198.18.0.1:3478", "198.18.0.1:0", 1),
		strings.Replace(line, " 1800000000", " -5", 1),
		strings.Replace(line, "ab", "zz", 1),
		"gcn1 a 198.18.0.1:1,198.18.0.1:2,198.18.0.1:3 " + strings.Repeat("ab", 32) + " 1\n",
	} {
		if _, err := ParseHeartbeatReply(bad); !errors.Is(err, ErrReply) {
			t.Errorf("%q: got %v", bad, err)
		}
	}
}

func FuzzParseHeartbeatReply(f *testing.F) {
	f.Add("gcn1 chat.git 198.18.0.1:3478 " + strings.Repeat("ab", 32) + " 1800000000\n")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseHeartbeatReply(s)
		if err != nil {
			return
		}
		if back, err := ParseHeartbeatReply(r.String()); err != nil || !reflect.DeepEqual(back, r) {
			t.Fatalf("reply does not survive a round trip: %v", err)
		}
	})
}

// A registration proof opens only with the server's side of the same key
// pair, for the same repository path and port, within ProofWindow; anything
// else, including a proof cut short or with a non-canonical time, is
// ErrProof.
func TestHeartbeatProof(t *testing.T) {
	clientPub, clientPriv, _ := GenerateKey()
	serverPub, serverPriv, _ := GenerateKey()
	_, strangerPriv, _ := GenerateKey()
	now := time.Unix(1800000000, 0)
	mine, theirs := SharedKey(serverPub, clientPriv), SharedKey(clientPub, serverPriv)
	p, err := HeartbeatProof(&mine, "chat.git", "4000", now)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p, "1800000000.") {
		t.Fatalf("proof %q does not start with its time", p)
	}
	if err := VerifyHeartbeatProof(p, &theirs, "chat.git", "4000", now.Add(ProofWindow)); err != nil {
		t.Fatalf("a fresh proof refused: %v", err)
	}
	stranger := SharedKey(serverPub, strangerPriv)
	forged, _ := HeartbeatProof(&stranger, "chat.git", "4000", now)
	ts, rest, _ := strings.Cut(p, ".")
	for name, c := range map[string]struct {
		proof, repo, port string
		at                time.Time
	}{
		"another key":     {forged, "chat.git", "4000", now},
		"another repo":    {p, "other.git", "4000", now},
		"another port":    {p, "chat.git", "4001", now},
		"too old":         {p, "chat.git", "4000", now.Add(ProofWindow + time.Second)},
		"from the future": {p, "chat.git", "4000", now.Add(-ProofWindow - time.Second)},
		"time changed":    {"1800000001." + rest, "chat.git", "4000", now},
		"time padded":     {"0" + ts + "." + rest, "chat.git", "4000", now},
		"cut short":       {p[:len(p)-2], "chat.git", "4000", now},
		"no box":          {ts + ".", "chat.git", "4000", now},
		"empty":           {"", "chat.git", "4000", now},
		"oversized":       {ts + "." + strings.Repeat("ab", 5000), "chat.git", "4000", now},
	} {
		if err := VerifyHeartbeatProof(c.proof, &theirs, c.repo, c.port, c.at); !errors.Is(err, ErrProof) {
			t.Errorf("%s: %v, want ErrProof", name, err)
		}
	}
}

// An Opener decodes what every follower sends without allocating: its acks
// land in its own Ack, and a repository id it has seen is not copied again.
// A bad id is never remembered, and every id still decodes once it holds
// as many as it keeps.
func TestOpenerReusesAckAndRepoIDs(t *testing.T) {
	pub, priv, _ := GenerateKey()
	srvPub, srvPriv, _ := GenerateKey()
	shared := SharedKey(pub, srvPriv)
	clientShared := SharedKey(srvPub, priv)
	seal := func(m Message) []byte {
		b, err := Seal(nil, m, pub, &clientShared)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var o Opener
	ack := seal(&Ack{RepoID: "chat.git", Seq: 7})
	open := func(b []byte) Message {
		_, m, err := o.Open(b, &shared)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	first := open(ack).(*Ack)
	if *first != (Ack{RepoID: "chat.git", Seq: 7}) {
		t.Fatalf("opened %+v", *first)
	}
	if allocs := testing.AllocsPerRun(100, func() { open(ack) }); allocs != 0 {
		t.Errorf("opening an ack of a known repository allocates %.0f times", allocs)
	}
	second := open(seal(&Ack{RepoID: "other.git", Seq: 9})).(*Ack)
	if second != first || *second != (Ack{RepoID: "other.git", Seq: 9}) {
		t.Errorf("the second ack is %p %+v, want the Opener's own (%p) holding other.git 9", second, *second, first)
	}
	// A forged-looking id (sealed by a real key, so it gets to decoding) is
	// refused each time, not learnt the first.
	bad := seal(rawPlaintext((&Ack{RepoID: "../x", Seq: 1}).AppendPlaintext(nil)))
	for range 2 {
		if _, _, err := o.Open(bad, &shared); !errors.Is(err, ErrRepoID) {
			t.Fatalf("an ack of ../x: %v, want ErrRepoID", err)
		}
	}
	if _, ok := o.ids["../x"]; ok {
		t.Error("a bad id was remembered")
	}
	for i := range maxOpenerIDs + 10 {
		id := fmt.Sprintf("r%d.git", i)
		if got := open(seal(&Ack{RepoID: id, Seq: 1})).(*Ack).RepoID; got != id {
			t.Fatalf("id %d opened as %q", i, got)
		}
	}
	if len(o.ids) > maxOpenerIDs {
		t.Errorf("the Opener keeps %d ids, at most %d", len(o.ids), maxOpenerIDs)
	}
}

// rawPlaintext is a Message of any plaintext, valid or not.
type rawPlaintext []byte

func (p rawPlaintext) AppendPlaintext(b []byte) []byte { return append(b, p...) }
