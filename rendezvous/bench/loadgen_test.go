package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/store"
)

// The load generator speaks the real protocol to a real rendezvous on
// loopback: its clients register, each receives one push and acks it, and
// the rendezvous then records every client as having acked that push.
func TestLoadgenClientsRegisterReceiveAndAck(t *testing.T) {
	st := loadgenPush(t, 0, "127.77.0.1")
	if st.Notifies != 60 {
		t.Fatalf("the rendezvous sent %d notifications, want one to each of 60 clients", st.Notifies)
	}
}

// With --fanout 3 the simulated clients form the tree and forward as
// daemons do: every one of them gets the push and acks it, while the
// rendezvous sends it to 3 of them, and to nobody directly.
func TestLoadgenClientsForwardInTheTree(t *testing.T) {
	st := loadgenPush(t, 3, "127.78.0.1")
	if st.Notifies != 3 || st.DirectFallbacks != 0 || st.TreeJoins != 60 {
		t.Fatalf("rendezvous sent the push %d times with %d direct fallbacks, %d in the tree; want 3, 0, 60", st.Notifies, st.DirectFallbacks, st.TreeJoins)
	}
}

// loadgenPush registers 60 simulated clients with a rendezvous running
// --fanout arity, pushes once, checks that every client got it and that the
// rendezvous recorded every ack, and returns the rendezvous's counters.
func loadgenPush(t *testing.T, arity int, firstIP string) rendezvous.Stats {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	served := make(chan error, 1)
	go func() {
		served <- rendezvous.ListenAndServe(ctx, rendezvous.Options{Listen: "127.0.0.1:0", StoreDir: dir, Open: true, Fanout: arity, Logger: slog.New(slog.DiscardHandler)})
	}()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var addr netip.AddrPort
	for i := 0; i < 200; i++ { // the rendezvous writes its address once it serves
		if a, err := st.RendezvousAddr(); err == nil {
			addr = a
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	pub, _, err := st.ServerKeys()
	if err != nil || !addr.IsValid() {
		t.Fatalf("rendezvous did not start: %v", err)
	}

	const clients = 60
	pr, pw := io.Pipe()
	genCtx, stopGen := context.WithCancel(ctx)
	genDone := make(chan error, 1)
	go func() {
		genDone <- Loadgen(genCtx, LoadgenOptions{Server: addr, ServerKey: pub, Repo: "chat.git", Clients: clients,
			FirstIP: netip.MustParseAddr(firstIP), PerIP: 20, Peer: arity > 0}, pw)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	next := func() genEvent {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("generator ended: %v", <-genDone)
		}
		var e genEvent
		if err := json.Unmarshal(lines.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	if e := next(); e.Event != "registered" || e.Count != clients {
		t.Fatalf("first report %+v, want %d registered", e, clients)
	}
	if _, err := st.Append("chat.git", []store.Update{{Old: strings.Repeat("0", 40), New: strings.Repeat("1", 40), Ref: "refs/heads/main"}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if reply, err := control.Dial(st.SocketPath(), "poke chat.git", time.Second); err != nil || reply != "ok\n" {
		t.Fatalf("poke: %q %v", reply, err)
	}
	if e := next(); e.Event != "notified" || e.Count != clients {
		t.Fatalf("second report %+v, want %d notified", e, clients)
	}
	// Every ack reaches the rendezvous (bounded wait: acks are in flight).
	var acked int
	for i := 0; i < 100; i++ {
		reply, err := control.Dial(st.SocketPath(), "status", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var rows []rendezvous.ClientStatus
		if err := json.Unmarshal([]byte(reply), &rows); err != nil {
			t.Fatal(err)
		}
		acked = 0
		for _, r := range rows {
			if r.Acked["chat.git"] == 1 {
				acked++
			}
		}
		if acked == clients {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if acked != clients {
		t.Fatalf("%d of %d clients acked at the rendezvous", acked, clients)
	}
	var stats rendezvous.Stats
	if err := control.AskJSON(st.SocketPath(), "stats", time.Second, &stats); err != nil {
		t.Fatal(err)
	}
	stopGen()
	go io.Copy(io.Discard, pr)
	if err := <-genDone; err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	return stats
}

// The floor's clients say hello, are welcomed, and echo each datagram of a
// push once: the floor counts one echo from every client.
func TestFloorWelcomesAndHearsEveryClient(t *testing.T) {
	f, err := listenFloor()
	if err != nil {
		t.Fatal(err)
	}
	defer f.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const clients = 50
	genDone := make(chan error, 1)
	go func() {
		genDone <- Loadgen(ctx, LoadgenOptions{Server: f.conn.LocalAddrPort(), Clients: clients, FirstIP: netip.MustParseAddr("127.79.0.1"), PerIP: 10, Echo: true}, io.Discard)
	}()
	if err := f.welcome(clients, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if len(f.clients) != clients {
		t.Fatalf("%d clients welcomed, want %d", len(f.clients), clients)
	}
	if _, err := f.push(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-genDone; err != nil {
		t.Fatal(err)
	}
}
