package punch_test

import (
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/rendezvous"
)

// goroutinesSettle reports whether the goroutine count falls back to base
// within a bounded wait.
func goroutinesSettle(base int) bool {
	for range 200 {
		if runtime.NumGoroutine() <= base {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// A rendezvous and a daemon on real loopback sockets leave no goroutine
// behind once stopped.
func TestNoGoroutineLeaks(t *testing.T) {
	base := runtime.NumGoroutine()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	rvDone := make(chan error, 1)
	go func() {
		rvDone <- rendezvous.ListenAndServe(ctx, rendezvous.Options{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "store"), Open: true, Logger: discard})
	}()
	var key, addr string
	for range 200 {
		if k, a, ok := readRendezvous(filepath.Join(dir, "store")); ok {
			key, addr = k, a
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if addr == "" {
		t.Fatal("rendezvous did not start")
	}
	conn, err := udpconn.Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := punch.New(punch.Config{Conn: conn, StateDir: filepath.Join(dir, "state"),
		Servers: []punch.Server{{Addr: mustAddr(addr), Key: mustKey(t, key), Repos: []string{"chat.git"}}}})
	if err != nil {
		t.Fatal(err)
	}
	dDone := make(chan error, 1)
	go func() { dDone <- d.Run(ctx) }()
	for range 200 {
		if _, known := d.LastSeq(mustKey(t, key), "chat.git"); known {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, known := d.LastSeq(mustKey(t, key), "chat.git"); !known {
		t.Fatal("daemon never registered")
	}
	cancel()
	if err := <-dDone; err != nil {
		t.Fatal(err)
	}
	if err := <-rvDone; err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if !goroutinesSettle(base) {
		buf := make([]byte, 1<<16)
		t.Fatalf("goroutines leaked: %d before, %d after\n%s", base, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	}
}
