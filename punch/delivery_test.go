package punch_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// recorder collects the events a daemon's actions saw.
type recorder struct {
	mu      sync.Mutex
	seqs    []uint64
	byRepo  map[string][]uint64
	resyncs []punch.Event
	events  []punch.Event // every event but resyncs, whole
}

func (r *recorder) handle(_ context.Context, ev punch.Event) {
	r.mu.Lock()
	if ev.Resync {
		r.resyncs = append(r.resyncs, ev)
	} else {
		r.seqs = append(r.seqs, ev.Seq)
		r.events = append(r.events, ev)
		if r.byRepo == nil {
			r.byRepo = make(map[string][]uint64)
		}
		r.byRepo[ev.Repo] = append(r.byRepo[ev.Repo], ev.Seq)
	}
	r.mu.Unlock()
}

// of is what the daemon handled of one repository.
func (r *recorder) of(repo string) []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint64(nil), r.byRepo[repo]...)
}

func (r *recorder) snapshot() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint64(nil), r.seqs...)
}

type lab struct {
	lifetimes []struct {
		addr string
		d    time.Duration
	}
	net   *netsim.MemNet
	store *store.Store
	srv   *rendezvous.Server
	addr  string
	// fixedKeepalive, when set, is given to the daemons started after.
	fixedKeepalive time.Duration
	// newKeyRate, when set, is the rendezvous's budget for new keys.
	newKeyRate float64
	logger     *slog.Logger // the rendezvous's; nil: none
	stopServer func()       // stops the rendezvous and waits for it
}

func newLab(t *testing.T, loss int, open bool) *lab {
	mn := netsim.NewMemNet(42)
	mn.LossPercent = loss
	conn, err := mn.Listen("198.18.0.1:3478")
	if err != nil {
		t.Fatal(err)
	}
	return labOn(t, mn, conn, open, nil)
}

// labOn runs a rendezvous with a fresh store on conn (its first address is
// the lab's), logging to log.
func labOn(t *testing.T, mn *netsim.MemNet, conn *netsim.MemConn, open bool, log *slog.Logger) *lab {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{net: mn, store: st, addr: conn.LocalAddrPort().String(), logger: log}
	l.startServer(t, conn, open)
	return l
}

// startServer runs a rendezvous on conn with the lab's store.
func (l *lab) startServer(t *testing.T, conn *netsim.MemConn, open bool) {
	l.srv, l.stopServer = runServer(t, conn, rendezvous.Config{Store: l.store, Open: open, NewKeyRate: l.newKeyRate, Logger: l.logger})
}

// runServer runs a rendezvous configured by cfg on conn until stop (or the
// test's end).
func runServer(t testing.TB, conn *netsim.MemConn, cfg rendezvous.Config) (srv *rendezvous.Server, stop func()) {
	t.Helper()
	cfg.Conn = conn
	srv, err := rendezvous.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); conn.Close(); <-done }) }
	t.Cleanup(stop)
	return srv, stop
}

// restartServer stops the rendezvous and starts a new one on the same
// address and store, as a crash and a restart would.
func (l *lab) restartServer(t *testing.T, open bool) {
	l.stopServer()
	conn, err := l.net.Listen(l.addr)
	if err != nil {
		t.Fatal(err)
	}
	l.startServer(t, conn, open)
}

func (l *lab) daemon(t *testing.T, addr string, rec *recorder) *punch.Daemon {
	d, _ := l.daemonIn(t, addr, filepath.Join(t.TempDir(), "state"), rec)
	return d
}

// natDaemon is a daemon behind a NAT whose mappings expire after lifetime.
func (l *lab) natDaemon(t *testing.T, addr string, lifetime time.Duration, rec *recorder) *punch.Daemon {
	l.lifetimes = append(l.lifetimes, struct {
		addr string
		d    time.Duration
	}{addr, lifetime})
	return l.daemon(t, addr, rec)
}

// daemonIn starts a daemon with a given state directory; stop ends it.
func (l *lab) daemonIn(t *testing.T, addr, stateDir string, rec *recorder) (d *punch.Daemon, stop func()) {
	conn, err := l.net.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, lt := range l.lifetimes {
		if lt.addr == addr {
			conn.SetMappingLifetime(lt.d)
		}
	}
	return runDaemon(t, conn, punch.Config{
		Servers:        []punch.Server{{Addr: mustAddr(l.addr), Key: l.srv.PublicKey(), Repos: []string{"chat.git"}}},
		StateDir:       stateDir,
		Handle:         rec.handle,
		FixedKeepalive: l.fixedKeepalive,
	})
}

// runDaemon runs a daemon configured by cfg on conn until stop (or the
// test's end).
func runDaemon(t *testing.T, conn *netsim.MemConn, cfg punch.Config) (d *punch.Daemon, stop func()) {
	t.Helper()
	cfg.Conn = conn
	d, err := punch.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); conn.Close(); <-done }) }
	t.Cleanup(stop)
	return d, stop
}

func (l *lab) push(t *testing.T, n int) {
	for i := range n {
		if _, err := l.store.Append("chat.git", []store.Update{{Old: fmt.Sprintf("%040x", i), New: fmt.Sprintf("%040x", i+1), Ref: "refs/heads/main"}}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := l.srv.Poke("chat.git"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitKnown waits (fake time) until the daemon knows its position in the
// lab's repository: it has subscribed, and a push now is its to take.
func (l *lab) waitKnown(t *testing.T, d *punch.Daemon) {
	t.Helper()
	if !waitFor(30*time.Second, func() bool { _, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); return known }) {
		t.Fatal("the daemon never learnt its position")
	}
}

// pushArrivesAtOnce pushes one event, the recorder's first, and fails
// unless it is handled within a second (fake time).
func (l *lab) pushArrivesAtOnce(t *testing.T, rec *recorder, when string) {
	t.Helper()
	start := time.Now()
	l.push(t, 1)
	waitFor(time.Minute, func() bool { return len(rec.snapshot()) == 1 })
	if took := time.Since(start); took > time.Second {
		t.Fatalf("push %s took %v", when, took)
	}
}

// waitFor advances fake time until cond holds, at most limit.
func waitFor(limit time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func wantExactlyInOrder(t testing.TB, name string, got []uint64, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("%s handled %d events, want exactly %d: %v", name, len(got), n, got)
	}
	for i, s := range got {
		if s != uint64(i+1) {
			t.Fatalf("%s: event %d has seq %d: not exactly once in order: %v", name, i, s, got)
		}
	}
}

// With 25% of datagrams lost in both directions, two daemons still handle
// 100 pushes exactly once each, in order. Runs on fake time.
func TestDeliveryUnder25PercentLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 25, true)
		var a, b recorder
		l.daemon(t, "198.19.1.2:40000", &a)
		l.daemon(t, "198.19.2.2:40000", &b)
		// Registration survives lost keepalives and pongs (retries 1 s, 2 s, 4 s ...).
		if !waitFor(2*time.Minute, func() bool { return len(l.srv.Clients()) == 2 }) {
			t.Fatalf("daemons did not register under loss: %d clients", len(l.srv.Clients()))
		}
		time.Sleep(30 * time.Second) // let both learn their start position
		l.push(t, 100)
		waitFor(5*time.Minute, func() bool { return len(a.snapshot()) >= 100 && len(b.snapshot()) >= 100 })
		synctest.Wait()
		wantExactlyInOrder(t, "daemon a", a.snapshot(), 100)
		wantExactlyInOrder(t, "daemon b", b.snapshot(), 100)
		if st := l.srv.Stats(); st.Retransmits == 0 || l.net.Dropped == 0 {
			t.Fatalf("loss was not exercised: %d retransmits, %d dropped", st.Retransmits, l.net.Dropped)
		}
	})
}

// A new follower starts at the head: it does not replay history.
func TestNewFollowerStartsAtHead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		l.push(t, 5)
		var a recorder
		d := l.daemon(t, "198.19.1.2:40000", &a)
		waitFor(10*time.Second, func() bool { _, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); return known })
		if seq, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); !known || seq != 5 {
			t.Fatalf("new follower at %d (known %v), want 5", seq, known)
		}
		l.push(t, 2)
		waitFor(10*time.Second, func() bool { return len(a.snapshot()) >= 2 })
		synctest.Wait()
		if got := a.snapshot(); len(got) != 2 || got[0] != 6 || got[1] != 7 {
			t.Fatalf("got %v, want [6 7]", got)
		}
	})
}

// Without --open, a key that is not registered gets nothing, and its daemon
// keeps retrying slowly; once registered, it is served.
func TestUnregisteredKeyGetsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, false)
		var a recorder
		d := l.daemon(t, "198.19.1.2:40000", &a)
		time.Sleep(5 * time.Second)
		l.push(t, 3)
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := a.snapshot(); len(got) != 0 {
			t.Fatalf("unregistered daemon handled %v", got)
		}
		if st := l.srv.Stats(); st.Denied == 0 || st.Notifies != 0 {
			t.Fatalf("denied %d, notifies %d", st.Denied, st.Notifies)
		}
		if err := l.store.Authorise("chat.git", d.PublicKey(), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		// It retries every DeniedRetry; after that it is served from the head.
		waitFor(2*punch.DeniedRetry, func() bool { _, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); return known })
		l.push(t, 1)
		waitFor(10*time.Second, func() bool { return len(a.snapshot()) == 1 })
		synctest.Wait()
		if got := a.snapshot(); len(got) != 1 || got[0] != 4 {
			t.Fatalf("after registration got %v, want [4]", got)
		}
	})
}

func mustAddr(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

var discard = slog.New(slog.DiscardHandler)

func mustKey(t *testing.T, s string) wire.Key {
	k, err := wire.ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func readRendezvous(storeDir string) (key, addr string, ok bool) {
	k, err1 := os.ReadFile(filepath.Join(storeDir, "server.pub"))
	a, err2 := os.ReadFile(filepath.Join(storeDir, "rendezvous.addr"))
	if err1 != nil || err2 != nil {
		return "", "", false
	}
	return strings.TrimSpace(string(k)), strings.TrimSpace(string(a)), true
}

// A client that fell behind retention gets one explicit resync notice, never
// silence. What the log still holds after the gap, when it fits in one
// window, then comes as notifications; then it goes on from the head.
func TestFallingBehindRetentionGivesResync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		l.store.Retain = 5
		var a recorder
		state := filepath.Join(t.TempDir(), "state")
		_, stop := l.daemonIn(t, "198.19.1.2:40000", state, &a)
		time.Sleep(5 * time.Second)
		l.push(t, 2)
		waitFor(10*time.Second, func() bool { return len(a.snapshot()) == 2 })
		stop()
		l.push(t, 20) // compaction keeps between 5 and 9 of them: 3.. are gone
		evs, _ := l.store.ReadLog("chat.git", 0)
		if len(evs) == 0 || evs[0].Seq <= 3 {
			t.Fatalf("log was not compacted: first kept %d", evs[0].Seq)
		}
		first := evs[0].Seq
		l.daemonIn(t, "198.19.1.2:40001", state, &a)
		waitFor(20*time.Second, func() bool { a.mu.Lock(); defer a.mu.Unlock(); return len(a.resyncs) > 0 })
		l.push(t, 1)
		want := []uint64{1, 2}
		for seq := first; seq <= 23; seq++ {
			want = append(want, seq)
		}
		waitFor(10*time.Second, func() bool { return len(a.snapshot()) == len(want) })
		synctest.Wait()
		a.mu.Lock()
		defer a.mu.Unlock()
		if len(a.resyncs) != 1 || a.resyncs[0].Seq != first-1 {
			t.Fatalf("resync notices %+v, want exactly one at %d, before the first kept event", a.resyncs, first-1)
		}
		if !slices.Equal(a.seqs, want) {
			t.Fatalf("events %v, want %v", a.seqs, want)
		}
	})
}

// Behind a NAT that forgets idle mappings after 15 s, the daemon finds that
// out by itself and keeps its keepalive just under it; after 45 s idle, a
// push still arrives at once. Behind one that never forgets, it climbs to
// the 120 s cap. Fake time.
func TestKeepaliveAdaptsToMappingLifetime(t *testing.T) {
	for _, tc := range []struct {
		lifetime time.Duration
		min, max time.Duration
	}{
		{15 * time.Second, 10 * time.Second, 15 * time.Second},
		{0, 100 * time.Second, punch.MaxKeepalive},
	} {
		t.Run(fmt.Sprint(tc.lifetime), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newLab(t, 0, true)
				var a recorder
				d := l.natDaemon(t, "198.19.1.2:40000", tc.lifetime, &a)
				key := l.srv.PublicKey()
				waitFor(30*time.Minute, func() bool {
					iv := d.Interval(key)
					return iv > 0 && iv != punch.DefaultKeepalive && l.srv.Stats().Probes > 3
				})
				time.Sleep(10 * time.Minute) // let the search finish
				iv := d.Interval(key)
				t.Logf("mapping lifetime %v: keepalive chosen %v after %d probes", tc.lifetime, iv, l.srv.Stats().Probes)
				if iv < tc.min || iv > tc.max {
					t.Fatalf("keepalive %v, want within [%v, %v]", iv, tc.min, tc.max)
				}
				time.Sleep(45 * time.Second) // idle
				l.pushArrivesAtOnce(t, &a, "after 45 s idle")
				synctest.Wait()
			})
		})
	}
}

// From its first keepalive on, the daemon reports the interval it keeps
// alive with (status's KEEPALIVE), not 0 while its first lifetime probe
// takes its whole idle time. Fake time.
func TestKeepaliveIntervalIsReportedDuringTheFirstProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		var a recorder
		d := l.natDaemon(t, "198.19.1.2:40000", 15*time.Second, &a)
		key := l.srv.PublicKey()
		if !waitFor(5*time.Second, func() bool { return d.Interval(key) > 0 }) {
			t.Fatal("no keepalive interval reported 5 s after start")
		}
		// The first probe stays silent for DefaultKeepalive: it cannot have
		// concluded, and the interval is the search's starting one.
		if iv := d.Interval(key); iv != punch.DefaultKeepalive {
			t.Fatalf("interval %v during the first probe, want %v", iv, punch.DefaultKeepalive)
		}
		synctest.Wait()
	})
}

// Between pongs the daemon's keepalives are quiet: it asks for a pong at
// least every PongRefresh, and the rendezvous answers the rest only with
// news. A push still arrives at once. Fake time.
func TestKeepalivesAreMostlyQuiet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		l.fixedKeepalive = punch.DefaultKeepalive
		var a recorder
		d := l.daemon(t, "198.19.1.2:40000", &a)
		time.Sleep(20 * time.Minute)
		synctest.Wait() // what is in flight lands
		st, srv := d.Stats(), l.srv.Stats()
		t.Logf("20 min at %v: %d keepalives sent, %d pongs, %d quiet at the rendezvous", punch.DefaultKeepalive, st.KeepalivesSent, st.Pongs, srv.Quiet)
		// 48 keepalives; one asks every 2 minutes (the first, then about
		// every fifth): about 10 pongs.
		if st.KeepalivesSent < 45 || st.Pongs+srv.Quiet != st.KeepalivesSent || st.Pongs > 12 || st.Pongs < 9 {
			t.Fatalf("keepalives %d, pongs %d, quiet %d: want each answered or quiet, a pong about every %v",
				st.KeepalivesSent, st.Pongs, srv.Quiet, wire.PongRefresh)
		}
		l.pushArrivesAtOnce(t, &a, "with quiet keepalives")
		synctest.Wait()
	})
}

// The event log is cut back, then its end is damaged, then the rendezvous
// crashes and restarts: through all of it the daemon handles every pushed
// event exactly once, in order, and no sequence number is ever given out
// twice (issue 14's crash-and-corrupt test; the full disk is still open).
func TestEventLogCutDamagedAndRestartedLosesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		var rec recorder
		l.daemon(t, "198.19.1.2:40000", &rec)
		if !waitFor(time.Minute, func() bool { return len(l.srv.Clients()) == 1 }) {
			t.Fatal("the daemon did not register")
		}
		time.Sleep(5 * time.Second) // it learns its start position
		next := 0
		push := func(wantErr error) {
			t.Helper()
			evs, err := l.store.Append("chat.git", []store.Update{{Old: fmt.Sprintf("%040x", next), New: fmt.Sprintf("%040x", next+1), Ref: "refs/heads/main"}}, time.Now())
			next++
			if !errors.Is(err, wantErr) || len(evs) != 1 || evs[0].Seq != uint64(next) {
				t.Fatalf("push %d: %+v %v, want seq %d (error %v)", next, evs, err, next, wantErr)
			}
			l.srv.Poke("chat.git")
			if !waitFor(time.Minute, func() bool { return len(rec.snapshot()) >= next }) {
				t.Fatalf("event %d never handled: %v", next, rec.snapshot())
			}
		}
		for range 10 {
			push(nil)
		}
		b, _ := os.ReadFile(l.store.LogPath("chat.git"))
		lines := strings.SplitAfter(string(b), "\n")
		os.WriteFile(l.store.LogPath("chat.git"), []byte(strings.Join(lines[:7], "")), 0o640)
		push(store.ErrLogRewound) // 11, never 8 again
		f, _ := os.OpenFile(l.store.LogPath("chat.git"), os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("12 zz damaged\n")
		f.Close()
		push(store.ErrLogDamaged) // 12
		l.restartServer(t, true)
		push(nil) // 13, from the restarted rendezvous
		synctest.Wait()
		wantExactlyInOrder(t, "the daemon", rec.snapshot(), 13)
	})
}

// The daemon's first answer to the rendezvous's Challenge is lost: the
// keepalive it sends a second later brings a new Challenge, and a push is
// handled within seconds, not at its next keepalive 25 s later.
func TestLostChallengeAnswerIsRecoveredAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		_, serverPriv, err := l.store.ServerKeys()
		if err != nil {
			t.Fatal(err)
		}
		dropped := 0
		l.net.Drop = func(_, to netip.AddrPort, b []byte) bool {
			if to.String() != l.addr || dropped > 0 {
				return false
			}
			sender, _, _, err := wire.ParseHeader(b)
			if err != nil {
				return false
			}
			shared := wire.SharedKey(sender, serverPriv)
			if _, m, err := wire.Open(b, &shared); err == nil {
				if _, ok := m.(*wire.ChallengeReply); ok {
					dropped++
					return true
				}
			}
			return false
		}
		validatedSoon(t, l, &dropped)
	})
}

// The rendezvous's first Challenge is lost on its way to the daemon, which
// got the pong and so knows its position: it sends a keepalive each second
// until it is validated, and a push is handled within seconds, not at its
// next keepalive 25 s later.
func TestLostChallengeIsRecoveredAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		challengeLen := wire.Overhead + 1 + wire.CookieLen // nothing else the rendezvous sends has this size
		dropped := 0
		l.net.Drop = func(from, _ netip.AddrPort, b []byte) bool {
			if from.String() != l.addr || len(b) != challengeLen || dropped > 0 {
				return false
			}
			dropped++
			return true
		}
		validatedSoon(t, l, &dropped)
	})
}

// validatedSoon starts a daemon whose first validation datagram the lab's
// Drop loses (counted in dropped), and checks that its address is
// validated within a few seconds all the same and a push reaches it.
func validatedSoon(t *testing.T, l *lab, dropped *int) {
	t.Helper()
	var rec recorder
	l.daemon(t, "198.19.1.2:40000", &rec)
	if !waitFor(time.Minute, func() bool { return len(l.srv.Clients()) == 1 }) {
		t.Fatal("the daemon did not register")
	}
	start := time.Now()
	if !waitFor(time.Minute, func() bool { return l.srv.Stats().Validated == 1 }) {
		t.Fatal("the daemon's address was never validated")
	}
	if *dropped != 1 {
		t.Fatalf("dropped %d datagrams, want the first", *dropped)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("validated %v after the loss, want within a few seconds", took)
	}
	l.push(t, 1)
	if !waitFor(10*time.Second, func() bool { return len(rec.snapshot()) == 1 }) {
		t.Fatal("the push was not handled")
	}
}

// On a path whose round trip (5 s) is longer than the first retries (1 s,
// 2 s, 4 s), each pong comes after the next keepalive went out: it still
// counts, so the daemon learns its position from the first pong (at 5 s)
// instead of waiting until a retry gap outgrows the round trip (12 s), or,
// on a slower path, never. Pushes arrive. Fake time.
func TestSlowPathPongsStillCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		l.net.Delay = func(from, to netip.AddrPort, _ []byte) time.Duration { return 2500 * time.Millisecond }
		var a recorder
		d := l.daemon(t, "198.19.1.2:40000", &a)
		start := time.Now()
		if !waitFor(time.Minute, func() bool { _, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); return known }) {
			t.Fatalf("no position after a minute on a 5 s round trip: stats %+v", d.Stats())
		}
		if took := time.Since(start); took > 6*time.Second {
			t.Fatalf("the position took %v on a 5 s round trip: the first pong did not count", took)
		}
		l.push(t, 3)
		waitFor(time.Minute, func() bool { return len(a.snapshot()) == 3 })
		synctest.Wait()
		wantExactlyInOrder(t, "the daemon", a.snapshot(), 3)
	})
}
