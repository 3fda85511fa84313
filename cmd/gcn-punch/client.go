package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/punch/action"
	"github.com/gitchat/gcn-punch/wire"
)

func runDaemon(ctx context.Context, args []string) error { return runClient(ctx, "daemon", args, nil) }

// runWatchCmd is `gcn-punch watch`: a daemon whose one action is printing
// each notification on stdout as one JSON object a line (punch.Event's
// keys, "event" push or resync), for scripts and for trying gcn-punch out.
// It keeps its own state (key, positions) unless given the daemon's with
// --state, which it can use only while the daemon is stopped.
func runWatchCmd(ctx context.Context, args []string) error {
	return runClient(ctx, "watch", args, os.Stdout)
}

// watchLine is one line of `gcn-punch watch`.
type watchLine struct {
	punch.Event
	Kind string `json:"event"` // "push" or "resync"
}

// runClient runs a client daemon; with out, as `watch`, printing events
// there instead of acting on them.
func runClient(ctx context.Context, name string, args []string, out io.Writer) (err error) {
	fs := newFlags(name)
	server := fs.String("server", "", "rendezvous UDP address HOST:PORT, or one per family: ADDR4:PORT,[ADDR6]:PORT (a name with both families gives a path on each)")
	serverKey := fs.String("server-key", "", "rendezvous public key: 64 hex characters, or @FILE")
	repoIDs := fs.StringArray("repo-id", nil, "repository id to follow (repeatable)")
	stateDirDefault := defaultStateDir()
	if out != nil {
		stateDirDefault += "-watch" // its own key and positions, beside the daemon's
	}
	stateDir := fs.String("state", stateDirDefault, "state directory (client key, positions)")
	clones := fs.StringArray("repo", nil, "clone to fast-forward on each push (repeatable)")
	program := fs.String("exec", "", "command to run on each notification, with GCN_* variables: a program and its arguments, quoted as in systemd's ExecStart (no shell)")
	keepalive := fs.Duration("keepalive", punch.DefaultKeepalive, "fixed keepalive interval (default: learned from the NAT's mapping lifetime, starting at 25s)")
	listen := fs.String("listen", ":0", "local UDP address")
	noDesktop := fs.Bool("no-desktop", false, "no desktop notifications even when a session bus exists")
	noPeer := fs.Bool("no-peer", false, "never forward to other clients nor take part in hole punching: a leaf served by the rendezvous")
	refs := fs.StringArray("refs", nil, "follow only refs matching this git glob, e.g. refs/heads/main or 'refs/heads/release/*' (repeatable, at most 8; default every ref)")
	logs := addLogFlags(fs)
	configDefault := daemonConfigPath()
	if out != nil {
		configDefault = "" // watch reads a file only when given one
	}
	config := configFlag(fs, configDefault)
	parse(fs, args)
	if err := applyConfig(fs, *config); err != nil {
		return err
	}
	if fs.Changed("keepalive") && (*keepalive < punch.MinKeepalive || *keepalive > punch.MaxKeepalive) {
		usageFail(fs, fmt.Errorf("--keepalive %v: give %v to %v, the range the daemon learns in (or leave it out, and the daemon learns it)", *keepalive, punch.MinKeepalive, punch.MaxKeepalive))
	}
	if len(*refs) > wire.MaxRefPatterns {
		usageFail(fs, fmt.Errorf("--refs given %d times: at most %d patterns", len(*refs), wire.MaxRefPatterns))
	}
	for _, p := range *refs {
		if err := wire.ValidRefPattern(p); err != nil {
			usageFail(fs, fmt.Errorf("--refs: %s", errText(err)))
		}
	}
	log := logs.logger(fs)

	sshMode := *server == "" && *serverKey == "" && len(*repoIDs) == 0
	if sshMode && len(*clones) == 0 {
		return fmt.Errorf("give --repo CLONE (registers over SSH), or --server, --server-key and --repo-id")
	}
	for _, c := range *clones {
		if err := punch.CheckClone(ctx, c, sshMode); err != nil {
			return err
		}
	}
	var servers []punch.Server
	if !sshMode {
		if *server == "" || *serverKey == "" {
			return fmt.Errorf("--server and --server-key go together (or give only --repo CLONE to register over SSH)")
		}
		key, err := readKey(*serverKey)
		if err != nil {
			return fmt.Errorf("--server-key: %w: a server key is the 64 hex characters of server.pub in the rendezvous's store (give them, or @FILE)", err)
		}
		v4, v6, err := punch.ResolveRendezvous(ctx, *server)
		if err != nil {
			return fmt.Errorf("--server: %w", err)
		}
		if !v4.IsValid() && !v6.IsValid() {
			return fmt.Errorf("--server %s: the name has no address", *server)
		}
		ids := *repoIDs
		for _, c := range *clones {
			if len(*repoIDs) > 0 {
				break
			}
			id, err := punch.OriginRepoID(ctx, c)
			if err != nil {
				return fmt.Errorf("--repo: %w (or give --repo-id)", err)
			}
			ids = append(ids, id)
		}
		if len(ids) == 0 {
			return fmt.Errorf("--repo-id is required")
		}
		// A name with both families gives a path on each (IPv6 preferred).
		if !v4.IsValid() {
			v4, v6 = v6, netip.AddrPort{}
		}
		servers = []punch.Server{{Addr: v4, Alt: v6, Key: key, Repos: ids}}
	}

	var argv []string
	if *program != "" {
		var err error
		if argv, err = execCommand(*program); err != nil {
			return err
		}
	}
	// The state directory first: a second daemon on it stops here, before
	// it touches the key, the positions or the network.
	release, err := punch.LockState(*stateDir)
	if err != nil {
		return err
	}
	defer release()
	conn, err := udpconn.Listen(*listen, nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	index := action.NewCloneIndex(ctx, *clones)
	runner := &action.Runner{Exec: argv, Clones: *clones, CloneFor: index.For, Logger: log}
	handle := runner.Handle
	if out != nil {
		// Watching: print, and nothing else (no fast-forward, no desktop).
		enc := json.NewEncoder(out)
		var mu sync.Mutex
		handle = func(_ context.Context, ev punch.Event) {
			kind := "push"
			if ev.Resync {
				kind = "resync"
			}
			mu.Lock()
			defer mu.Unlock()
			if err := enc.Encode(watchLine{Event: ev, Kind: kind}); err != nil {
				log.Warn("cannot write to stdout", "err", err)
			}
		}
	} else if !*noDesktop && action.SessionBusAvailable() {
		runner.Desktop = &action.Desktop{}
		defer runner.Desktop.Close()
	}
	fixed := time.Duration(0)
	if fs.Changed("keepalive") {
		fixed = *keepalive
	}
	d, err := punch.New(punch.Config{Conn: conn, Servers: servers, StateDir: *stateDir,
		FixedKeepalive: fixed, Handle: handle, NoPeer: *noPeer, Refs: *refs, Control: punch.ControlSocket(*stateDir), Logger: log})
	if err != nil {
		return err
	}
	log.Info(name+" up", "version", shortVersion(), "client", d.PublicKey().String(), "udp", conn.LocalAddrPort().String(), "ssh_registration", sshMode)
	defer func() { logStopped(log, name, err) }()
	var wg sync.WaitGroup
	defer wg.Wait()
	if sshMode {
		for _, c := range *clones {
			r := &punch.Registrar{Daemon: d, Clone: c, Logger: log, Registered: index.Add}
			wg.Go(func() { r.Run(ctx) })
		}
	}
	return d.Run(ctx)
}

// execCommand parses --exec and checks that its program exists: a typo
// found at start, not at the first notification.
func execCommand(s string) ([]string, error) {
	argv, err := action.SplitCommand(s)
	if err != nil {
		return nil, fmt.Errorf("--exec: %w (quote a word with spaces: --exec '\"/opt/my tools/notify\" --flag')", err)
	}
	if _, err := exec.LookPath(argv[0]); err != nil {
		return nil, fmt.Errorf("--exec: no program %q: give its path, or the name of a program on PATH (%s)", argv[0], os.Getenv("PATH"))
	}
	return argv, nil
}

// runUnpin forgets a server's pinned key (after an expected key change),
// instead of editing state.json by hand.
func runUnpin(args []string) error {
	fs := newFlags("unpin")
	stateDir := fs.String("state", defaultStateDir(), "the daemon's state directory")
	server := parseOne(fs, args, "the server, as the SERVER KEY CHANGED message names it (user@host:port), or its host: gcn-punch unpin SERVER")
	removed, err := punch.Unpin(*stateDir, server)
	if err != nil {
		return err
	}
	for name, key := range removed {
		fmt.Printf("unpinned %s (was %s): the next registration pins the key it offers\n", name, key)
	}
	return nil
}

// readKey takes 64 hex characters, or @FILE holding them.
func readKey(s string) (wire.Key, error) {
	if strings.HasPrefix(s, "@") {
		b, err := os.ReadFile(s[1:])
		if err != nil {
			return wire.Key{}, err
		}
		s = string(b)
	}
	k, err := wire.ParseKey(s)
	if err != nil {
		what := fmt.Sprintf("%d characters", len(strings.TrimSpace(s)))
		if len(strings.TrimSpace(s)) == 64 {
			what = "64 characters, not all hex"
		}
		return k, fmt.Errorf("not a key (%s)", what)
	}
	return k, nil
}

func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "gcn-punch")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "gcn-punch")
}

// runProbe diagnoses the NAT. It exits 0 with whatever could be learned,
// 1 when nothing could.
func runProbe(ctx context.Context, args []string) int {
	fs := newFlags("probe")
	server := fs.String("server", "", "rendezvous UDP address HOST:PORT, or one per family ADDR4:PORT,[ADDR6]:PORT (default: the daemon's, else the current clone's origin host, port 3478)")
	asJSON := fs.Bool("json", false, "print JSON")
	lifetime := fs.Bool("lifetime", false, "also measure how long the NAT keeps an idle mapping (takes minutes; needs a rendezvous with --alt-listen)")
	lifetimeMax := fs.Duration("lifetime-max", 4*time.Minute, "bound on the waiting of --lifetime")
	stateDir := fs.String("state", defaultStateDir(), "daemon state directory to take the rendezvous from")
	parse(fs, args)
	if *lifetimeMax < punch.LifetimeStart {
		usageFail(fs, fmt.Errorf("--lifetime-max %v: give at least %v, the first idle time the measurement waits", *lifetimeMax, punch.LifetimeStart))
	}
	addr, addr6, err := probeServer(ctx, *server, *stateDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch probe: %v\n", err)
		return 1
	}
	r, perr := punch.Probe(ctx, punch.ProbeOptions{Server: addr, Server6: addr6, Lifetime: *lifetime, LifetimeMax: *lifetimeMax, Progress: os.Stderr})
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
	} else {
		r.WriteHuman(os.Stdout)
	}
	if perr != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch probe: %v\n", perr)
		return 1
	}
	return 0
}

// probeServer finds the rendezvous's addresses: the one the probe tests
// (IPv4 when it has one), and its IPv6 address, if any.
func probeServer(ctx context.Context, flagValue, stateDir string) (server, server6 netip.AddrPort, err error) {
	if flagValue == "" {
		if ap, err := punch.LastRendezvous(stateDir); err == nil {
			if ap.Addr().Is6() {
				return ap, ap, nil
			}
			return ap, netip.AddrPort{}, nil
		}
		if id, err := punch.OriginHost(ctx, "."); err == nil {
			flagValue = net.JoinHostPort(id, "3478")
		} else {
			return server, server6, fmt.Errorf("give --server HOST:PORT (no daemon state in %s and no SSH origin here)", stateDir)
		}
	}
	server, server6, err = punch.ResolveRendezvous(ctx, flagValue)
	if err != nil {
		return server, server6, err
	}
	if !server.IsValid() {
		server = server6
	}
	return server, server6, nil
}
