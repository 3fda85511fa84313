package punch

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/wire"
)

// A parent holds its children's acks until every child on a gathering edge
// has handed one over, and then sends them together at once; a child that
// never does holds the others back by gatherWait, no more. An ack that is
// not the relaying child's own, or from a peer that is no gathering child,
// is refused. On fake time.
func TestGatheredAcksWaitForSiblingsThenGo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := netsim.NewMemNet(1)
		srvConn, err := mn.Listen("198.18.0.1:3478")
		if err != nil {
			t.Fatal(err)
		}
		conn, err := mn.Listen("198.18.0.2:4000")
		if err != nil {
			t.Fatal(err)
		}
		srvPub, srvPriv, _ := wire.GenerateKey()
		d, err := New(Config{Conn: conn, Servers: []Server{{Addr: srvConn.LocalAddrPort(), Key: srvPub, Repos: []string{"chat.git"}}},
			StateDir: t.TempDir(), Handle: func(context.Context, Event) {}})
		if err != nil {
			t.Fatal(err)
		}
		p := d.link(srvPub)
		type kid struct{ pub, priv wire.Key }
		var kids [3]kid
		for i := range kids {
			kids[i].pub, kids[i].priv, _ = wire.GenerateKey()
			role, gather := wire.RoleChild, i < 2 // the third is a child whose acks do not come this way
			d.edges[uint64(i+1)] = &peerEdge{id: uint64(i + 1), link: p, repo: "chat.git", role: role, gather: gather, peer: kids[i].pub,
				addr: netip.MustParseAddrPort(fmt.Sprintf("198.18.0.%d:4000", 10+i))}
		}
		ackOf := func(k kid, seq uint64) []byte {
			shared := wire.SharedKey(srvPub, k.priv)
			b, err := wire.Seal(nil, &wire.Ack{RepoID: "chat.git", Seq: seq}, k.pub, &shared)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		// What reaches the rendezvous, opened with its key.
		got := make(chan *wire.Acks, 8)
		go func() {
			pkts := []udpconn.Packet{{Buf: make([]byte, 2048)}}
			shared := wire.SharedKey(d.pub, srvPriv)
			for {
				if _, err := srvConn.ReadBatch(pkts); err != nil {
					close(got)
					return
				}
				if _, m, err := wire.Open(pkts[0].Buf, &shared); err == nil {
					if a, ok := m.(*wire.Acks); ok {
						got <- a
					}
				}
			}
		}()
		sent := func() []*wire.Acks {
			synctest.Wait()
			var out []*wire.Acks
			for {
				select {
				case a := <-got:
					out = append(out, a)
				default:
					return out
				}
			}
		}

		// One of two: it waits for the other, then goes alone.
		a1 := ackOf(kids[0], 1)
		d.onRelayAck(kids[0].pub, &wire.RelayAck{Datagram: a1})
		time.Sleep(gatherWait - time.Millisecond)
		if out := sent(); len(out) != 0 {
			t.Fatalf("sent %d batches before the wait was over", len(out))
		}
		time.Sleep(time.Millisecond)
		if out := sent(); len(out) != 1 || len(out[0].Datagrams) != 1 || !bytes.Equal(out[0].Datagrams[0], a1) {
			t.Fatalf("after the wait: %d batches, want one with the first child's ack", len(out))
		}

		// Both, with a newer ack replacing an older one: one batch, at once.
		start := time.Now()
		d.onRelayAck(kids[0].pub, &wire.RelayAck{Datagram: ackOf(kids[0], 2)})
		d.onRelayAck(kids[0].pub, &wire.RelayAck{Datagram: ackOf(kids[0], 3)})
		last := ackOf(kids[1], 3)
		d.onRelayAck(kids[1].pub, &wire.RelayAck{Datagram: last})
		out := sent()
		if len(out) != 1 || len(out[0].Datagrams) != 2 || time.Since(start) != 0 {
			t.Fatalf("%d batches (%v) after %v, want one of two acks at once", len(out), out, time.Since(start))
		}
		if !bytes.Contains(bytes.Join(out[0].Datagrams, nil), last) {
			t.Fatal("the second child's ack is not in the batch")
		}

		// Refused: a child handing over its sibling's ack, and an ack from a
		// child whose edge does not gather. Nothing goes.
		d.onRelayAck(kids[1].pub, &wire.RelayAck{Datagram: ackOf(kids[0], 4)})
		d.onRelayAck(kids[2].pub, &wire.RelayAck{Datagram: ackOf(kids[2], 4)})
		time.Sleep(2 * gatherWait)
		if out := sent(); len(out) != 0 {
			t.Fatalf("refused acks went on: %d batches", len(out))
		}
		if st := d.Stats(); st.Forged != 1 || st.Unexpected != 1 || st.AcksGathered != 3 {
			t.Fatalf("counters: forged %d, unexpected %d, gathered %d", st.Forged, st.Unexpected, st.AcksGathered)
		}

		// At stop, a wait in progress ends without sending.
		d.onRelayAck(kids[0].pub, &wire.RelayAck{Datagram: ackOf(kids[0], 5)})
		d.stopGathering()
		time.Sleep(2 * gatherWait)
		if out := sent(); len(out) != 0 {
			t.Fatalf("sent %d batches after stop", len(out))
		}
		srvConn.Close()
		conn.Close()
	})
}
