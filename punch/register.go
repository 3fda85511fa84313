package punch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/internal/gitcmd"
	"github.com/gitchat/gcn-punch/wire"
)

// Registration timing, with reasons.
const (
	// RenewEvery is how often a daemon renews its SSH registration: daily,
	// well inside the server's 7-day lifetime, so a day or two of failures
	// never lets it lapse.
	RenewEvery = 24 * time.Hour
	// firstSSHRetry and maxSSHRetry bound the backoff after a failed
	// registration: quick enough to recover from a flaky network, slow
	// enough not to hammer an sshd that refuses us.
	firstSSHRetry = 30 * time.Second
	maxSSHRetry   = time.Hour
	// sshTimeout bounds one ssh run: connection, authentication, command.
	sshTimeout = time.Minute
)

// Remote is the SSH side of a clone's origin URL.
type Remote struct {
	User, Host string
	Port       string // "" : ssh's default
	Path       string // as the server's git-shell sees it
}

// Target is "user@host" (or "host"), as ssh takes it.
func (r Remote) Target() string {
	if r.User == "" {
		return r.Host
	}
	return r.User + "@" + r.Host
}

// String identifies the server for key pinning: "user@host:port".
func (r Remote) String() string {
	port := r.Port
	if port == "" {
		port = "22"
	}
	return r.Target() + ":" + port
}

// ErrNotSSH reports an origin URL that is not an SSH URL.
var ErrNotSSH = errors.New("origin is not an SSH URL (user@host:path or ssh://user@host[:port]/path)")

// ParseRemote reads "user@host:path" and "ssh://user@host[:port]/path".
func ParseRemote(url string) (Remote, error) {
	var r Remote
	if rest, ok := strings.CutPrefix(url, "ssh://"); ok {
		hostPart, path, ok := strings.Cut(rest, "/")
		if !ok || path == "" {
			return r, fmt.Errorf("%w: %q has no path", ErrNotSSH, url)
		}
		if u, h, ok := strings.Cut(hostPart, "@"); ok {
			r.User, hostPart = u, h
		}
		if strings.HasPrefix(hostPart, "[") { // [v6]:port
			end := strings.Index(hostPart, "]")
			if end < 0 {
				return r, fmt.Errorf("%w: %q", ErrNotSSH, url)
			}
			r.Host, hostPart = hostPart[1:end], hostPart[end+1:]
			r.Port = strings.TrimPrefix(hostPart, ":")
		} else if h, p, ok := strings.Cut(hostPart, ":"); ok {
			r.Host, r.Port = h, p
		} else {
			r.Host = hostPart
		}
		// git: ssh://host/~/x is relative to the home directory.
		if strings.HasPrefix(path, "~/") {
			r.Path = path
		} else {
			r.Path = "/" + path
		}
	} else {
		if strings.Contains(url, "://") {
			return r, fmt.Errorf("%w: %q", ErrNotSSH, url)
		}
		colon := strings.Index(url, ":")
		slash := strings.Index(url, "/")
		if colon <= 0 || (slash >= 0 && slash < colon) {
			return r, fmt.Errorf("%w: %q", ErrNotSSH, url)
		}
		hostPart := url[:colon]
		r.Path = url[colon+1:]
		if u, h, ok := strings.Cut(hostPart, "@"); ok {
			r.User, hostPart = u, h
		}
		r.Host = strings.Trim(hostPart, "[]")
	}
	if r.Host == "" || r.Path == "" || strings.HasPrefix(r.Host, "-") {
		return r, fmt.Errorf("%w: %q", ErrNotSSH, url)
	}
	if r.Port != "" {
		if n, err := strconv.Atoi(r.Port); err != nil || n < 1 || n > 65535 {
			return r, fmt.Errorf("%w: bad port in %q", ErrNotSSH, url)
		}
	}
	// The path travels as one word through git-shell's command splitting.
	if strings.ContainsAny(r.Path, " \t\n'\"\\") {
		return r, fmt.Errorf("repository path %q has spaces or quotes, which registration does not support", r.Path)
	}
	return r, nil
}

// OriginHost is the host of the clone's SSH origin.
func OriginHost(ctx context.Context, clone string) (string, error) {
	url, err := gitcmd.OriginURL(ctx, clone)
	if err != nil {
		return "", err
	}
	rem, err := ParseRemote(url)
	return rem.Host, err
}

// OriginRepoID is the repository id a clone follows by default: the last
// path element of its origin URL ("git@host:team/chat.git" → "chat.git").
func OriginRepoID(ctx context.Context, clone string) (string, error) {
	url, err := gitcmd.OriginURL(ctx, clone)
	if err != nil {
		return "", err
	}
	url = strings.TrimRight(url, "/")
	if i := strings.LastIndexAny(url, "/:"); i >= 0 {
		url = url[i+1:]
	}
	if url == "" {
		return "", fmt.Errorf("%s: cannot take a repository id from its origin URL", clone)
	}
	return url, nil
}

// SSHCommand is the ssh command git would use for the clone:
// $GIT_SSH_COMMAND, then core.sshCommand, then plain ssh.
func SSHCommand(ctx context.Context, clone string) string {
	if c := os.Getenv("GIT_SSH_COMMAND"); c != "" {
		return c
	}
	if c, err := gitcmd.Output(ctx, clone, "config", "--get", "core.sshCommand"); err == nil && c != "" {
		return c
	}
	return "ssh"
}

// Register runs gcn-heartbeat on the clone's origin server over SSH, with
// BatchMode so it never prompts, and returns the server's reply. prove, if
// set, makes the proof that this daemon holds its key for the server it
// names (empty when the daemon does not know that server's key yet); a
// server too old to take a proof, or that refuses it, is asked again
// without one.
func Register(ctx context.Context, clone string, id wire.Key, udpPort uint16, reflexive netip.AddrPort, prove func(server, repoPath, port string) string) (wire.HeartbeatReply, Remote, error) {
	url, err := gitcmd.OriginURL(ctx, clone)
	if err != nil {
		return wire.HeartbeatReply{}, Remote{}, err
	}
	rem, err := ParseRemote(url)
	if err != nil {
		return wire.HeartbeatReply{}, rem, err
	}
	refl := "-"
	if reflexive.IsValid() {
		refl = reflexive.String()
	}
	args := []string{"-o", "BatchMode=yes"}
	if rem.Port != "" {
		args = append(args, "-p", rem.Port)
	}
	port := strconv.Itoa(int(udpPort))
	args = append(args, rem.Target(), "gcn-heartbeat", "--repo", rem.Path, "--id", id.String(),
		"--port", port, "--reflexive", refl)
	if prove != nil {
		if p := prove(rem.String(), rem.Path, port); p != "" {
			reply, err := runHeartbeat(ctx, clone, append(args, "--proof", p))
			// A server too old for proofs, or one that refuses this one
			// (its key changed: the pin check below says so loudly; or
			// the clocks differ by minutes) is asked again without: that
			// authorises the key, and the keepalives move the record.
			if err == nil || !strings.Contains(err.Error(), "unknown flag: --proof") && !strings.Contains(err.Error(), "registration proof refused") {
				return reply, rem, annotate(err, rem)
			}
		}
	}
	reply, err := runHeartbeat(ctx, clone, args)
	return reply, rem, annotate(err, rem)
}

// annotate says which server a registration failed with.
func annotate(err error, rem Remote) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("ssh registration with %s failed %w", rem, err)
}

// runHeartbeat runs ssh with args and parses gcn-heartbeat's reply.
func runHeartbeat(ctx context.Context, clone string, args []string) (wire.HeartbeatReply, error) {
	ctx, cancel := context.WithTimeout(ctx, sshTimeout)
	defer cancel()
	// As git does: the command is a shell snippet and our arguments follow
	// it as "$@", never spliced into the text.
	cmd := exec.CommandContext(ctx, "sh", "-c", SSHCommand(ctx, clone)+` "$@"`, "gcn-punch-ssh")
	cmd.Args = append(cmd.Args, args...)
	cmd.Dir = clone
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = nil
	if err := cmd.Run(); err != nil {
		msg := oneLine(errb.String())
		return wire.HeartbeatReply{}, fmt.Errorf("(%v): %s%s", err, msg, sshHint(msg))
	}
	return wire.ParseHeartbeatReply(out.String())
}

// oneLine joins ssh's error text (lines ending in \r\n) into one line,
// "first | second", so that a log shows it as text, not as escapes.
func oneLine(s string) string {
	var lines []string
	for _, l := range strings.Split(strings.ReplaceAll(s, "\r", ""), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, " | ")
}

// sshHint turns a known ssh or server error into advice.
func sshHint(msg string) string {
	switch {
	case strings.Contains(msg, "Host key verification failed"), strings.Contains(msg, "No ED25519 host key is known"), strings.Contains(msg, "host key is known"):
		return "; hint: the server's host key is not in your known_hosts: run `ssh HOST` once by hand, check the fingerprint, and accept it (host key checking stays on)"
	case strings.Contains(msg, "Permission denied"):
		return "; hint: the server refused your key: is it loaded (ssh-add -l)? A systemd user service needs `systemctl --user import-environment SSH_AUTH_SOCK`, or a key without a passphrase"
	case strings.Contains(msg, "unrecognized command"), strings.Contains(msg, "gcn-heartbeat: not found"), strings.Contains(msg, "command not found"):
		return "; hint: the server has no gcn-heartbeat command: its admin runs `gcn-punch install server --repo PATH`"
	case strings.Contains(msg, "not served here"):
		return "; hint: this repository is not set up for notifications: its admin runs `gcn-punch install server --repo PATH`"
	case strings.Contains(msg, "Could not resolve"), strings.Contains(msg, "Connection refused"), strings.Contains(msg, "timed out"), strings.Contains(msg, "No route"):
		return "; hint: the server is not reachable over SSH right now; the daemon will retry"
	}
	return ""
}

// OpenStream runs `gcn-heartbeat watch` on the clone's origin over SSH, the
// way Register runs gcn-heartbeat (the clone's ssh command, BatchMode), and
// returns the session as a stream once the rendezvous has said "ok". A
// refusal is an error carrying the server's one line. ssh's own keepalives
// (every 15 s, three missed) end a session whose TCP path died.
func OpenStream(ctx context.Context, clone string, rem Remote) (io.ReadWriteCloser, error) {
	args := []string{"-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"}
	if rem.Port != "" {
		args = append(args, "-p", rem.Port)
	}
	args = append(args, rem.Target(), "gcn-heartbeat", "watch", "--repo", rem.Path)
	cmd := exec.Command("sh", "-c", SSHCommand(ctx, clone)+` "$@"`, "gcn-punch-ssh")
	cmd.Args = append(cmd.Args, args...)
	cmd.Dir = clone
	errb := &headBuffer{max: 4096}
	cmd.Stderr = errb
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &sshStream{cmd: cmd, in: in, out: out}
	type result struct {
		line string
		err  error
	}
	first := make(chan result, 1)
	go func() {
		line, err := control.ReadLine(out, 512)
		first <- result{line, err}
	}()
	var r result
	t := time.NewTimer(sshTimeout)
	defer t.Stop()
	select {
	case r = <-first:
	case <-t.C:
		r.err = errors.New("no answer within a minute")
	case <-ctx.Done():
		r.err = ctx.Err()
	}
	if r.err == nil && r.line == "ok\n" {
		return s, nil
	}
	s.Close()
	msg := strings.TrimSpace(strings.TrimPrefix(r.line, "error "))
	if msg == "" {
		msg = oneLine(errb.String())
	}
	if msg == "" && r.err != nil {
		msg = r.err.Error()
	}
	return nil, fmt.Errorf("stream with %s refused: %s%s", rem, msg, sshHint(msg))
}

// sshStream is an ssh process's stdin and stdout as one stream.
type sshStream struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  io.Reader
	once sync.Once
}

func (s *sshStream) Read(b []byte) (int, error)  { return s.out.Read(b) }
func (s *sshStream) Write(b []byte) (int, error) { return s.in.Write(b) }

// Close ends the session: the process is killed and reaped.
func (s *sshStream) Close() error {
	s.once.Do(func() {
		s.in.Close()
		s.cmd.Process.Kill()
		s.cmd.Wait()
	})
	return nil
}

// headBuffer keeps the first max bytes written to it: ssh's error text,
// bounded however long the session runs.
type headBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if room := h.max - len(h.b); room > 0 {
		h.b = append(h.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (h *headBuffer) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return string(h.b)
}

// Registrar keeps one clone registered: it registers at start, pins the
// server key, follows the repository, and renews daily.
type Registrar struct {
	Daemon *Daemon
	Clone  string
	Logger *slog.Logger
	// Registered is called after each successful registration.
	Registered func(repoID, clone string)
}

// Run registers until ctx ends. A changed server key stops it for good.
func (r *Registrar) Run(ctx context.Context) {
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	retry := firstSSHRetry
	var following wire.Key
	for {
		reflexive := netip.AddrPort{}
		if !following.IsZero() {
			reflexive = r.Daemon.Observed(following)
		}
		reply, rem, err := Register(ctx, r.Clone, r.Daemon.PublicKey(), r.Daemon.LocalPort(), reflexive, r.Daemon.heartbeatProof)
		if err == nil {
			err = r.Daemon.Pin(rem.String(), reply.ServerKey)
			if errors.Is(err, ErrServerKeyChanged) {
				log.Error(err.Error(), "clone", r.Clone)
				return
			}
		}
		if err == nil {
			srv := Server{Addr: reply.Addrs[0], Key: reply.ServerKey, Repos: []string{reply.RepoID}}
			if len(reply.Addrs) > 1 {
				alt := reply.Addrs[1]
				if alt.Addr().IsUnspecified() {
					// The rendezvous serves the other family too, at the
					// address the SSH host's name has there.
					alt = otherFamily(ctx, rem.Host, alt)
				}
				if alt.IsValid() && alt.Addr().Is6() != srv.Addr.Addr().Is6() {
					srv.Alt = alt
				}
			}
			err = r.Daemon.Follow(srv)
		}
		if err == nil {
			// Where UDP is blocked, the same SSH access carries the stream.
			clone, remote := r.Clone, rem
			r.Daemon.SetStreamer(reply.ServerKey, func(ctx context.Context) (io.ReadWriteCloser, error) {
				return OpenStream(ctx, clone, remote)
			})
		}
		wait := RenewEvery
		if err != nil {
			log.Warn("registration failed; retrying", "clone", r.Clone, "in", retry, "err", err)
			wait, retry = retry, min(2*retry, maxSSHRetry)
		} else {
			retry = firstSSHRetry
			following = reply.ServerKey
			log.Info("registered over SSH", "clone", r.Clone, "server", rem.String(), "repo", reply.RepoID,
				"rendezvous", reply.Addrs[0], "expires", reply.Expiry.UTC().Format(time.RFC3339))
			if r.Registered != nil {
				r.Registered(reply.RepoID, r.Clone)
			}
		}
		if !waitWall(ctx, wait, time.Now) {
			return
		}
	}
}

// wallCheck is how often a wait for the next registration looks at the
// wall clock. Go's timers run on the monotonic clock, which stops while a
// laptop sleeps: a 24 h timer set before a week's suspend fired a day of
// waking time after the resume, the 7-day registration expired meanwhile,
// and the rendezvous refused the daemon all that day.
const wallCheck = time.Minute

// waitWall waits until wait has passed on the wall clock (now's reading
// stripped of its monotonic part), or ctx ends; it reports whether the
// time came.
func waitWall(ctx context.Context, wait time.Duration, now func() time.Time) bool {
	due := now().Round(0).Add(wait)
	for {
		left := due.Sub(now().Round(0))
		if left <= 0 {
			return true
		}
		t := time.NewTimer(min(left, wallCheck))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// CheckClone says what is wrong with a --repo clone before anything relies
// on it: a mistake that cannot fix itself is an error at start, with what
// to do, not a registration retried forever. With needSSH the clone must
// have an SSH origin, which registration uses.
func CheckClone(ctx context.Context, clone string, needSSH bool) error {
	if fi, err := os.Stat(clone); err != nil || !fi.IsDir() {
		return fmt.Errorf("--repo %s: no such directory: give the path of a git clone", clone)
	}
	if _, err := gitcmd.Output(ctx, clone, "rev-parse", "--git-dir"); err != nil {
		return fmt.Errorf("--repo %s: not a git clone: give the path of a clone of the chat repository", clone)
	}
	if !needSSH {
		return nil
	}
	url, err := gitcmd.OriginURL(ctx, clone)
	if err != nil {
		return fmt.Errorf("--repo %s: it has no origin remote: gcn-punch registers over the SSH access its origin uses", clone)
	}
	if _, err := ParseRemote(url); err != nil {
		return fmt.Errorf("--repo %s: its origin %q is not SSH: gcn-punch registers over the SSH access git uses, so clone over SSH (git@host:chat.git), or give --server, --server-key and --repo-id", clone, url)
	}
	return nil
}
