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

// benchClient is a client of a rendezvous on an in-memory network.
type benchClient struct {
	pub    wire.Key
	shared [32]byte
	src    netip.AddrPort
}

// registeredClients starts a rendezvous on an in-memory network with n
// clients that follow chat.git (authorised, unless open), each registered
// and shown to receive at its address.
func registeredClients(b *testing.B, open bool, n int) (*Server, []benchClient) {
	st, _ := store.Open(b.TempDir())
	conn, _ := netsim.NewMemNet(1).Listen("198.18.0.1:3478")
	s, err := New(Config{Conn: conn, Store: st, Open: open})
	if err != nil {
		b.Fatal(err)
	}
	cs := make([]benchClient, n)
	for i := range cs {
		pub, priv, _ := wire.GenerateKey()
		c := benchClient{pub, wire.SharedKey(s.PublicKey(), priv), netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(1 + i/250), byte(i)}), uint16(1000+i))}
		if !open {
			if err := st.Authorise("chat.git", pub, time.Now().Add(time.Hour)); err != nil {
				b.Fatal(err)
			}
		}
		ka, _ := wire.Seal(nil, &wire.Keepalive{Counter: 1, Subs: []wire.Sub{{RepoID: "chat.git", Known: true}}}, c.pub, &c.shared)
		s.handle(0, 0, 0, ka, c.src)
		ans, _ := wire.Seal(nil, &wire.ChallengeReply{Cookie: s.cookie(c.pub, c.src, cookieEpochOf(time.Now()))}, c.pub, &c.shared)
		s.handle(0, 0, 0, ans, c.src)
		cs[i] = c
	}
	return s, cs
}

func benchmarkKeepalive(b *testing.B, quiet, open bool) {
	const clients = 1000
	s, cs := registeredClients(b, open, clients)
	// The first keepalive after the Challenge asks for a pong; the rest
	// are what is measured.
	pkts := make([][]byte, b.N+clients)
	for i := range pkts {
		c := cs[i%clients]
		pkts[i], _ = wire.Seal(nil, &wire.Keepalive{Counter: uint64(i + 2), Subs: []wire.Sub{{RepoID: "chat.git", Known: true}}, Quiet: quiet && i >= clients}, c.pub, &c.shared)
	}
	for i := 0; i < clients; i++ {
		s.handle(0, 0, 0, pkts[i], cs[i].src)
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
	const clients = 1000
	s, cs := registeredClients(b, true, clients)
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
