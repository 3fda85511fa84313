// Package hook records a push's ref updates in the event log and hands them to the rendezvous without ever failing the push.
package hook

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/internal/gitcmd"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// Budgets keep the push fast: the hook must return in well under 50 ms.
const (
	// PokeTimeout bounds the hand-over to the rendezvous on the local socket;
	// a healthy rendezvous answers in well under a millisecond.
	PokeTimeout = 30 * time.Millisecond
	// DirectBudget bounds the best-effort direct send when the rendezvous is
	// down; each recipient costs one Curve25519 precomputation (~50 µs).
	DirectBudget = 15 * time.Millisecond
	// gitConfigTimeout bounds the one `git config` call for the repository id.
	gitConfigTimeout = 200 * time.Millisecond
	// maxLines and maxLine bound what is read from post-receive's stdin.
	maxLines = 10000
	maxLine  = 4096
)

// Options configure one run.
type Options struct {
	StoreDir string
	RepoID   string // "" : git config gcnpunch.repoid, else the directory's name
	GitDir   string // "" : $GIT_DIR, else the working directory
	Stdin    io.Reader
	Stderr   io.Writer
	Now      func() time.Time
	// Message, when set, is every update's chat message, instead of what
	// git says of its commits (a test notification's text).
	Message *wire.Chat
	// MessageBudget bounds the time spent reading messages from git
	// (0: DefaultMessageBudget). Tests that assert on messages raise it, since a
	// loaded machine can spend more than the default on one git process.
	MessageBudget time.Duration
	// SendBudget bounds the direct send when the rendezvous is down (0:
	// DirectBudget). Tests that assert on what was sent raise it.
	SendBudget time.Duration
}

// Result says what happened, for tests and logs.
type Result struct {
	RepoID string
	Events []store.Event
	Poked  bool
	Direct int // datagrams sent directly because the rendezvous was down
	// Held says that the log could not be written and the events are held
	// in memory, by the rendezvous or (when it is down) by no one: their
	// numbers are given out and they were sent directly as a best effort.
	Held bool
	// Messages is how many updates' chat messages were recorded.
	Messages int
	// Published says the events reached the cluster's stream (--cluster).
	Published bool
}

// Run appends the updates read from Stdin and notifies. Every problem is
// reported on Stderr in one line; the caller exits 0 regardless.
func Run(o Options) (Result, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	var res Result
	// The repository id comes first: whether an update fits one datagram
	// depends on it, so each update is validated once, with the real id.
	id := o.RepoID
	if id == "" {
		var err error
		if id, err = RepoID(o.GitDir); err != nil {
			return res, err
		}
	}
	if err := wire.ValidRepoID(id); err != nil {
		return res, err
	}
	res.RepoID = id
	ups, err := ParseUpdates(o.Stdin, id, o.Stderr)
	if err != nil {
		return res, err
	}
	if len(ups) == 0 {
		return res, nil
	}
	st, err := store.Open(o.StoreDir)
	if err != nil {
		return res, err
	}
	// A hook copied into another repository, or a mistyped --repo-id, must
	// not start a repository of its own in the store (one that has a log
	// already, hooked by hand beside an installed one, goes on as before).
	// The log is looked at first: every push but a repository's first
	// then costs one stat, and the served list is read only for a new one.
	if !st.HasLog(id) {
		if ok, served := st.Serves(id); !ok {
			return res, fmt.Errorf("%w: %s (this store serves %s): nothing recorded; `gcn-punch install server --repo PATH` serves a repository",
				ErrNotServed, id, strings.Join(served, ", "))
		}
	}
	// Messages first: the rendezvous reads them when it reads the events.
	var msgs []store.Message
	if o.Message != nil {
		for _, u := range ups {
			msgs = append(msgs, store.Message{Old: u.Old, New: u.New, Chat: *o.Message})
		}
	} else {
		msgs = readMessages(gitDirOf(o.GitDir), ups, o.MessageBudget)
	}
	if err := st.AppendMessages(id, msgs); err != nil {
		fmt.Fprintf(o.Stderr, "gcn-punch: %s: chat message not recorded (the notification goes without it): %v\n", id, err)
		msgs = nil
	} else {
		res.Messages = len(msgs)
	}
	res.Events, err = st.Append(id, ups, o.Now())
	// The events published to a cluster's stream carry their messages, as
	// the rendezvous's would after reading the messages file: the stream
	// deduplicates by sequence number, so the first publication is the one
	// every node keeps.
	var mr store.MessageReader
	for _, m := range msgs {
		mr.Add(m)
	}
	mr.Attach(res.Events)
	if err != nil && len(res.Events) == 0 {
		// Not recorded: the disk is full, or a rendezvous already holds
		// events of this repository for want of disk.
		return res, hold(st, id, ups, err, &res, o)
	}
	if err != nil {
		// Recorded all the same (a log that went backwards, a compaction
		// that failed): say so loudly, and deliver.
		fmt.Fprintf(o.Stderr, "gcn-punch: %s: %v\n", id, err)
	}
	res.Published = publishToCluster(st, id, res.Events)
	reply, err := control.Dial(st.SocketPath(), "poke "+id, PokeTimeout)
	if err == nil && reply == "ok\n" {
		res.Poked = true
		return res, nil
	}
	if err == nil {
		err = errors.New(strings.TrimSpace(reply))
	}
	fmt.Fprintf(o.Stderr, "gcn-punch: rendezvous not reachable (%v); event logged, sent directly as a best effort, catch-up delivers the rest\n", err)
	res.Direct = sendDirect(st, id, res.Events, o.Now(), o.SendBudget)
	return res, nil
}

// ParseUpdates reads post-receive's "<old> <new> <ref>" lines for the
// repository repoID. A malformed line, or an update that cannot become a
// notification of that repository (one datagram at most), is reported in
// one line and skipped; every other update is returned.
func ParseUpdates(r io.Reader, repoID string, stderr io.Writer) ([]store.Update, error) {
	var ups []store.Update
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, maxLine), maxLine)
	for n := 0; sc.Scan(); n++ {
		if n >= maxLines {
			return ups, fmt.Errorf("more than %d ref updates in one push", maxLines)
		}
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue // a chaining wrapper may add a blank line
		}
		if len(f) != 3 {
			fmt.Fprintf(stderr, "gcn-punch: skipping malformed post-receive line %q\n", sc.Text())
			continue
		}
		u := store.Update{Old: strings.ToLower(f[0]), New: strings.ToLower(f[1]), Ref: f[2]}
		if err := (&wire.Notify{Seq: 1, RepoID: repoID, Ref: u.Ref, Old: u.Old, New: u.New}).Validate(); err != nil {
			fmt.Fprintf(stderr, "gcn-punch: skipping ref update %s: %v\n", shorten(u.Ref), err)
			continue
		}
		ups = append(ups, u)
	}
	return ups, sc.Err()
}

// shorten keeps a log line readable when a ref name is long.
func shorten(s string) string {
	const keep = 60
	if len(s) <= keep {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:keep], len(s))
}

// ErrNotServed is Run's error for a repository outside the store's served
// list (when it has one): nothing is recorded.
var ErrNotServed = errors.New("repository not served by this store")

// ErrNotRepository is RepoID's error outside a git repository: the hook
// then records nothing, rather than inventing a repository named after the
// directory it happened to run in.
var ErrNotRepository = errors.New("not a git repository")

// isGitDir reports whether dir looks like a git directory (HEAD, objects/
// and refs/), without running git: the hook has a time bound.
func isGitDir(dir string) bool {
	for _, name := range []string{"HEAD", "objects", "refs"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return false
		}
	}
	return true
}

// RepoID is `git config gcnpunch.repoid` of the repository, or, if that is
// unset, the repository directory's base name (e.g. "chat.git"; for a
// non-bare ".git" directory, its parent's name).
func RepoID(gitDir string) (string, error) {
	if gitDir == "" {
		gitDir = os.Getenv("GIT_DIR")
	}
	if gitDir == "" {
		gitDir = "."
	}
	abs, err := filepath.Abs(gitDir)
	if err != nil {
		return "", err
	}
	if !isGitDir(abs) {
		return "", fmt.Errorf("%w: %s (run me as a repository's post-receive hook, or give --repo-id)", ErrNotRepository, abs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), gitConfigTimeout)
	defer cancel()
	// safe.directory: install runs this as root on the git user's repository.
	if id, err := gitcmd.Output(ctx, "", "-c", "safe.directory=*", "--git-dir", abs, "config", "--get", "gcnpunch.repoid"); err == nil && id != "" {
		return id, nil
	}
	base := filepath.Base(abs)
	if base == ".git" {
		base = filepath.Base(filepath.Dir(abs))
	}
	return base, nil
}

// sendDirect sends the new events from the rendezvous's own address (free,
// since the rendezvous is down), which the clients' NATs let through. In
// registered mode only clients authorised for the repository get them; in
// open mode every recently seen client does. It stops at budget.
func sendDirect(st *store.Store, repoID string, evs []store.Event, now time.Time, budget time.Duration) int {
	if budget <= 0 {
		budget = DirectBudget
	}
	deadline := time.Now().Add(budget)
	pub, priv, err := st.ExistingServerKeys()
	if err != nil {
		return 0
	}
	// From the rendezvous's address in the record's family: the one the
	// client's NAT or firewall expects answers from.
	addrs, _ := st.RendezvousAddrs()
	conns := map[bool]*net.UDPConn{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	connFor := func(to netip.AddrPort) *net.UDPConn {
		v6 := to.Addr().Is6()
		if c, ok := conns[v6]; ok {
			return c
		}
		var c *net.UDPConn
		for _, a := range addrs {
			if a.Addr().Is6() == v6 || a.Addr() == netip.IPv6Unspecified() {
				c, _ = net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
				break
			}
		}
		if c == nil {
			c, _ = net.ListenUDP("udp", nil)
		}
		conns[v6] = c // nil when even that failed: the record is skipped
		return c
	}
	open := st.Mode() == store.ModeOpen
	sent := 0
	// The budget covers reading the records too: a store of 100k clients
	// must not hold the push up.
	st.EachClient(func(r store.ClientRecord) bool {
		if time.Now().After(deadline) {
			return false
		}
		if !r.Recent(now) {
			return true
		}
		if !open && !st.Authorised(repoID, r.ID, now) {
			return true
		}
		conn := connFor(r.Addr)
		if conn == nil {
			return true
		}
		shared := wire.SharedKey(r.ID, priv)
		to := net.UDPAddrFromAddrPort(r.Addr)
		for _, e := range evs {
			b, err := wire.Seal(nil, &wire.Notify{Seq: e.Seq, TimeMilli: e.TimeMilli, Recipient: r.ID, RepoID: repoID, Ref: e.Ref, Old: e.Old, New: e.New}, pub, &shared)
			if err == nil {
				if _, err := conn.WriteTo(b, to); err == nil {
					sent++
				}
			}
		}
		return true
	})
	return sent
}
