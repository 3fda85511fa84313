package rendezvous

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// With two listening sockets, a read error on one ends Run with that error,
// after the other reader has been stopped: Run used to wait forever for it.
func TestRunStopsEveryReaderWhenOneFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st, err := store.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		mn := netsim.NewMemNet(1)
		conn, _ := mn.Listen("198.18.0.1:3478")
		alt, _ := mn.Listen("198.18.0.1:3479")
		defer conn.Close()
		s, err := New(Config{Conn: conn, AltConn: alt, Store: st, Open: true})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Run(context.Background()) }()
		synctest.Wait()
		alt.Close() // the alternate reader now fails with net.ErrClosed
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("Run returned nil after a read failed")
			}
		case <-time.After(time.Minute):
			conn.Close() // let the stuck reader go, so the bubble can end
			<-done
			t.Fatal("Run did not return within a minute after a read failed")
		}
	})
}
