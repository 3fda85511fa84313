// Command gcn-punch delivers git push notifications over UDP through NATs.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	flag "github.com/spf13/pflag"

	"github.com/gitchat/gcn-punch/hook"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/punch/action"
	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

const usage = `gcn-punch: git push notifications over UDP, through NATs

usage:
  gcn-punch rendezvous --listen HOST:PORT [--alt-listen HOST:PORT] --store DIR [--open]
  gcn-punch hook --store DIR [--repo-id ID]         (as post-receive; reads "<old> <new> <ref>")
  gcn-punch daemon --server HOST:PORT --server-key HEX|@FILE --repo-id ID --state DIR
                   [--repo CLONE] [--exec PROGRAM] [--keepalive DURATION]
  gcn-punch status --store DIR [--json]

Run "gcn-punch COMMAND --help" for a command's flags.
`

func main() {
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

// parse exits 2 on a usage error, 0 on --help.
func parse(fs *flag.FlagSet, args []string) {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		os.Exit(2)
	}
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
	parse(fs, args)
	o.Logger = logger(*verbose)
	return rendezvous.ListenAndServe(ctx, o)
}

func runHook(args []string) {
	fs := newFlags("hook")
	o := hook.Options{Stdin: os.Stdin, Stderr: os.Stderr}
	fs.StringVar(&o.StoreDir, "store", store.DefaultDir, "store directory")
	fs.StringVar(&o.RepoID, "repo-id", "", "repository id (default: git config gcnpunch.repoid, else the directory name)")
	parse(fs, args)
	if _, err := hook.Run(o); err != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch hook: %v (the push itself succeeded)\n", err)
	}
}

func runStatus(args []string) error {
	fs := newFlags("status")
	dir := fs.String("store", store.DefaultDir, "store directory")
	asJSON := fs.Bool("json", false, "print JSON")
	parse(fs, args)
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
	keepalive := fs.Duration("keepalive", punch.DefaultKeepalive, "keepalive interval")
	listen := fs.String("listen", ":0", "local UDP address")
	noDesktop := fs.Bool("no-desktop", false, "no desktop notifications even when a session bus exists")
	verbose := fs.BoolP("verbose", "v", false, "debug logging")
	parse(fs, args)
	log := logger(*verbose)

	if *server == "" || *serverKey == "" {
		return fmt.Errorf("--server and --server-key are required")
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
	if len(ids) == 0 {
		for _, c := range *clones {
			id, err := action.OriginRepoID(ctx, c)
			if err != nil {
				return fmt.Errorf("--repo: %w (or give --repo-id)", err)
			}
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return fmt.Errorf("--repo-id is required")
	}
	conn, err := net.ListenPacket("udp", *listen)
	if err != nil {
		return err
	}
	defer conn.Close()
	runner := &action.Runner{Exec: *program, Clones: *clones, CloneFor: action.ClonesByRepo(ctx, *clones), Logger: log}
	if !*noDesktop && action.SessionBusAvailable() {
		runner.Desktop = &action.Desktop{}
		defer runner.Desktop.Close()
	}
	ap := ua.AddrPort()
	d, err := punch.New(punch.Config{
		Conn:      conn,
		Servers:   []punch.Server{{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Key: key, Repos: ids}},
		StateDir:  *stateDir,
		Keepalive: *keepalive,
		Handle:    runner.Handle,
		Logger:    log,
	})
	if err != nil {
		return err
	}
	log.Info("daemon up", "client", d.PublicKey().String(), "udp", conn.LocalAddr().String(), "server", *server, "repos", ids)
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
