// Command gcn-punch delivers git push notifications over UDP through NATs.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/gitchat/gcn-punch/hook"
	"github.com/gitchat/gcn-punch/internal/install"
	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/punch/action"
	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/bench"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

const usage = `gcn-punch: git push notifications over UDP, through NATs

usage:
  gcn-punch rendezvous --listen HOST:PORT [--alt-listen HOST:PORT] --store DIR [--open]
  gcn-punch hook --store DIR [--repo-id ID]         (as post-receive; reads "<old> <new> <ref>")
  gcn-punch daemon --server HOST:PORT --server-key HEX|@FILE --repo-id ID --state DIR
                   [--repo CLONE] [--exec PROGRAM] [--keepalive DURATION]
  gcn-punch status --store DIR [--json|--stats]      (server side)
  gcn-punch status --state DIR [--json|--stats]      (client side: a running daemon)
  gcn-punch install server --repo PATH [--store DIR] [--listen ADDR] [--user GITUSER]
  gcn-punch install client --repo CLONE [--exec PROGRAM]
  gcn-punch uninstall server|client --repo PATH   (removes only what install added)
  gcn-punch probe [--server HOST:PORT] [--json] [--lifetime]
  gcn-punch bench [--json] [--sizes 1000,10000,100000] [--runs 3] [--doc docs/bench.md]
  gcn-punch heartbeat --repo PATH --id HEX --port N [--reflexive IP:PORT]   (store: $GCN_STORE)
                   (as ~/git-shell-commands/gcn-heartbeat, run by clients over SSH)

Run "gcn-punch COMMAND --help" for a command's flags.
`

func main() {
	// Under git-shell the command is ~/git-shell-commands/gcn-heartbeat,
	// possibly a link to this binary.
	if filepath.Base(os.Args[0]) == "gcn-heartbeat" {
		os.Exit(runHeartbeat(os.Args[1:]))
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "rendezvous":
		err = runRendezvous(ctx, args)
	case "hook":
		runHook(args) // never fails a push
	case "daemon":
		err = runDaemon(ctx, args)
	case "status":
		err = runStatus(args)
	case "heartbeat":
		os.Exit(runHeartbeat(args))
	case "install", "uninstall":
		err = runInstall(cmd, args)
	case "bench":
		err = runBench(ctx, args)
	case "probe":
		os.Exit(runProbe(ctx, args))
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "gcn-punch: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("gcn-punch "+name, flag.ContinueOnError)
	fs.SortFlags = false
	return fs
}

// parse exits 0 on --help, and 2 on a usage error, which it names on
// stderr above the command's flags.
func parse(fs *flag.FlagSet, args []string) {
	err := parseFlags(fs, args)
	if err == flag.ErrHelp {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n\nflags of %s:\n%s", fs.Name(), err, fs.Name(), fs.FlagUsages())
		os.Exit(2)
	}
}

// parseFlags parses args and refuses positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func logger(verbose bool) *slog.Logger {
	lvl := slog.LevelInfo
	if verbose {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

func runRendezvous(ctx context.Context, args []string) error {
	fs := newFlags("rendezvous")
	o := rendezvous.Options{}
	fs.StringVar(&o.Listen, "listen", ":3478", "UDP address for STUN, keepalives and notifications")
	fs.StringVar(&o.AltListen, "alt-listen", "", "second UDP address (RFC 5780 NAT discovery)")
	fs.StringVar(&o.StoreDir, "store", store.DefaultDir, "store directory")
	fs.BoolVar(&o.Open, "open", false, "serve any client key for any repository (public repositories, demos)")
	verbose := fs.BoolP("verbose", "v", false, "debug logging")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile here until exit (for `go tool pprof`)")
	parse(fs, args)
	o.Logger = logger(*verbose)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return rendezvous.ListenAndServe(ctx, o)
}

func runHook(args []string) {
	fs := newFlags("hook")
	o := hook.Options{Stdin: os.Stdin, Stderr: os.Stderr}
	fs.StringVar(&o.StoreDir, "store", store.DefaultDir, "store directory")
	fs.StringVar(&o.RepoID, "repo-id", "", "repository id (default: git config gcnpunch.repoid, else the directory name)")
	// A hook that fails would fail the push: a usage error is one line on
	// stderr and exit 0, like every other hook problem.
	if err := parseFlags(fs, args); err == flag.ErrHelp {
		return
	} else if err != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch hook: %v; nothing recorded (the push itself succeeded)\n", err)
		return
	}
	if _, err := hook.Run(o); err != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch hook: %v (the push itself succeeded)\n", err)
	}
}

// runHeartbeat registers a client over SSH. Every refusal is one line on
// stderr and exit status 1; the store is then unchanged.
func runHeartbeat(args []string) int {
	fs := newFlags("heartbeat")
	fs.SetOutput(io.Discard)
	// The store comes from the git-shell wrapper's environment, never from
	// the client: over SSH a client chooses the arguments but not GCN_STORE.
	storeDir := store.DefaultDir
	if d := os.Getenv("GCN_STORE"); d != "" {
		storeDir = d
	}
	var req rendezvous.HeartbeatRequest
	fs.StringVar(&req.RepoPath, "repo", "", "repository path, as in the clone's URL")
	fs.StringVar(&req.ID, "id", "", "client public key, 64 hex characters")
	fs.StringVar(&req.Port, "port", "", "client UDP port")
	fs.StringVar(&req.Reflexive, "reflexive", "-", "client public address as STUN saw it, or -")
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "gcn-heartbeat: %s\n", strings.ReplaceAll(strings.TrimPrefix(err.Error(), "gcn-heartbeat: "), "\n", " "))
		return 1
	}
	if err := fs.Parse(args); err != nil {
		return fail(err)
	}
	if fs.NArg() > 0 {
		return fail(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	// Opened without creating anything: a refusal leaves the store as it was.
	if fi, err := os.Stat(storeDir); err != nil || !fi.IsDir() {
		return fail(fmt.Errorf("no store at %s", storeDir))
	}
	st := &store.Store{Dir: storeDir}
	home, _ := os.UserHomeDir()
	reply, err := rendezvous.Heartbeat(st, req, os.Getenv("SSH_CONNECTION"), home, time.Now())
	if err != nil {
		return fail(err)
	}
	fmt.Print(reply.String())
	return 0
}

func runInstall(cmd string, args []string) error {
	if len(args) == 0 || (args[0] != "server" && args[0] != "client") {
		return fmt.Errorf("usage: gcn-punch %s server|client --repo PATH [flags]", cmd)
	}
	side := args[0]
	fs := newFlags(cmd + " " + side)
	repo := fs.String("repo", "", "repository (server) or clone (client)")
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	binary := fs.String("binary", bin, "path of gcn-punch that units and hooks run")
	var srv install.ServerInstall
	var cli install.ClientInstall
	printUnit := false
	if side == "server" {
		fs.StringVar(&srv.Store, "store", store.DefaultDir, "store directory")
		fs.StringVar(&srv.Listen, "listen", ":3478", "UDP address for the rendezvous unit")
		fs.StringVar(&srv.User, "user", "", "the git user (required as root)")
		fs.StringVar(&srv.RepoID, "repo-id", "", "repository id (default: git config gcnpunch.repoid, else the directory name)")
		fs.StringVar(&srv.UnitPath, "unit", install.UnitPath, "where root writes the rendezvous's systemd unit")
		fs.BoolVar(&printUnit, "print-unit", false, "print the rendezvous's systemd unit for --user, --store, --listen, --binary; change nothing")
	} else {
		fs.StringVar(&cli.Exec, "exec", "", "program the daemon runs on each notification")
	}
	parse(fs, args[1:])
	if printUnit {
		fmt.Print(install.Unit(srv.User, *binary, srv.Listen, srv.Store))
		return nil
	}
	if *repo == "" {
		return fmt.Errorf("--repo is required")
	}
	if side == "server" {
		srv.Repo, srv.Binary, srv.Out = *repo, *binary, os.Stdout
		if cmd == "install" {
			return srv.Install()
		}
		return srv.Uninstall()
	}
	cli.Repo, cli.Binary, cli.Out = *repo, *binary, os.Stdout
	if cmd == "install" {
		return cli.Install()
	}
	return cli.Uninstall()
}

func runBench(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "loadgen" {
		return runLoadgen(ctx, args[1:])
	}
	fs := newFlags("bench")
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	o := bench.Options{Binary: bin, Progress: os.Stderr}
	sizes := fs.IntSlice("sizes", []int{1000, 10000, 100000}, "fan-out sizes (clients)")
	kaSizes := fs.IntSlice("keepalive-sizes", []int{10000, 100000}, "keepalive-load sizes (clients)")
	fs.IntVar(&o.Runs, "runs", 3, "runs of each measurement; figures are medians with their range")
	fs.DurationVar(&o.Window, "window", 30*time.Second, "keepalive-load measuring window")
	fs.IntVar(&o.LatencyPushes, "pushes", 200, "pushes for the latency measurement")
	fs.IntVar(&o.PollSample, "poll-sample", 30, "real git fetches for the polling baseline")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	doc := fs.String("doc", "", "also write the Markdown report here (e.g. docs/bench.md)")
	hostNetns := fs.Bool("host-netns", false, "run in the current network namespace (default as root: a namespace of its own, with a UDP hash table sized for the simulated clients)")
	parse(fs, args)
	if !*hostNetns && !bench.InOwnNetns() && os.Geteuid() == 0 {
		code, err := bench.RunInOwnNetns(os.Args)
		if err == nil {
			os.Exit(code)
		}
		fmt.Fprintf(os.Stderr, "gcn-punch bench: cannot run in a network namespace of its own (%v); running here\n", err)
	}
	o.Sizes, o.KeepaliveAt = *sizes, *kaSizes
	r, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	if *doc != "" {
		if err := os.WriteFile(*doc, []byte(r.Doc()), 0o644); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	r.Table(os.Stdout)
	return nil
}

// runLoadgen is one load-generator process of `gcn-punch bench`.
func runLoadgen(ctx context.Context, args []string) error {
	fs := newFlags("bench loadgen")
	server := fs.String("server", "", "rendezvous address")
	key := fs.String("server-key", "", "rendezvous key")
	o := bench.LoadgenOptions{}
	fs.StringVar(&o.Repo, "repo-id", "chat.git", "repository id")
	fs.IntVar(&o.Clients, "clients", 1000, "clients to simulate")
	firstIP := fs.String("first-ip", "127.10.0.1", "first loopback address")
	fs.IntVar(&o.PerIP, "per-ip", 25, "clients per address")
	fs.DurationVar(&o.Keepalive, "keepalive", 0, "keepalive interval after registering (0: none)")
	parse(fs, args)
	var err error
	if o.Server, err = netip.ParseAddrPort(*server); err != nil {
		return err
	}
	if o.ServerKey, err = wire.ParseKey(*key); err != nil {
		return err
	}
	if o.FirstIP, err = netip.ParseAddr(*firstIP); err != nil {
		return err
	}
	// A line on stdin starts the keepalives.
	start := make(chan struct{})
	go func() {
		bufio.NewReader(os.Stdin).ReadString('\n')
		close(start)
	}()
	o.Start = start
	return bench.Loadgen(ctx, o, os.Stdout)
}

// runProbe diagnoses the NAT. It exits 0 with whatever could be learned,
// 1 when nothing could.
func runProbe(ctx context.Context, args []string) int {
	fs := newFlags("probe")
	server := fs.String("server", "", "rendezvous UDP address (default: the daemon's, else the current clone's origin host, port 3478)")
	asJSON := fs.Bool("json", false, "print JSON")
	lifetime := fs.Bool("lifetime", false, "also measure how long the NAT keeps an idle mapping (takes minutes)")
	lifetimeMax := fs.Duration("lifetime-max", 4*time.Minute, "bound on the waiting of --lifetime")
	stateDir := fs.String("state", defaultStateDir(), "daemon state directory to take the rendezvous from")
	parse(fs, args)
	addr, err := probeServer(ctx, *server, *stateDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch probe: %v\n", err)
		return 1
	}
	r, perr := punch.Probe(ctx, punch.ProbeOptions{Server: addr, Lifetime: *lifetime, LifetimeMax: *lifetimeMax, Progress: os.Stderr})
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

func probeServer(ctx context.Context, flagValue, stateDir string) (netip.AddrPort, error) {
	if flagValue == "" {
		if ap, err := punch.LastRendezvous(stateDir); err == nil {
			return ap, nil
		}
		if id, err := punch.OriginHost(ctx, "."); err == nil {
			flagValue = net.JoinHostPort(id, "3478")
		} else {
			return netip.AddrPort{}, fmt.Errorf("give --server HOST:PORT (no daemon state in %s and no SSH origin here)", stateDir)
		}
	}
	ua, err := net.ResolveUDPAddr("udp4", flagValue)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func runStatus(args []string) error {
	fs := newFlags("status")
	dir := fs.String("store", store.DefaultDir, "store directory (the server side)")
	stateDir := fs.String("state", "", "a daemon's state directory: the client side")
	asJSON := fs.Bool("json", false, "print JSON")
	stats := fs.Bool("stats", false, "print the running rendezvous's (or with --state, daemon's) counters as JSON")
	parse(fs, args)
	if *stateDir != "" {
		if *stats {
			return punch.WriteStats(os.Stdout, *stateDir)
		}
		return punch.WriteStatus(os.Stdout, *stateDir, *asJSON)
	}
	if *stats {
		return rendezvous.WriteStats(os.Stdout, *dir)
	}
	return rendezvous.WriteStatus(os.Stdout, *dir, *asJSON)
}

func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "gcn-punch")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "gcn-punch")
}

func runDaemon(ctx context.Context, args []string) error {
	fs := newFlags("daemon")
	server := fs.String("server", "", "rendezvous UDP address HOST:PORT")
	serverKey := fs.String("server-key", "", "rendezvous public key: 64 hex characters, or @FILE")
	repoIDs := fs.StringArray("repo-id", nil, "repository id to follow (repeatable)")
	stateDir := fs.String("state", defaultStateDir(), "state directory (client key, positions)")
	clones := fs.StringArray("repo", nil, "clone to fast-forward on each push (repeatable)")
	program := fs.String("exec", "", "program to run on each notification, with GCN_* variables (no shell)")
	keepalive := fs.Duration("keepalive", punch.DefaultKeepalive, "fixed keepalive interval (default: learned from the NAT's mapping lifetime, starting at 25s)")
	listen := fs.String("listen", ":0", "local UDP address")
	noDesktop := fs.Bool("no-desktop", false, "no desktop notifications even when a session bus exists")
	verbose := fs.BoolP("verbose", "v", false, "debug logging")
	parse(fs, args)
	log := logger(*verbose)

	sshMode := *server == "" && *serverKey == "" && len(*repoIDs) == 0
	if sshMode && len(*clones) == 0 {
		return fmt.Errorf("give --repo CLONE (registers over SSH), or --server, --server-key and --repo-id")
	}
	var servers []punch.Server
	if !sshMode {
		if *server == "" || *serverKey == "" {
			return fmt.Errorf("--server and --server-key go together (or give only --repo CLONE to register over SSH)")
		}
		key, err := readKey(*serverKey)
		if err != nil {
			return fmt.Errorf("--server-key: %w", err)
		}
		ua, err := net.ResolveUDPAddr("udp", *server)
		if err != nil {
			return fmt.Errorf("--server: %w", err)
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
		ap := ua.AddrPort()
		servers = []punch.Server{{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Key: key, Repos: ids}}
	}

	conn, err := udpconn.Listen(*listen, nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	index := action.NewCloneIndex(ctx, *clones)
	runner := &action.Runner{Exec: *program, Clones: *clones, CloneFor: index.For, Logger: log}
	if !*noDesktop && action.SessionBusAvailable() {
		runner.Desktop = &action.Desktop{}
		defer runner.Desktop.Close()
	}
	fixed := time.Duration(0)
	if fs.Changed("keepalive") {
		fixed = *keepalive
	}
	d, err := punch.New(punch.Config{Conn: conn, Servers: servers, StateDir: *stateDir,
		FixedKeepalive: fixed, Handle: runner.Handle, Control: punch.ControlSocket(*stateDir), Logger: log})
	if err != nil {
		return err
	}
	log.Info("daemon up", "client", d.PublicKey().String(), "udp", conn.LocalAddrPort().String(), "ssh_registration", sshMode)
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

// readKey takes 64 hex characters, or @FILE holding them.
func readKey(s string) (wire.Key, error) {
	if strings.HasPrefix(s, "@") {
		b, err := os.ReadFile(s[1:])
		if err != nil {
			return wire.Key{}, err
		}
		s = string(b)
	}
	return wire.ParseKey(s)
}
