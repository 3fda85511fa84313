package rendezvous

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// BenchmarkKeepalive is the rendezvous's work for one keepalive from a
// registered client: open, check, update, and for one that asks, seal the
// pong.
func BenchmarkKeepalive(b *testing.B) {
	b.Run("answered", func(b *testing.B) { benchmarkKeepalive(b, false, true) })
	b.Run("quiet", func(b *testing.B) { benchmarkKeepalive(b, true, true) })
	// Registered mode also checks each subscription's authorisation file.
	b.Run("quiet-registered", func(b *testing.B) { benchmarkKeepalive(b, true, false) })
}

func benchmarkKeepalive(b *testing.B, quiet, open bool) {
	st, _ := store.Open(b.TempDir())
	conn, _ := netsim.NewMemNet(1).Listen("198.18.0.1:3478")
	now := time.Now()
	s, err := New(Config{Conn: conn, Store: st, Open: open})
	if err != nil {
		b.Fatal(err)
	}
	const clients = 1000
	type cl struct {
		pub    wire.Key
		shared [32]byte
		src    netip.AddrPort
	}
	cs := make([]cl, clients)
	for i := range cs {
		pub, priv, _ := wire.GenerateKey()
		cs[i] = cl{pub, wire.SharedKey(s.PublicKey(), priv), netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), uint16(1000+i))}
		if !open {
			if err := st.Authorise("chat.git", pub, now.Add(time.Hour)); err != nil {
				b.Fatal(err)
			}
		}
	}
	pkts := make([][]byte, b.N+clients)
	for i := range pkts {
		c := cs[i%clients]
		pkts[i], _ = wire.Seal(nil, &wire.Keepalive{Counter: uint64(i + 1), Subs: []wire.Sub{{RepoID: "chat.git", Known: true}}, Quiet: quiet && i >= clients}, c.pub, &c.shared)
	}
	for i := 0; i < clients; i++ { // register, and answer the Challenge
		c := cs[i]
		s.handle(0, 0, 0, pkts[i], c.src)
		ans, _ := wire.Seal(nil, &wire.ChallengeReply{Cookie: s.cookie(c.pub, c.src, cookieEpochOf(time.Now()))}, c.pub, &c.shared)
		s.handle(0, 0, 0, ans, c.src)
	}
	b.ResetTimer()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if reply := s.handle(0, 0, 0, pkts[clients+i], cs[i%clients].src); (reply == nil) != quiet {
			b.Fatalf("quiet %v, reply %d bytes", quiet, len(reply))
		}
	}
}

// BenchmarkAck is the rendezvous's work for one client's ack of a new event:
// open, find the subscription, move it on, take it off the pending list.
func BenchmarkAck(b *testing.B) {
	st, _ := store.Open(b.TempDir())
	conn, _ := netsim.NewMemNet(1).Listen("198.18.0.1:3478")
	s, err := New(Config{Conn: conn, Store: st, Open: true})
	if err != nil {
		b.Fatal(err)
	}
	const clients = 1000
	type cl struct {
		pub    wire.Key
		shared [32]byte
		src    netip.AddrPort
	}
	cs := make([]cl, clients)
	for i := range cs {
		pub, priv, _ := wire.GenerateKey()
		c := cl{pub, wire.SharedKey(s.PublicKey(), priv), netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(1 + i/250), byte(i)}), uint16(1000+i))}
		cs[i] = c
		ka, _ := wire.Seal(nil, &wire.Keepalive{Counter: 1, Subs: []wire.Sub{{RepoID: "chat.git"}}}, c.pub, &c.shared)
		s.handle(0, 0, 0, ka, c.src)
		ans, _ := wire.Seal(nil, &wire.ChallengeReply{Cookie: s.cookie(c.pub, c.src, cookieEpochOf(time.Now()))}, c.pub, &c.shared)
		s.handle(0, 0, 0, ans, c.src)
	}
	r := s.repos["chat.git"]
	if r == nil {
		b.Fatal("no repository")
	}
	base := r.head
	acks := make([][]byte, clients)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%clients == 0 {
			// A new event, and every client's ack of it, outside the timing.
			b.StopTimer()
			s.mu.Lock()
			seq := r.head + 1
			s.addEvents(r, []store.Event{{Seq: seq, TimeMilli: 1, Old: strings.Repeat("0", 40), New: strings.Repeat("1", 40), Ref: "refs/heads/main"}})
			s.mu.Unlock()
			for j, c := range cs {
				acks[j], _ = wire.Seal(acks[j][:0], &wire.Ack{RepoID: "chat.git", Seq: seq}, c.pub, &c.shared)
			}
			b.StartTimer()
		}
		s.handle(0, 0, 0, acks[i%clients], cs[i%clients].src)
	}
	b.StopTimer()
	// Each ack moved its subscription on: the first client acked every event.
	if su := s.clients[cs[0].pub].sub("chat.git"); su == nil || su.acked != r.head || r.head == base {
		b.Fatalf("the first client's subscription is at %v, the head at %d", su, r.head)
	}
}
