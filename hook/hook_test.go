package hook

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

var z = strings.Repeat("0", 40)
var a = strings.Repeat("a", 40)

func TestParseUpdates(t *testing.T) {
	in := z + " " + a + " refs/heads/main\n" +
		"garbage\n" +
		a + " " + z + " HEAD\n" + // not under refs/
		strings.ToUpper(a) + " " + z + " refs/tags/v1\n"
	var errb bytes.Buffer
	ups, err := ParseUpdates(strings.NewReader(in), "chat.git", &errb)
	if err != nil {
		t.Fatal(err)
	}
	if len(ups) != 2 || ups[0].Ref != "refs/heads/main" || ups[1].Old != a {
		t.Fatalf("updates %+v", ups)
	}
	if n := strings.Count(errb.String(), "\n"); n != 2 {
		t.Fatalf("want one line per skipped update, got %q", errb.String())
	}
}

func TestRepoIDFromConfigOrDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "chat.git")
	if out, err := exec.Command("git", "init", "-q", "--bare", dir).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if id, err := RepoID(dir); err != nil || id != "chat.git" {
		t.Fatalf("default id %q %v", id, err)
	}
	exec.Command("git", "--git-dir", dir, "config", "gcnpunch.repoid", "team/chat").Run()
	if id, _ := RepoID(dir); id != "team/chat" {
		t.Fatalf("configured id %q", id)
	}
	work := filepath.Join(t.TempDir(), "project")
	exec.Command("git", "init", "-q", work).Run()
	if id, _ := RepoID(filepath.Join(work, ".git")); id != "project" {
		t.Fatalf("non-bare id %q", id)
	}
}

// Run outside a git repository with no --repo-id, the hook records nothing
// and says why: no repository named after the directory appears in the
// store.
func TestHookOutsideARepositoryRecordsNothing(t *testing.T) {
	st, _ := store.Open(t.TempDir())
	notRepo := filepath.Join(t.TempDir(), "tmp")
	os.Mkdir(notRepo, 0o755)
	var errb bytes.Buffer
	in := strings.Repeat("0", 40) + " " + strings.Repeat("a", 40) + " refs/heads/main\n"
	_, err := Run(Options{StoreDir: st.Dir, GitDir: notRepo, Stdin: strings.NewReader(in), Stderr: &errb})
	if !errors.Is(err, ErrNotRepository) || !strings.Contains(err.Error(), "--repo-id") {
		t.Fatalf("Run outside a repository: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(st.Dir, "repos")); len(entries) != 0 {
		t.Fatalf("the store gained %d repositories", len(entries))
	}
}

// In a new repository the store does not serve (it serves others), the
// hook records nothing and names the ones it serves; with no served list (a
// store set up by hand) every repository is taken, and one that has a log
// already goes on.
func TestHookInAnUnservedRepositoryRecordsNothing(t *testing.T) {
	st, _ := store.Open(t.TempDir())
	in := strings.Repeat("0", 40) + " " + strings.Repeat("a", 40) + " refs/heads/main\n"
	res, err := Run(Options{StoreDir: st.Dir, RepoID: "chat.git", Stdin: strings.NewReader(in), Stderr: io.Discard})
	if err != nil || len(res.Events) != 1 {
		t.Fatalf("no served list: %d events, %v; want the push recorded", len(res.Events), err)
	}
	served := filepath.Join(t.TempDir(), "chat.git")
	os.Mkdir(served, 0o755)
	if err := st.Serve("chat.git", served); err != nil {
		t.Fatal(err)
	}
	_, err = Run(Options{StoreDir: st.Dir, RepoID: "other.git", Stdin: strings.NewReader(in), Stderr: io.Discard})
	if !errors.Is(err, ErrNotServed) || !strings.Contains(err.Error(), "this store serves chat.git") {
		t.Fatalf("Run in an unserved repository: %v", err)
	}
	if _, err := os.Stat(filepath.Join(st.Dir, "repos", "other.git")); !os.IsNotExist(err) {
		t.Fatalf("the store gained other.git: %v", err)
	}
	if res, err := Run(Options{StoreDir: st.Dir, RepoID: "chat.git", Stdin: strings.NewReader(in), Stderr: io.Discard}); err != nil || len(res.Events) != 1 {
		t.Fatalf("the served repository: %d events, %v", len(res.Events), err)
	}
	// A repository hooked by hand before the list existed keeps its log
	// going: only a new one is refused.
	if err := st.Unserve("chat.git"); err != nil {
		t.Fatal(err)
	}
	if err := st.Serve("notes.git", served); err != nil {
		t.Fatal(err)
	}
	if res, err := Run(Options{StoreDir: st.Dir, RepoID: "chat.git", Stdin: strings.NewReader(in), Stderr: io.Discard}); err != nil || len(res.Events) != 1 || res.Events[0].Seq != 3 {
		t.Fatalf("a repository with a log, outside the list: %+v, %v; want seq 3 recorded", res.Events, err)
	}
}

// With no rendezvous, the hook still logs the event, says so in one line,
// and sends directly from the rendezvous's address to recent clients.
func TestRendezvousDownSendsDirectly(t *testing.T) {
	st, _ := store.Open(t.TempDir())
	pub, _, err := st.ServerKeys()
	if err != nil {
		t.Fatal(err)
	}
	client, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	cpub, cpriv, _ := wire.GenerateKey()
	caddr := client.LocalAddr().(*net.UDPAddr).AddrPort()
	st.WriteClient(store.ClientRecord{ID: cpub, Heartbeat: time.Now(), Addr: caddr})
	st.Authorise("chat.git", cpub, time.Now().Add(time.Hour))
	other, _, _ := wire.GenerateKey() // registered for another repository only
	st.WriteClient(store.ClientRecord{ID: other, Heartbeat: time.Now(), Addr: caddr})
	st.SetRendezvous(netip.MustParseAddrPort("127.0.0.1:0"), false)

	var errb bytes.Buffer
	// SendBudget: the production 15 ms includes reading the keys and the
	// records, which a loaded CI machine can spend on its own.
	res, err := Run(Options{StoreDir: st.Dir, RepoID: "chat.git", Stdin: strings.NewReader(z + " " + a + " refs/heads/main\n"), Stderr: &errb, SendBudget: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if res.Poked || res.Direct != 1 || len(res.Events) != 1 || res.Events[0].Seq != 1 {
		t.Fatalf("result %+v", res)
	}
	if !strings.Contains(errb.String(), "rendezvous not reachable") || strings.Count(errb.String(), "\n") != 1 {
		t.Fatalf("stderr %q", errb.String())
	}
	buf := make([]byte, 2048)
	client.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, _, err := client.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	shared := wire.SharedKey(pub, cpriv)
	_, m, err := wire.Open(buf[:n], &shared)
	if err != nil {
		t.Fatal(err)
	}
	if nt, ok := m.(*wire.Notify); !ok || nt.Seq != 1 || nt.New != a || nt.Recipient != cpub {
		t.Fatalf("direct message %+v", m)
	}
	if evs, _ := st.ReadLog("chat.git", 0); len(evs) != 1 {
		t.Fatal("event not logged")
	}
}

func FuzzParseUpdates(f *testing.F) {
	f.Add([]byte(z + " " + a + " refs/heads/main\n"))
	f.Add([]byte(a + " " + z + " refs/tags/v1\n" + z + " " + a))
	f.Fuzz(func(t *testing.T, in []byte) {
		ups, err := ParseUpdates(bytes.NewReader(in), "chat.git", &bytes.Buffer{})
		if err != nil {
			return
		}
		for _, u := range ups {
			if (&wire.Notify{Seq: 1, RepoID: "chat.git", Ref: u.Ref, Old: u.Old, New: u.New}).Validate() != nil {
				t.Fatalf("accepted an invalid update %+v", u)
			}
		}
	})
}

func TestMain(m *testing.M) {
	os.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	os.Exit(m.Run())
}

// A push that updates refs/heads/main together with a ref too large for one
// datagram (a 1000-byte name with SHA-256 ids) records main and reports the
// other in one line. Validating with a placeholder repository id once let
// the large one through to the store, which then refused the whole batch.
func TestOversizedUpdateDoesNotCostItsNeighbours(t *testing.T) {
	st, _ := store.Open(t.TempDir())
	z64, a64 := strings.Repeat("0", 64), strings.Repeat("a", 64)
	long := "refs/heads/" + strings.Repeat("x", wire.MaxRef-len("refs/heads/"))
	in := z64 + " " + a64 + " refs/heads/main\n" + z64 + " " + a64 + " " + long + "\n"
	var errb bytes.Buffer
	res, err := Run(Options{StoreDir: st.Dir, RepoID: "chat.git", Stdin: strings.NewReader(in), Stderr: &errb})
	if err != nil {
		t.Fatalf("Run: %v (stderr %q)", err, errb.String())
	}
	if len(res.Events) != 1 || res.Events[0].Ref != "refs/heads/main" || res.Events[0].Seq != 1 {
		t.Fatalf("events %+v, want main as seq 1", res.Events)
	}
	if evs, _ := st.ReadLog("chat.git", 0); len(evs) != 1 || evs[0].Ref != "refs/heads/main" {
		t.Fatalf("log %+v", evs)
	}
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if len(lines) < 1 || !strings.Contains(lines[0], "skipping ref update") || strings.Contains(errb.String(), "refs/heads/main") {
		t.Fatalf("want one line naming the refused update first, got %q", errb.String())
	}
	if n := strings.Count(errb.String(), "skipping"); n != 1 {
		t.Fatalf("want exactly one refusal line, got %q", errb.String())
	}
}

// After the log was cut back, a push is recorded after the highest number
// ever given out, says so in one line, and is still delivered (the hook
// goes on to poke the rendezvous: here it is down, and the hook says so).
func TestHookAfterTruncatedLogRecordsAndSaysSo(t *testing.T) {
	st, _ := store.Open(t.TempDir())
	push := func(i int) (Result, string, error) {
		var errb bytes.Buffer
		in := fmt.Sprintf("%040x %040x refs/heads/main\n", i, i+1)
		res, err := Run(Options{StoreDir: st.Dir, RepoID: "chat.git", Stdin: strings.NewReader(in), Stderr: &errb})
		return res, errb.String(), err
	}
	for i := range 4 {
		if _, _, err := push(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Truncate(st.LogPath("chat.git"), 0); err != nil {
		t.Fatal(err)
	}
	res, stderr, err := push(4)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(res.Events) != 1 || res.Events[0].Seq != 5 {
		t.Fatalf("events %+v, want seq 5", res.Events)
	}
	if !strings.Contains(stderr, "went backwards") || !strings.Contains(stderr, "continue at 5") {
		t.Fatalf("stderr %q does not say the log went backwards", stderr)
	}
	if !strings.Contains(stderr, "rendezvous not reachable") {
		t.Fatalf("the hook did not go on to deliver the event: stderr %q", stderr)
	}
}
