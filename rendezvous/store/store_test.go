package store

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

var zero40 = strings.Repeat("0", 40)

func oid(i int) string { return fmt.Sprintf("%040x", i) }

func TestServerKeysCreatedOnceWithModes(t *testing.T) {
	s, _ := Open(t.TempDir())
	pub, priv, err := s.ServerKeys()
	if err != nil {
		t.Fatal(err)
	}
	if wire.PublicKey(priv) != pub {
		t.Fatal("public key does not match private key")
	}
	fi, _ := os.Stat(filepath.Join(s.Dir, "server.key"))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("server.key mode %v, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(filepath.Join(s.Dir, "server.pub"))
	if string(b) != pub.String()+"\n" || len(b) != 65 {
		t.Fatalf("server.pub = %q", b)
	}
	pub2, _, _ := s.ServerKeys()
	if pub2 != pub {
		t.Fatal("second start made a new key")
	}
}

func TestClientRecordSeedFormat(t *testing.T) {
	s, _ := Open(t.TempDir())
	id, _, _ := wire.GenerateKey()
	r := ClientRecord{ID: id, Heartbeat: time.Unix(1700000000, 0), Addr: netip.MustParseAddrPort("198.18.0.9:40000")}
	if err := s.WriteClient(r); err != nil {
		t.Fatal(err)
	}
	h := id.String()
	b, err := os.ReadFile(filepath.Join(s.Dir, "clients", h[:2], h[2:]))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "1700000000\x00198.18.0.9\x0040000" {
		t.Fatalf("record = %q", b)
	}
	got, err := s.ReadClient(id)
	if err != nil || got != r {
		t.Fatalf("read back %+v, %v", got, err)
	}
	recs, bad, err := s.Clients()
	if err != nil || len(recs) != 1 || len(bad) != 0 {
		t.Fatalf("Clients: %v %v %v", recs, bad, err)
	}
}

func TestDecodeRecordRejects(t *testing.T) {
	for _, b := range []string{"", "1\x002\x00", "x\x00198.18.0.1\x001", "1\x00nope\x001", "1\x00198.18.0.1\x000", "1\x00198.18.0.1\x0070000", "1\x00198.18.0.1\x001\x00", "-1\x00198.18.0.1\x001", "1\x00198.18.0.1\x001\n"} {
		if _, _, err := DecodeRecord([]byte(b)); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%q: got %v", b, err)
		}
	}
}

func TestAuthorisation(t *testing.T) {
	s, _ := Open(t.TempDir())
	id, _, _ := wire.GenerateKey()
	now := time.Unix(1000, 0)
	if s.Authorised("chat.git", id, now) {
		t.Fatal("authorised before registration")
	}
	if err := s.Authorise("team/chat.git", id, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !s.Authorised("team/chat.git", id, now) || s.Authorised("team/chat.git", id, now.Add(2*time.Hour)) || s.Authorised("chat.git", id, now) {
		t.Fatal("authorisation scope or expiry wrong")
	}
}

func TestAppendAssignsSequence(t *testing.T) {
	s, _ := Open(t.TempDir())
	now := time.UnixMilli(1700000000000)
	evs, err := s.Append("chat.git", []Update{{zero40, oid(1), "refs/heads/main"}, {oid(1), oid(2), "refs/heads/dev"}}, now)
	if err != nil || len(evs) != 2 || evs[0].Seq != 1 || evs[1].Seq != 2 {
		t.Fatalf("%v %v", evs, err)
	}
	evs, _ = s.Append("chat.git", []Update{{oid(2), oid(3), "refs/heads/main"}}, now)
	if evs[0].Seq != 3 {
		t.Fatalf("third event got seq %d", evs[0].Seq)
	}
	b, _ := os.ReadFile(s.LogPath("chat.git"))
	want := fmt.Sprintf("1 1700000000000 %s %s refs/heads/main\n", zero40, oid(1))
	if !strings.HasPrefix(string(b), want) {
		t.Fatalf("log starts %q, want %q", b, want)
	}
	all, _ := s.ReadLog("chat.git", 1)
	if len(all) != 2 || all[0].Seq != 2 {
		t.Fatalf("ReadLog after 1: %v", all)
	}
	if h, _ := s.Head("chat.git"); h != 3 {
		t.Fatalf("head %d", h)
	}
	if _, err := s.Append("chat.git", []Update{{oid(1), oid(2), "HEAD"}}, now); err == nil {
		t.Fatal("accepted a ref outside refs/")
	}
}

func TestConcurrentAppendersNeverShareASequence(t *testing.T) {
	s, _ := Open(t.TempDir())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 25 {
				if _, err := s.Append("r", []Update{{oid(w), oid(i + 1), "refs/heads/main"}}, time.Now()); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	evs, err := s.ReadLog("r", 0)
	if err != nil || len(evs) != 100 {
		t.Fatalf("%d events, %v", len(evs), err)
	}
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
}

func TestTornTailIsIgnoredThenTruncated(t *testing.T) {
	s, _ := Open(t.TempDir())
	s.Append("r", []Update{{zero40, oid(1), "refs/heads/main"}}, time.Now())
	f, _ := os.OpenFile(s.LogPath("r"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("2 17000 " + zero40[:10]) // killed mid-write
	f.Close()
	if evs, err := s.ReadLog("r", 0); err != nil || len(evs) != 1 {
		t.Fatalf("torn tail: %v %v", evs, err)
	}
	evs, err := s.Append("r", []Update{{oid(1), oid(2), "refs/heads/main"}}, time.Now())
	if err != nil || evs[0].Seq != 2 {
		t.Fatalf("append after torn tail: %v %v", evs, err)
	}
	all, err := s.ReadLog("r", 0)
	if err != nil || len(all) != 2 {
		t.Fatalf("%v %v", all, err)
	}
}

func TestCompactionKeepsRetainedTail(t *testing.T) {
	s, _ := Open(t.TempDir())
	s.Retain = 5
	for i := range 23 {
		if _, err := s.Append("r", []Update{{zero40, oid(i + 1), "refs/heads/main"}}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	evs, _ := s.ReadLog("r", 0)
	if len(evs) < 5 || len(evs) >= 10 || evs[len(evs)-1].Seq != 23 {
		t.Fatalf("after compaction: %d events, last %d", len(evs), evs[len(evs)-1].Seq)
	}
	if h, _ := s.Head("r"); h != 23 {
		t.Fatalf("head %d", h)
	}
}

// The child half of TestCrashSafety: write records and append events until killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv("GCN_STORE_CRASH_CHILD"); dir != "" {
		crashChild(dir)
		return
	}
	os.Exit(m.Run())
}

func crashChild(dir string) {
	s, _ := Open(dir)
	id := wire.Key{1}
	for i := 1; ; i++ {
		port := uint16(1000 + i%60000)
		// A long IP makes a torn write more likely to be visible.
		s.WriteClient(ClientRecord{ID: id, Heartbeat: time.Unix(int64(i), 0), Addr: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1234:5678"), port)})
		s.Append("r", []Update{{zero40, oid(i), "refs/heads/" + strings.Repeat("x", i%200+1)}}, time.Now())
	}
}

// A writer killed with SIGKILL at arbitrary moments never leaves a torn
// record or an unreadable log.
func TestCrashSafety(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	var lastHead uint64
	for round := range 12 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "GCN_STORE_CRASH_CHILD="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(30+round*7) * time.Millisecond) // let it get mid-write; not a timing assertion
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		r, err := s.ReadClient(wire.Key{1})
		if err != nil && !errors.Is(err, ErrNoClient) {
			t.Fatalf("round %d: torn client record: %v", round, err)
		}
		_ = r
		evs, err := s.ReadLog("r", 0)
		if err != nil {
			t.Fatalf("round %d: log unreadable: %v", round, err)
		}
		if len(evs) > 0 && evs[len(evs)-1].Seq < lastHead {
			t.Fatalf("round %d: head went back from %d to %d", round, lastHead, evs[len(evs)-1].Seq)
		}
		if len(evs) > 0 {
			lastHead = evs[len(evs)-1].Seq
		}
	}
	// After all that, an append still continues the sequence.
	evs, err := s.Append("r", []Update{{zero40, oid(1), "refs/heads/main"}}, time.Now())
	if err != nil || evs[0].Seq != lastHead+1 {
		t.Fatalf("append after crashes: %v %v (head was %d)", evs, err, lastHead)
	}
	if lastHead == 0 {
		t.Fatal("the child never appended: the test exercised nothing")
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte("1700000000\x00198.18.0.9\x0040000"))
	f.Add([]byte("1\x00::1\x001"))
	f.Fuzz(func(t *testing.T, b []byte) {
		hb, addr, err := DecodeRecord(b)
		if err != nil {
			return
		}
		hb2, addr2, err := DecodeRecord(EncodeRecord(hb, addr))
		if err != nil || !hb2.Equal(hb) || addr2 != netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()) {
			t.Fatalf("record round trip: %v %v %v", err, hb2, addr2)
		}
	})
}

func FuzzParseEventLine(f *testing.F) {
	f.Add([]byte("1 1700000000000 " + zero40 + " " + oid(1) + " refs/heads/main"))
	f.Add([]byte("2 -5 " + strings.Repeat("a", 64) + " " + strings.Repeat("b", 64) + " refs/tags/v1"))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := parseEventLine(line)
		if err != nil {
			return
		}
		back := appendEventLine(nil, e)
		if e2, err := parseEventLine(back[:len(back)-1]); err != nil || e2 != e {
			t.Fatalf("event line round trip: %v %+v %+v", err, e, e2)
		}
	})
}

// FuzzReadEvents feeds whole damaged logs to the reader the rendezvous uses:
// it never panics, never claims more bytes than it was given, returns only
// events with increasing numbers, each from a line of the input, and reports
// damage only as a *DamageError.
func FuzzReadEvents(f *testing.F) {
	good := string(appendEventLine(appendEventLine(nil, Event{Seq: 1, TimeMilli: 5, Old: zero40, New: oid(1), Ref: "refs/heads/main"}),
		Event{Seq: 2, TimeMilli: 6, Old: oid(1), New: oid(2), Ref: "refs/heads/main"}))
	f.Add([]byte(good))
	f.Add([]byte(good + "3 7 " + zero40[:10]))             // torn tail
	f.Add([]byte(strings.Replace(good, " ", "\x00", 1)))   // flipped byte
	f.Add([]byte(good + strings.Repeat("x", 5000)))        // garbage tail
	f.Add([]byte(strings.Repeat("y", 5000) + "\n" + good)) // overlong line
	f.Add([]byte(good + good))                             // numbers going back
	f.Add([]byte(strings.Replace(good, "2 6", "4 6", 1)))  // a gap
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, consumed, err := ReadEvents(bytes.NewReader(b), 0)
		var dmg *DamageError
		if err != nil && !errors.As(err, &dmg) {
			t.Fatalf("a reader over memory failed: %v", err)
		}
		if consumed < 0 || consumed > int64(len(b)) {
			t.Fatalf("consumed %d of %d bytes", consumed, len(b))
		}
		for i, e := range evs {
			if i > 0 && e.Seq <= evs[i-1].Seq {
				t.Fatalf("sequence %d after %d", e.Seq, evs[i-1].Seq)
			}
			if !bytes.Contains(b[:consumed], []byte(" "+e.Old+" "+e.New+" "+e.Ref+"\n")) {
				t.Fatalf("event %+v is not a line of the input", e)
			}
		}
	})
}

// A client record is one short line: a 2 GB (sparse) file under clients/
// is listed as malformed without being read, beside the good records, and
// reading it alone is an error, not 2 GB of memory (issue 14, item 2).
func TestOversizedClientRecordIsRefusedUnread(t *testing.T) {
	s, _ := Open(t.TempDir())
	good := ClientRecord{ID: wire.Key{1}, Heartbeat: time.Unix(1700000000, 0), Addr: netip.MustParseAddrPort("198.18.0.10:4000")}
	if err := s.WriteClient(good); err != nil {
		t.Fatal(err)
	}
	big := wire.Key{2}
	if err := s.WriteClient(ClientRecord{ID: big, Heartbeat: good.Heartbeat, Addr: good.Addr}); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(s.clientPath(big), 2<<30); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	recs, bad, err := s.Clients()
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0] != good || len(bad) != 1 || bad[0] != big.String() {
		t.Fatalf("records %v, malformed %v; want the good one, and the big one malformed", recs, bad)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("listing the records allocated %d bytes", grew)
	}
	if _, err := s.ReadClient(big); err == nil {
		t.Fatal("read a 2 GB record")
	}
}

// pushN appends n updates of refs/heads/main to chat.git: seq 1..n.
func pushN(t *testing.T, s *Store, n int) {
	t.Helper()
	for i := range n {
		if _, err := s.Append("chat.git", []Update{{Old: oid(i), New: oid(i + 1), Ref: "refs/heads/main"}}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
}

// Cut the log back by a few lines, or empty it: the next push never gets a
// number that was given out before. It gets the next one after the highest,
// in a fresh log, with ErrLogRewound naming the old log, kept beside it
// (issue 14, item 4). Before: seq 4 was handed out again, with no error.
func TestTruncatedLogNeverReusesASequenceNumber(t *testing.T) {
	for _, cut := range []struct {
		name string
		keep func([]byte) []byte
	}{
		{"three lines cut", func(b []byte) []byte {
			lines := bytes.SplitAfter(b, []byte{'\n'})
			return bytes.Join(lines[:3], nil)
		}},
		{"emptied", func([]byte) []byte { return nil }},
	} {
		t.Run(cut.name, func(t *testing.T) {
			s, _ := Open(t.TempDir())
			pushN(t, s, 6)
			b, _ := os.ReadFile(s.LogPath("chat.git"))
			if err := os.WriteFile(s.LogPath("chat.git"), cut.keep(b), 0o640); err != nil {
				t.Fatal(err)
			}
			evs, err := s.Append("chat.git", []Update{{Old: oid(6), New: oid(7), Ref: "refs/heads/main"}}, time.Now())
			if !errors.Is(err, ErrLogRewound) {
				t.Fatalf("append after the cut: %v, want ErrLogRewound", err)
			}
			if len(evs) != 1 || evs[0].Seq != 7 {
				t.Fatalf("the push after the cut got %+v, want seq 7", evs)
			}
			got, err := s.ReadLog("chat.git", 0)
			if err != nil || len(got) != 1 || got[0].Seq != 7 {
				t.Fatalf("the fresh log holds %+v (%v), want seq 7 alone", got, err)
			}
			aside, _ := filepath.Glob(s.LogPath("chat.git") + ".rewound-*")
			if len(aside) != 1 {
				t.Fatalf("%d logs set aside, want 1", len(aside))
			}
			if kept, _ := os.ReadFile(aside[0]); !bytes.Equal(kept, cut.keep(b)) {
				t.Fatal("the log set aside is not the damaged one")
			}
			// And on from there, quietly.
			evs, err = s.Append("chat.git", []Update{{Old: oid(7), New: oid(8), Ref: "refs/heads/main"}}, time.Now())
			if err != nil || len(evs) != 1 || evs[0].Seq != 8 {
				t.Fatalf("next push: %+v %v, want seq 8", evs, err)
			}
		})
	}
}

// A log whose end cannot be read (its last complete line damaged, or 1 MiB
// of garbage after it without a line end) no longer stops every later push
// (issue 14, item 5): the push is recorded after the highest number given
// out, ErrLogDamaged says so once, the damaged log is kept beside the new
// one, and the push after that goes through quietly. A damaged first line
// stops nothing.
func TestDamagedLogEndRecoversOnItsOwn(t *testing.T) {
	for _, damage := range []struct {
		name string
		do   func(b []byte) []byte
	}{
		{"last line", func(b []byte) []byte {
			b[bytes.LastIndexByte(b[:len(b)-1], '\n')+1] = 'z' // its sequence number no longer parses
			return b
		}},
		{"garbage tail", func(b []byte) []byte { return append(b, bytes.Repeat([]byte("x"), 1<<20)...) }},
	} {
		t.Run(damage.name, func(t *testing.T) {
			s, _ := Open(t.TempDir())
			pushN(t, s, 5)
			b, _ := os.ReadFile(s.LogPath("chat.git"))
			os.WriteFile(s.LogPath("chat.git"), damage.do(b), 0o640)
			evs, err := s.Append("chat.git", []Update{{Old: oid(5), New: oid(6), Ref: "refs/heads/main"}}, time.Now())
			if !errors.Is(err, ErrLogDamaged) || len(evs) != 1 || evs[0].Seq != 6 {
				t.Fatalf("push after the damage: %+v %v; want seq 6 with ErrLogDamaged", evs, err)
			}
			if aside, _ := filepath.Glob(s.LogPath("chat.git") + ".damaged-*"); len(aside) != 1 {
				t.Fatalf("%d damaged logs kept, want 1", len(aside))
			}
			evs, err = s.Append("chat.git", []Update{{Old: oid(6), New: oid(7), Ref: "refs/heads/main"}}, time.Now())
			if err != nil || evs[0].Seq != 7 {
				t.Fatalf("next push: %+v %v", evs, err)
			}
		})
	}
	t.Run("first line", func(t *testing.T) {
		s, _ := Open(t.TempDir())
		pushN(t, s, 3)
		b, _ := os.ReadFile(s.LogPath("chat.git"))
		b[0] = 'q'
		os.WriteFile(s.LogPath("chat.git"), b, 0o640)
		evs, err := s.Append("chat.git", []Update{{Old: oid(3), New: oid(4), Ref: "refs/heads/main"}}, time.Now())
		if err != nil || evs[0].Seq != 4 {
			t.Fatalf("push after a damaged first line: %+v %v", evs, err)
		}
		got, err := s.ReadLog("chat.git", 0)
		var dmg *DamageError
		if !errors.As(err, &dmg) || dmg.Lines != 1 || len(got) != 3 || got[0].Seq != 2 {
			t.Fatalf("reading: %+v %v; want events 2-4 and one damaged line", got, err)
		}
	})
}

// Events held for want of disk keep their numbers: while they are held,
// Append records nothing (ErrHeld), so no hook writes past them; written
// back, the log goes on after them. When their holder is gone, the numbers
// stay given out and new events follow them (ErrHeldLost), and a late
// write-back is refused rather than written out of order (issue 14, item 6).
func TestHeldEventsKeepTheirNumbers(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pushN(t, s, 2)
	up := []Update{{Old: oid(1), New: oid(2), Ref: "refs/heads/main"}}
	held, err := s.Hold("chat.git", up, time.Now(), 0)
	if err != nil || len(held) != 1 || held[0].Seq != 3 {
		t.Fatalf("Hold: %+v, %v; want seq 3", held, err)
	}
	if evs, err := s.Append("chat.git", up, time.Now()); !errors.Is(err, ErrHeld) || len(evs) != 0 {
		t.Fatalf("Append while held: %+v, %v; want ErrHeld", evs, err)
	}
	more, err := s.Hold("chat.git", up, time.Now(), 3)
	if err != nil || more[0].Seq != 4 {
		t.Fatalf("second Hold: %+v, %v; want seq 4", more, err)
	}
	if err := s.WriteHeld("chat.git", append(held, more...)); err != nil {
		t.Fatal(err)
	}
	if evs, err := s.Append("chat.git", up, time.Now()); err != nil || evs[0].Seq != 5 {
		t.Fatalf("Append after write-back: %+v, %v; want seq 5", evs, err)
	}
	if evs, _ := s.ReadLog("chat.git", 0); len(evs) != 5 || evs[4].Seq != 5 {
		t.Fatalf("log %+v, want 1..5", evs)
	}

	// The holder is gone: 6 stays given out, 7 follows, 6 is never written.
	lost, err := s.Hold("chat.git", up, time.Now(), 5)
	if err != nil || lost[0].Seq != 6 {
		t.Fatalf("Hold: %+v, %v", lost, err)
	}
	evs, err := s.AppendAfterLostHold("chat.git", up, time.Now())
	if !errors.Is(err, ErrHeldLost) || len(evs) != 1 || evs[0].Seq != 7 {
		t.Fatalf("AppendAfterLostHold: %+v, %v; want seq 7 and ErrHeldLost", evs, err)
	}
	if err := s.WriteHeld("chat.git", lost); !errors.Is(err, ErrHeldLost) {
		t.Fatalf("a write-back after the take-over: %v, want ErrHeldLost", err)
	}
	if evs, err := s.Append("chat.git", up, time.Now()); err != nil || evs[0].Seq != 8 {
		t.Fatalf("Append after the take-over: %+v, %v; want seq 8", evs, err)
	}
	var seqs []uint64
	got, _ := s.ReadLog("chat.git", 0)
	for _, e := range got {
		seqs = append(seqs, e.Seq)
	}
	if fmt.Sprint(seqs) != "[1 2 3 4 5 7 8]" {
		t.Fatalf("log %v, want [1 2 3 4 5 7 8]", seqs)
	}
}

// Whatever the sequence mark and the log hold (damaged, oversized, torn,
// rewound), Append never panics, records the update, and gives it a number
// above every number the two show.
func FuzzAppendOverDamagedStore(f *testing.F) {
	f.Add([]byte("00000000000000000005\n"), []byte("1 1 "+oid(0)+" "+oid(1)+" refs/heads/main\n"))
	f.Add([]byte("00000000000000000009H"), []byte("1 1 "+oid(0)+" "+oid(1)+" refs/heads/main\n2 1 x"))
	f.Add([]byte("garbage"), bytes.Repeat([]byte("x"), 5000))
	f.Add([]byte{}, []byte("18446744073709551610 1 "+oid(0)+" "+oid(1)+" refs/heads/main\n"))
	f.Fuzz(func(t *testing.T, mark, log []byte) {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(s.repoDir("chat.git"), 0o750)
		os.WriteFile(s.seqPath("chat.git"), mark, 0o640)
		os.WriteFile(s.LogPath("chat.git"), log, 0o640)
		floor, _ := readSeqBytes(mark)
		evs, _, _ := ReadEvents(bytes.NewReader(log), 0)
		for _, e := range evs {
			floor = max(floor, e.Seq)
		}
		up := []Update{{Old: oid(1), New: oid(2), Ref: "refs/heads/main"}}
		got, err := s.Append("chat.git", up, time.Now())
		if errors.Is(err, ErrHeld) {
			got, err = s.AppendAfterLostHold("chat.git", up, time.Now())
		}
		if len(got) != 1 {
			if floor > math.MaxUint64-2 {
				return // numbers exhausted: refusing is right
			}
			t.Fatalf("update not recorded: %v", err)
		}
		if got[0].Seq <= floor && floor < math.MaxUint64-2 {
			t.Fatalf("seq %d given out again (mark %q, highest in log %d)", got[0].Seq, mark, floor)
		}
	})
}

// Whatever the store's one-line files hold (the rendezvous's address and
// mode, the keys, a registration, a served repository, a client record),
// every reader returns a value or an error, never panics, and never takes
// garbage for a value: an address read back is valid, a key parses back.
func FuzzStoreOneLineFiles(f *testing.F) {
	f.Add([]byte("198.18.0.1:3478\n"))
	f.Add([]byte(strings.Repeat("ab", 32) + "\n"))
	f.Add([]byte("1700000000\n"))
	f.Add([]byte("/srv/git/chat.git\n"))
	f.Add(bytes.Repeat([]byte("9"), 9000))
	f.Add([]byte("\x00\xff\n\n"))
	id := wire.Key{7}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"rendezvous.addr", "rendezvous.mode", "server.key", "server.pub", "server.sign",
			filepath.Join("auth", "chat.git", id.String()), filepath.Join("served", "chat.git"), filepath.Join("clients", id.String())} {
			full := filepath.Join(s.Dir, p)
			os.MkdirAll(filepath.Dir(full), 0o750)
			if err := os.WriteFile(full, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if a, err := s.RendezvousAddr(); err == nil && !a.IsValid() {
			t.Fatalf("an invalid address read as valid from %q", b)
		}
		s.Mode()
		if pub, priv, err := s.ExistingServerKeys(); err == nil && pub != wire.PublicKey(priv) {
			t.Fatal("a server key pair that does not match")
		}
		if k, err := s.ServerPublicKey(); err == nil {
			if again, err := wire.ParseKey(k.String()); err != nil || again != k {
				t.Fatalf("a public key that does not parse back: %v", err)
			}
		}
		s.SigningKey()
		s.AuthExpiry("chat.git", id)
		s.Served()
		if r, err := s.ReadClient(id); err == nil && !r.Addr.IsValid() {
			t.Fatalf("a client record with an invalid address read from %q", b)
		}
		s.Clients()
	})
}

// Owners are recorded per client and found by account; Revoke removes a
// client's every authorisation, its record and its owner line, and says
// which repositories it had.
func TestOwnersAndRevoke(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, _, _ := wire.GenerateKey()
	b, _, _ := wire.GenerateKey()
	now := time.Now()
	for _, c := range []struct {
		id    wire.Key
		owner string
	}{{a, "alice SHA256:abc"}, {b, "bob"}} {
		if err := st.SetOwner(c.id, c.owner); err != nil {
			t.Fatal(err)
		}
		st.Authorise("chat.git", c.id, now.Add(time.Hour))
		st.WriteClient(ClientRecord{ID: c.id, Heartbeat: now, Addr: netip.MustParseAddrPort("198.18.5.1:4000")})
	}
	st.Authorise("team/notes.git", a, now.Add(time.Hour))
	if got := st.Owner(a); got != "alice SHA256:abc" {
		t.Fatalf("owner %q", got)
	}
	if ids, err := st.ClientsOf("alice"); err != nil || len(ids) != 1 || ids[0] != a {
		t.Fatalf("alice's clients %v, %v", ids, err)
	}
	repos, err := st.Revoke(a)
	slices.Sort(repos)
	if err != nil || !slices.Equal(repos, []string{"chat.git", "team/notes.git"}) {
		t.Fatalf("revoked from %v, %v", repos, err)
	}
	if st.Authorised("chat.git", a, now) || st.Authorised("team/notes.git", a, now) || st.Owner(a) != "" {
		t.Fatal("a revoked client keeps something")
	}
	if _, err := st.ReadClient(a); !errors.Is(err, ErrNoClient) {
		t.Fatalf("its record: %v", err)
	}
	if !st.Authorised("chat.git", b, now) || st.Owner(b) != "bob" {
		t.Fatal("another client lost its access")
	}
	for _, bad := range []string{"", "   ", strings.Repeat("x", 201)} {
		if st.SetOwner(b, bad) == nil {
			t.Errorf("owner %q accepted", bad)
		}
	}
}
