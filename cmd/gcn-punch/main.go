// Command gcn-punch delivers git push notifications over UDP through NATs.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	flag "github.com/spf13/pflag"
)

const usage = `gcn-punch: git push notifications over UDP, through NATs

usage:
  gcn-punch rendezvous --listen HOST:PORT [--alt-listen HOST:PORT] --store DIR [--open] [--fanout K]
                   [--metrics ADDR] [--log-format FORMAT]
                   [--cluster nats://HOST:PORT[,...] [--cluster-creds FILE] [--node NAME]]
  gcn-punch hook --store DIR [--repo-id ID]         (as post-receive; reads "<old> <new> <ref>")
  gcn-punch daemon --server HOST:PORT --server-key HEX|@FILE --repo-id ID --state DIR
                   [--repo CLONE] [--exec 'PROGRAM ARGS...'] [--keepalive DURATION] [--no-peer]
                   [--refs PATTERN]... [--log-format FORMAT]
  gcn-punch daemon|rendezvous --config FILE   settings from TOML; flags win
  gcn-punch watch   (the daemon's flags)   prints each notification as a JSON line on stdout
  gcn-punch status --store DIR [--json|--stats|--tree|--cluster]   (server side)
  gcn-punch status --state DIR [--json|--stats]      (client side: a running daemon)
  gcn-punch notify --store DIR --repo-id ID [--message TEXT]   a test notification through the whole path
  gcn-punch revoke --store DIR KEY|USER         end a client's access at once (server side)
  gcn-punch unpin SERVER [--state DIR]          forget a server's pinned key (client side)
  gcn-punch install server --repo PATH [--store DIR] [--listen ADDR] [--user GITUSER]
  gcn-punch install client --repo CLONE [--exec 'PROGRAM ARGS...']
  gcn-punch uninstall server|client --repo PATH   (removes only what install added)
  gcn-punch probe [--server HOST:PORT] [--json] [--lifetime]
  gcn-punch bench [--json] [--sizes 1000,10000,100000] [--runs 3] [--doc docs/bench.md]
  gcn-punch heartbeat --repo PATH --id HEX --port N [--reflexive IP:PORT]   (store: $GCN_STORE)
  gcn-punch heartbeat watch --repo PATH     the SSH session as a stream to the rendezvous
                   (as ~/git-shell-commands/gcn-heartbeat, run by clients over SSH)
  gcn-punch version                         (also --version)

Run "gcn-punch COMMAND --help" for a command's flags, "man gcn-punch" for all of them.
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
	case "watch":
		err = runWatchCmd(ctx, args)
	case "status":
		err = runStatus(args)
	case "notify":
		err = runNotify(args)
	case "revoke":
		err = runRevoke(args)
	case "unpin":
		err = runUnpin(args)
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
	case "version", "--version":
		fmt.Println(versionString())
	default:
		fmt.Fprintf(os.Stderr, "gcn-punch: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gcn-punch %s: %s\n", cmd, errText(err))
		os.Exit(1)
	}
}

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("gcn-punch "+name, flag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() { onHelp(fs) }
	return fs
}

// parse exits 0 on --help, and 2 on a usage error, which it names on
// stderr above the command's flags.
func parse(fs *flag.FlagSet, args []string) {
	err := parseFlags(fs, args)
	if err == flag.ErrHelp {
		printHelp(fs)
		os.Exit(0)
	}
	if err != nil {
		usageFail(fs, err)
	}
}

// usageFail names a usage error on stderr above the command's flags and
// exits 2.
func usageFail(fs *flag.FlagSet, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n\nflags of %s:\n%s", fs.Name(), err, fs.Name(), flagHelp(fs))
	os.Exit(2)
}

// parseOne is parse for a command that takes one argument besides its
// flags (what names it); it exits 2 without exactly one.
func parseOne(fs *flag.FlagSet, args []string, what string) string {
	err := fs.Parse(args)
	if err == flag.ErrHelp {
		printHelp(fs)
		os.Exit(0)
	}
	if err == nil && fs.NArg() != 1 {
		err = fmt.Errorf("give %s", what)
	}
	if err != nil {
		usageFail(fs, err)
	}
	return fs.Arg(0)
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
