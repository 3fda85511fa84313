package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/gitchat/gcn-punch/hook"
	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/internal/install"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

func runRendezvous(ctx context.Context, args []string) error {
	fs := newFlags("rendezvous")
	o := rendezvous.Options{}
	fs.StringVar(&o.Listen, "listen", ":3478", "UDP address for STUN, keepalives and notifications")
	fs.StringVar(&o.AltListen, "alt-listen", "", "second UDP address (RFC 5780 NAT discovery)")
	fs.StringVar(&o.StoreDir, "store", store.DefaultDir, "store directory")
	fs.BoolVar(&o.Open, "open", false, "serve any client key for any repository (public repositories, demos)")
	fs.IntVar(&o.Fanout, "fanout", rendezvous.DefaultFanout, "arity of each repository's peer-to-peer tree; 0: the rendezvous sends to every client itself")
	fs.Float64Var(&o.NewKeyRate, "new-key-rate", 4000, "keys not seen before that may cost a key computation each second; past it, new keys must echo a cookie")
	fs.IntVar(&o.MaxStreams, "max-streams", rendezvous.DefaultMaxStreams, "streams over SSH (clients whose UDP is blocked) accepted at once; each costs an sshd process")
	fs.StringVar(&o.Cluster.URLs, "cluster", "", "join a cluster of rendezvous nodes through NATS JetStream: nats://HOST:PORT[,nats://...] (default none: one node, as ever)")
	fs.StringVar(&o.Cluster.Creds, "cluster-creds", "", "NATS credentials file for --cluster")
	fs.StringVar(&o.Cluster.User, "cluster-user", "", "NATS user (with --cluster-password) or token for --cluster")
	fs.StringVar(&o.Cluster.Password, "cluster-password", "", "NATS password for --cluster-user")
	fs.StringVar(&o.Cluster.Name, "node", "", "this node's name in the cluster (default: the host name)")
	fs.StringVar(&o.Advertise, "advertise", "", "the IP:PORT (one per family, comma-separated) at which clients reach this node, told to them for failover (default: the --listen addresses that name a host)")
	fs.StringVar(&o.Metrics, "metrics", "", "serve the counters as Prometheus text at http://ADDR/metrics (e.g. 127.0.0.1:9478; default off)")
	logs := addLogFlags(fs)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile here until exit (for go tool pprof)")
	config := configFlag(fs, rendezvousConfigPath)
	parse(fs, args)
	if err := applyConfig(fs, *config); err != nil {
		return err
	}
	o.Logger = logs.logger(fs)
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
	o.Version = shortVersion()
	err := rendezvous.ListenAndServe(ctx, o)
	logStopped(o.Logger, "rendezvous", err)
	return err
}

func runHook(args []string) {
	fs := newFlags("hook")
	o := hook.Options{Stdin: os.Stdin, Stderr: os.Stderr}
	fs.StringVar(&o.StoreDir, "store", store.DefaultDir, "store directory")
	fs.StringVar(&o.RepoID, "repo-id", "", "repository id (default: git config gcnpunch.repoid, else the directory name)")
	fs.DurationVar(&o.MessageBudget, "message-time", hook.DefaultMessageBudget, "time allowed for reading a push's chat messages from git (10ms to 1s; on a slow or loaded server, raise it)")
	// A hook that fails would fail the push: a usage error is one line on
	// stderr and exit 0, like every other hook problem.
	if err := parseFlags(fs, args); err == flag.ErrHelp {
		printHelp(fs)
		return
	} else if err != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch hook: %v; nothing recorded (the push itself succeeded)\n", err)
		return
	}
	if o.MessageBudget < 10*time.Millisecond || o.MessageBudget > time.Second {
		fmt.Fprintf(os.Stderr, "gcn-punch hook: --message-time %v: give 10ms to 1s; nothing recorded (the push itself succeeded)\n", o.MessageBudget)
		return
	}
	if _, err := hook.Run(o); err != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch hook: %v (the push itself succeeded)\n", err)
	}
}

// notifyRef is the ref a test notification names: under refs/gcn-punch/,
// which no branch tracks, so a daemon's fast-forward only fetches.
const notifyRef = "refs/gcn-punch/test"

// runNotify sends a test notification through the whole path, as a push
// would: recorded in the repository's log with the next sequence number,
// handed to the rendezvous, delivered to every follower, acked. An admin
// checks a setup with it without pushing.
func runNotify(args []string) error {
	fs := newFlags("notify")
	storeDir := fs.String("store", store.DefaultDir, "store directory")
	repoID := fs.String("repo-id", "", "repository id whose followers get the notification")
	message := fs.String("message", "test notification", "the text followers see (as a commit's subject, from \"gcn-punch notify\")")
	parse(fs, args)
	if *repoID == "" {
		usageFail(fs, errors.New("--repo-id is required"))
	}
	st, err := store.OpenExisting(*storeDir)
	if err != nil {
		return err
	}
	served, _ := st.Served()
	logs, _ := st.Repos()
	if _, ok := served[*repoID]; !ok && !slices.Contains(logs, *repoID) {
		known := slices.Sorted(maps.Keys(served))
		for _, id := range logs {
			if _, ok := served[id]; !ok {
				known = append(known, id)
			}
		}
		if len(known) == 0 {
			return fmt.Errorf("the store at %s serves no repository yet: `gcn-punch install server --repo PATH` serves one", st.Dir)
		}
		return fmt.Errorf("the store at %s serves no repository %q and has no log for it: give one of %s", st.Dir, *repoID, strings.Join(known, ", "))
	}
	zero := strings.Repeat("0", 40)
	var stderr strings.Builder
	res, err := hook.Run(hook.Options{StoreDir: st.Dir, RepoID: *repoID, Stderr: &stderr,
		Stdin:   strings.NewReader(zero + " " + zero + " " + notifyRef + "\n"),
		Message: &wire.Chat{Author: "gcn-punch notify", Subject: wire.TrimText(*message, wire.MaxSubject)}})
	if err != nil {
		return err
	}
	if len(res.Events) == 0 {
		return fmt.Errorf("nothing recorded: %s", strings.TrimSpace(stderr.String()))
	}
	seq := res.Events[0].Seq
	if !res.Poked {
		// The check failed: say so with exit 1, though the event is
		// recorded and, as a push's would be, sent directly.
		return fmt.Errorf("recorded %s seq %d (%s), but no rendezvous runs on %s (sent directly to %d recent clients as a best effort): start it (systemctl start gcn-punch-rendezvous), and its clients get the notification then",
			*repoID, seq, notifyRef, st.Dir, res.Direct)
	}
	fmt.Printf("notified %s: seq %d (%s), handed to the rendezvous; `gcn-punch status --store %s` shows who acked it\n", *repoID, seq, notifyRef, st.Dir)
	return nil
}

// runRevoke ends clients' access at once: KEY (64 hex) or USER (every
// client that account registered). Their authorisations and records leave
// the store, and the running rendezvous drops them from memory.
func runRevoke(args []string) error {
	fs := newFlags("revoke")
	storeDir := fs.String("store", store.DefaultDir, "store directory")
	who := parseOne(fs, args, "one client key (64 hex characters) or SSH user: gcn-punch revoke --store DIR KEY|USER")
	st, err := store.OpenExisting(*storeDir)
	if err != nil {
		return err
	}
	var keys []wire.Key
	if k, err := wire.ParseKey(who); err == nil && len(who) == 64 {
		keys = []wire.Key{k}
	} else if keys, err = st.ClientsOf(who); err != nil {
		return err
	}
	if len(keys) == 0 {
		return fmt.Errorf("no client registered by %q: `gcn-punch status --store %s` shows each client's key and SSH user", who, st.Dir)
	}
	for _, k := range keys {
		owner := st.Owner(k)
		repos, err := st.Revoke(k)
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
		live := "the rendezvous is not running: it refuses the client when it starts"
		if reply, err := control.Dial(st.SocketPath(), "revoke "+k.String(), 2*time.Second); err == nil {
			switch reply {
			case "ok dropped\n":
				live = "the running rendezvous dropped it at once"
			case "ok not live\n":
				live = "it was not connected; the rendezvous refuses it from now on"
			}
		}
		if owner == "" {
			owner = "owner unknown"
		}
		from := "no authorisation on record"
		if len(repos) > 0 {
			from = "from " + strings.Join(repos, ", ")
		}
		fmt.Printf("revoked %s (%s), %s: %s\n", k, owner, from, live)
	}
	if st.Mode() == store.ModeOpen {
		// Under --open any key may follow any repository: the client is
		// dropped, and back at its next keepalive.
		fmt.Println("This rendezvous runs with --open, where any key may follow: the client is back at its next keepalive. Revocation keeps a client out only without --open.")
		return nil
	}
	fmt.Println("A revoked client can register again while its SSH key may log in: remove that key from the git account's authorized_keys too.")
	return nil
}

// runHeartbeat registers a client over SSH. Every refusal is one line on
// stderr and exit status 1; the store is then unchanged.
func runHeartbeat(args []string) int {
	if len(args) > 0 && args[0] == "watch" {
		return runWatch(args[1:])
	}
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
	fs.StringVar(&req.Proof, "proof", "", "proof of holding the client key (wire.HeartbeatProof); without it an existing record is kept")
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "gcn-heartbeat: %s\n", strings.ReplaceAll(strings.TrimPrefix(err.Error(), "gcn-heartbeat: "), "\n", " "))
		return 1
	}
	if err := fs.Parse(args); err == flag.ErrHelp {
		fmt.Printf("usage: gcn-heartbeat --repo PATH --id HEX --port N [--reflexive IP:PORT] [--proof P]\n       gcn-heartbeat watch --repo PATH\n\n%s", flagHelp(fs))
		return 0
	} else if err != nil {
		return fail(err)
	}
	if fs.NArg() > 0 {
		return fail(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	// Opened without creating anything: a refusal leaves the store as it was.
	st, err := store.OpenExisting(storeDir)
	if err != nil {
		return fail(err)
	}
	home, _ := os.UserHomeDir()
	req.Owner = rendezvous.SSHOwner()
	reply, err := rendezvous.Heartbeat(st, req, os.Getenv("SSH_CONNECTION"), home, time.Now())
	if err != nil {
		return fail(err)
	}
	fmt.Print(reply.String())
	return 0
}

// runWatch is `gcn-heartbeat watch --repo PATH`: the SSH session becomes a
// stream to the rendezvous (rendezvous.Watch).
func runWatch(args []string) int {
	fs := newFlags("heartbeat watch")
	fs.SetOutput(io.Discard)
	repo := fs.String("repo", "", "repository path, as in the clone's URL")
	storeDir := store.DefaultDir
	if d := os.Getenv("GCN_STORE"); d != "" {
		storeDir = d
	}
	err := fs.Parse(args)
	if err == flag.ErrHelp {
		fmt.Printf("usage: gcn-heartbeat watch --repo PATH\n\n%s", flagHelp(fs))
		return 0
	}
	if err != nil || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "gcn-heartbeat: usage: gcn-heartbeat watch --repo PATH")
		fmt.Println("error usage: gcn-heartbeat watch --repo PATH")
		return 2
	}
	home, _ := os.UserHomeDir()
	if err := rendezvous.Watch(&store.Store{Dir: storeDir}, *repo, home, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "gcn-heartbeat watch: %v\n", err)
		return 1
	}
	return 0
}

func runInstall(cmd string, args []string) error {
	if len(args) == 0 || (args[0] != "server" && args[0] != "client") {
		use := fmt.Sprintf("usage: gcn-punch %s server|client --repo PATH [flags]; \"gcn-punch %s server --help\" lists the flags\n", cmd, cmd)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Print(use)
			os.Exit(0)
		}
		if len(args) > 0 {
			fmt.Fprintf(os.Stderr, "gcn-punch %s: unknown subcommand %q (server or client)\n", cmd, args[0])
		}
		fmt.Fprintf(os.Stderr, "gcn-punch %s: %s", cmd, use)
		os.Exit(2)
	}
	side := args[0]
	fs := newFlags(cmd + " " + side)
	repo := fs.String("repo", "", "repository (server) or clone (client)")
	// Each side and verb shows only the flags it uses: uninstall needs to
	// know where things are, not how they would be made.
	installing := cmd == "install"
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	binary := &bin
	if installing {
		binary = fs.String("binary", bin, "path of gcn-punch that units and hooks run (default: this program's own path)")
	}
	var srv install.ServerInstall
	var cli install.ClientInstall
	printUnit := false
	if side == "server" {
		fs.StringVar(&srv.Store, "store", store.DefaultDir, "store directory")
		fs.StringVar(&srv.User, "user", "", "the git user (required as root)")
		if installing {
			fs.StringVar(&srv.Listen, "listen", ":3478", "UDP address for the rendezvous unit")
			fs.StringVar(&srv.RepoID, "repo-id", "", "repository id (default: git config gcnpunch.repoid, else the directory name)")
		}
		fs.StringVar(&srv.UnitPath, "unit", install.UnitPath, "where root writes the rendezvous's systemd unit")
		if installing {
			fs.BoolVar(&printUnit, "print-unit", false, "print the rendezvous's systemd unit for --user, --store, --listen, --binary; change nothing")
		}
	} else if installing {
		fs.StringVar(&cli.Exec, "exec", "", "command the daemon runs on each notification: a program and its arguments, quoted as in systemd's ExecStart (no shell)")
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
		if cli.Exec != "" {
			// The daemon would refuse it at every start, and the unit
			// restart it every 10 s: refuse it here, with the reason.
			if _, err := execCommand(cli.Exec); err != nil {
				return err
			}
		}
		return cli.Install()
	}
	return cli.Uninstall()
}

func runStatus(args []string) error {
	fs := newFlags("status")
	dir := fs.String("store", store.DefaultDir, "store directory (the server side)")
	stateDir := fs.String("state", "", "a daemon's state directory: the client side (used without either flag when there is no store at the default place but a daemon's state is, as on a client)")
	asJSON := fs.Bool("json", false, "print JSON")
	stats := fs.Bool("stats", false, "print the running rendezvous's (or with --state, daemon's) counters as JSON")
	tree := fs.Bool("tree", false, "print each repository's peer-to-peer tree as the running rendezvous has it")
	clusterView := fs.Bool("cluster", false, "print the cluster (--cluster): the events stream, and each node with its clients")
	parse(fs, args)
	if *stateDir == "" && !fs.Changed("store") && !*tree && !*clusterView {
		// Plain `gcn-punch status` on a client, where there is no store
		// but a daemon's state: show the daemon, as tailscale status does.
		if _, err := store.OpenExisting(*dir); errors.Is(err, store.ErrNoStore) {
			if _, serr := os.Stat(defaultStateDir()); serr != nil {
				return fmt.Errorf("%w; on a client, give a daemon's state directory: gcn-punch status --state DIR (there is none at %s)", err, defaultStateDir())
			}
			*stateDir = defaultStateDir()
		}
	}
	if *stateDir != "" {
		if *stats {
			return punch.WriteStats(os.Stdout, *stateDir)
		}
		return punch.WriteStatus(os.Stdout, *stateDir, *asJSON)
	}
	if *stats {
		return rendezvous.WriteStats(os.Stdout, *dir)
	}
	if *tree {
		return rendezvous.WriteTrees(os.Stdout, *dir, *asJSON)
	}
	if *clusterView {
		return rendezvous.WriteCluster(os.Stdout, *dir, *asJSON)
	}
	return rendezvous.WriteStatus(os.Stdout, *dir, *asJSON)
}
