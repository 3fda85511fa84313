package cluster

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/internal/natstest"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

func connect(t *testing.T, urls, name string) *Cluster {
	t.Helper()
	c, err := Connect(Options{URLs: urls, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func ev(seq uint64) store.Event {
	return store.Event{Seq: seq, TimeMilli: int64(seq), Old: fmt.Sprintf("%040x", seq-1), New: fmt.Sprintf("%040x", seq), Ref: "refs/heads/main",
		Chat: &wire.Chat{Author: "alice", Subject: fmt.Sprintf("m%d", seq), Count: 1}}
}

// An event published twice is in the stream once; the stream says where a
// repository stands; a second node consumes every event, in order, with
// its message; repository ids with dots and slashes keep apart.
func TestPublishOnceConsumeInOrder(t *testing.T) {
	s := natstest.Start(t, t.TempDir(), 0)
	a := connect(t, natstest.URL(s), "a")
	b := connect(t, natstest.URL(s), "b")
	ctx := context.Background()
	for _, repo := range []string{"chat.git", "team/chat.git"} {
		for seq := uint64(1); seq <= 20; seq++ {
			for range 2 { // every event twice: a publisher that retried
				if err := a.Publish(ctx, repo, ev(seq)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if last, err := a.LastPublished(ctx, "chat.git"); err != nil || last != 20 {
		t.Fatalf("last published %d, %v", last, err)
	}
	if last, err := a.LastPublished(ctx, "other.git"); err != nil || last != 0 {
		t.Fatalf("a repository with no events: %d, %v", last, err)
	}
	var mu sync.Mutex
	got := map[string][]store.Event{}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		b.ConsumeEvents(cctx, func(repo string, e store.Event) {
			mu.Lock()
			got[repo] = append(got[repo], e)
			mu.Unlock()
		})
		close(done)
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(got["chat.git"]) + len(got["team/chat.git"])
		mu.Unlock()
		if n >= 40 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a duplicate would show now
	mu.Lock()
	defer mu.Unlock()
	for _, repo := range []string{"chat.git", "team/chat.git"} {
		evs := got[repo]
		if len(evs) != 20 {
			t.Fatalf("%s: consumed %d events, want 20 (each once)", repo, len(evs))
		}
		for i, e := range evs {
			if e.Seq != uint64(i+1) || e.Chat == nil || e.Chat.Subject != fmt.Sprintf("m%d", i+1) || e.Ref != "refs/heads/main" {
				t.Fatalf("%s: event %d is %+v", repo, i, e)
			}
		}
	}
	st := b.Status(ctx)
	if !st.Ready || st.Stream.Messages != 40 || st.Stream.Subjects != 2 {
		t.Fatalf("status: %+v", st)
	}
}

// Authorisations put by one node reach another's watcher, and so does
// their end.
func TestAuthorisationsReachEveryNode(t *testing.T) {
	s := natstest.Start(t, t.TempDir(), 0)
	a := connect(t, natstest.URL(s), "a")
	b := connect(t, natstest.URL(s), "b")
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan AuthChange, 10)
	done := make(chan struct{})
	go func() { b.WatchAuth(ctx, func(c AuthChange) { changes <- c }); close(done) }()
	defer func() { cancel(); <-done }()
	key := wire.Key{1, 2, 3}
	exp := time.Unix(time.Now().Add(time.Hour).Unix(), 0)
	if err := a.PutAuth(ctx, "team/chat.git", key, exp); err != nil {
		t.Fatal(err)
	}
	want := func(deleted bool) {
		t.Helper()
		select {
		case c := <-changes:
			if c.Repo != "team/chat.git" || c.Key != key || c.Deleted != deleted || (!deleted && !c.Expiry.Equal(exp)) {
				t.Fatalf("change %+v", c)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no change reached the other node")
		}
	}
	want(false)
	if err := a.DeleteAuth(ctx, []string{"team/chat.git"}, key); err != nil {
		t.Fatal(err)
	}
	want(true)
}

// Nodes list themselves, and a malformed event in the stream is skipped
// rather than taken.
func TestNodesAndMalformedEvents(t *testing.T) {
	s := natstest.Start(t, t.TempDir(), 0)
	a := connect(t, natstest.URL(s), "a")
	ctx := context.Background()
	if err := a.PutNode(ctx, NodeInfo{Name: "a", UDP: []string{"198.18.0.1:3478"}, Clients: 7, Updated: time.Now()}); err != nil {
		t.Fatal(err)
	}
	nodes, err := a.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].Clients != 7 {
		t.Fatalf("nodes %+v, %v", nodes, err)
	}
	for _, bad := range []string{`{"repo":"chat.git","seq":0}`, `{"repo":"../x","seq":1,"old":"` + strings.Repeat("0", 40) + `"}`, `not json`} {
		if _, _, err := decodeEvent([]byte(bad)); err == nil {
			t.Errorf("decoded %s", bad)
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"repo":"chat.git","seq":1,"time_ms":1,"old":"` + strings.Repeat("0", 40) + `","new":"` + strings.Repeat("a", 40) + `","ref":"refs/heads/main","author":"al","subject":"hi","count":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		repo, e, err := decodeEvent(b)
		if err != nil {
			return
		}
		// What decodes is an event a notification can carry.
		if err := (&wire.Notify{Seq: e.Seq, RepoID: repo, Ref: e.Ref, Old: e.Old, New: e.New}).Validate(); err != nil || e.Seq == 0 {
			t.Fatalf("decoded an invalid event: %v", err)
		}
		if e.Chat != nil && (wire.TrimText(e.Chat.Subject, wire.MaxSubject) != e.Chat.Subject || wire.TrimText(e.Chat.Author, wire.MaxAuthor) != e.Chat.Author) {
			t.Fatal("decoded a message that is not clean")
		}
	})
}

// BenchmarkPublish measures synchronous, deduplicated publishes to one
// embedded JetStream server on loopback (file storage), and a second node
// consuming them: events/s each way.
func BenchmarkPublish(b *testing.B) {
	s := natstest.Start(b, b.TempDir(), 0)
	c, err := Connect(Options{URLs: natstest.URL(s), Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.Setup(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	// Spread over 100 repositories, so that no subject outgrows what the
	// stream retains of one.
	for i := range b.N {
		if err := c.Publish(ctx, fmt.Sprintf("r%d.git", i%100), ev(uint64(i/100+1))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "published/s")
	b.StopTimer()
	// Consume them all from a second connection.
	d, err := Connect(Options{URLs: natstest.URL(s), Name: "reader"})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	if err := d.Setup(ctx); err != nil {
		b.Fatal(err)
	}
	var n sync.WaitGroup
	n.Add(b.N)
	cctx, cancel := context.WithCancel(ctx)
	start = time.Now()
	seen := 0
	go d.ConsumeEvents(cctx, func(string, store.Event) {
		if seen < b.N {
			seen++
			n.Done()
		}
	})
	n.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "consumed/s")
	cancel()
}

// taking runs c.ConsumeEvents until the test ends and keeps the sequence
// numbers it takes.
type taking struct {
	mu  sync.Mutex
	got []uint64
}

func startTaking(t *testing.T, c *Cluster) *taking {
	tk := &taking{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		c.ConsumeEvents(ctx, func(_ string, e store.Event) {
			tk.mu.Lock()
			tk.got = append(tk.got, e.Seq)
			tk.mu.Unlock()
		})
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return tk
}

// want waits until n events were taken, or within passed, and fails the
// test unless they are 1..n, once each, in order.
func (tk *taking) want(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		tk.mu.Lock()
		g := slices.Clone(tk.got)
		tk.mu.Unlock()
		if len(g) >= n || time.Now().After(deadline) {
			want := make([]uint64, n)
			for i := range want {
				want[i] = uint64(i + 1)
			}
			if !slices.Equal(g, want) {
				t.Fatalf("took %v, want 1..%d once each in order", g, n)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A node goes on consuming events when the NATS server it is connected to
// dies: its connection moves to another server of the cluster, and every
// event published after the death reaches it, once, in order.
func TestConsumeSurvivesItsServersDeath(t *testing.T) {
	servers := natstest.StartCluster(t, t.TempDir(), 3)
	urls := natstest.URLs(servers)
	a := connect(t, urls, "a")
	b := connect(t, urls, "b")
	tk := startTaking(t, b)
	ctx := context.Background()
	publish := func(from, to uint64) {
		t.Helper()
		for seq := from; seq <= to; seq++ {
			deadline := time.Now().Add(30 * time.Second)
			for {
				err := a.Publish(ctx, "chat.git", ev(seq))
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("publish %d: %v", seq, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	publish(1, 5)
	tk.want(t, 5, 30*time.Second)
	name := b.nc.ConnectedServerName()
	for _, s := range servers {
		if s.Name() == name {
			s.Shutdown()
		}
	}
	publish(6, 10)
	tk.want(t, 10, 60*time.Second)
}

// silencedPair starts a server and two nodes, a and b, with b's
// supervision shortened and its first consumer or watcher falling silent
// after stream sequence number after; generations says how many b started.
func silencedPair(t *testing.T, after uint64) (a, b *Cluster, generations func() int) {
	s := natstest.Start(t, t.TempDir(), 0)
	a = connect(t, natstest.URL(s), "a")
	b = connect(t, natstest.URL(s), "b")
	b.watch.every, b.watch.stall = 50*time.Millisecond, 300*time.Millisecond
	var mu sync.Mutex
	var gens []int
	b.watch.drop = func(generation int, seq uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(gens, generation) {
			gens = append(gens, generation)
		}
		return generation == 0 && seq > after
	}
	return a, b, func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(gens)
	}
}

// A consumer that goes silent while the stream moves on is replaced by one
// that starts where it stopped: every event is taken once, in order.
func TestSilentConsumerIsReplaced(t *testing.T) {
	a, b, generations := silencedPair(t, 3)
	tk := startTaking(t, b)
	for seq := uint64(1); seq <= 10; seq++ {
		if err := a.Publish(context.Background(), "chat.git", ev(seq)); err != nil {
			t.Fatal(err)
		}
	}
	tk.want(t, 10, 20*time.Second)
	if n := generations(); n < 2 {
		t.Fatalf("consumers seen %d, want a replacement", n)
	}
}

// An authorisations watcher that goes silent is replaced, and the new one
// brings what the silent one missed, a revocation included.
func TestSilentAuthWatcherIsReplaced(t *testing.T) {
	a, b, generations := silencedPair(t, 2)
	var mu sync.Mutex
	held := map[wire.Key]bool{} // b's view: who is authorised
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		b.WatchAuth(ctx, func(ch AuthChange) {
			mu.Lock()
			held[ch.Key] = !ch.Deleted
			mu.Unlock()
		})
		close(done)
	}()
	defer func() { cancel(); <-done }()
	exp := time.Now().Add(time.Hour)
	want := map[wire.Key]bool{}
	for i := range 5 {
		k := wire.Key{byte(i + 1)}
		if err := a.PutAuth(ctx, "chat.git", k, exp); err != nil {
			t.Fatal(err)
		}
		want[k] = true
	}
	revoked := wire.Key{1} // taken by the first watcher, then revoked
	if err := a.DeleteAuth(ctx, []string{"chat.git"}, revoked); err != nil {
		t.Fatal(err)
	}
	want[revoked] = false
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		got := maps.Clone(held)
		mu.Unlock()
		n := generations()
		if maps.Equal(got, want) && n >= 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node b holds %v after %d watchers, want %v", got, n, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
