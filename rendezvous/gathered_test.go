package rendezvous

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// Members whose edges gather hand their acks to their parents, which send
// them on together: the rendezvous takes each as the member's own, and a
// member whose ack came that way is not served directly at its deadline.
// An ack of a member that is not the sender's child, and an altered one,
// count for nothing. Only an edge whose two ends both offered to gather is
// marked so.
func TestGatheredAcksCountAsTheMembersOwn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newFanLab(t, 2, 0)
		l.peerFlags = wire.PeerFlagGather
		for i := range 6 {
			c := l.join(fmt.Sprintf("198.18.1.%d:4000", i+1))
			if n := len(c.take(func(m wire.Message) bool { _, ok := m.(*wire.Gather); return ok })); n != 1 {
				t.Fatalf("client %d was offered Gather %d times", i, n)
			}
		}
		l.peerFlags = 0
		old := l.join("198.18.1.7:4000") // an older daemon: it never heard of gathering
		byKey := map[wire.Key]*fanClient{}
		for _, c := range l.clients {
			byKey[c.pub] = c
		}
		parentOf := func(c *fanClient) *fanClient {
			n := l.s.clients[c.pub].subs[0].node
			if n.parent == nil {
				return nil
			}
			return byKey[n.parent.su.c.key]
		}
		for _, c := range l.clients {
			for _, e := range edges(c) {
				child := c
				if e.Role == wire.RoleChild {
					child = byKey[e.Peer]
				}
				if want := child != old && parentOf(child) != old; e.Gather != want {
					t.Errorf("edge %d (role %d) marked gather %v, want %v", e.ID, e.Role, e.Gather, want)
				}
			}
		}
		sealedAck := func(c *fanClient, seq uint64) []byte {
			b, err := wire.Seal(nil, &wire.Ack{RepoID: "chat.git", Seq: seq}, c.pub, &c.shared)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}

		l.push()
		for _, c := range l.clients {
			forwards(c)
		}
		// The rendezvous's own children ack themselves; each parent passes
		// on its gathering children's acks; a stranger's ack passed on by a
		// parent, and an altered one, count for nothing.
		children := map[*fanClient][]*fanClient{}
		for _, c := range l.clients {
			if p := parentOf(c); p == nil {
				l.send(c, &wire.Ack{RepoID: "chat.git", Seq: 1})
			} else if c != old {
				children[p] = append(children[p], c)
			}
		}
		// Of two parents, the first alters its first child's ack and passes
		// on the second parent's first child's, which that parent drops.
		var parents []*fanClient
		for p := range children {
			parents = append(parents, p)
		}
		if len(parents) < 2 {
			t.Fatalf("the tree has %d parents with gathering children", len(parents))
		}
		altered, stranger := children[parents[0]][0], children[parents[1]][0]
		relayed := 0
		for i, p := range parents {
			m := &wire.Acks{}
			for _, k := range children[p] {
				switch k {
				case altered:
					a := sealedAck(k, 1)
					a[len(a)-1] ^= 1
					m.Datagrams = append(m.Datagrams, a)
				case stranger:
				default:
					relayed++
					m.Datagrams = append(m.Datagrams, sealedAck(k, 1))
				}
			}
			if i == 0 {
				m.Datagrams = append(m.Datagrams, sealedAck(stranger, 1))
			}
			l.send(p, m)
		}
		st := l.s.Stats()
		if relayed == 0 || st.AcksRelayed != uint64(relayed) || st.AckBatches != uint64(len(parents)) || st.Forged != 1 || st.Unexpected != 1 {
			t.Fatalf("relayed %d in %d batches, forged %d, refused %d; want %d in %d, 1, 1",
				st.AcksRelayed, st.AckBatches, st.Forged, st.Unexpected, relayed, len(parents))
		}
		// The older daemon acks itself, as ever.
		l.send(old, &wire.Ack{RepoID: "chat.git", Seq: 1})
		time.Sleep(treeDeadline(3) + time.Millisecond)
		l.flush()
		for _, c := range l.clients {
			n := len(forwards(c))
			if want := c == altered || c == stranger; (n == 1) != want || n > 1 {
				t.Errorf("after the deadlines, %d direct sends to a member whose ack was %s",
					n, map[bool]string{true: "refused", false: "taken"}[want])
			}
		}
	})
}
