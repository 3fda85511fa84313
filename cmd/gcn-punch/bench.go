package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/bench"
	"github.com/gitchat/gcn-punch/wire"
)

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
	sizes := fs.IntSlice("sizes", []int{1000, 10000, 100000}, "fan-out sizes (clients; 0: none)")
	kaSizes := fs.IntSlice("keepalive-sizes", []int{10000, 100000}, "keepalive-load sizes (clients; 0: none)")
	fs.IntVar(&o.Runs, "runs", 3, "runs of each measurement; figures are medians with their range")
	fs.DurationVar(&o.Window, "window", 30*time.Second, "keepalive-load measuring window")
	fs.IntVar(&o.LatencyPushes, "pushes", 200, "pushes for the latency measurement (0: skip it)")
	fs.IntVar(&o.PollSample, "poll-sample", 30, "real git fetches for the polling baseline (0: skip it)")
	treeSizes := fs.IntSlice("tree-sizes", []int{10000, 100000}, "sizes of the fan-out tree comparison (clients; 0: none)")
	fanouts := fs.IntSlice("fanouts", []int{rendezvous.DefaultFanout}, "tree arities compared with --fanout 0")
	fs.StringVar(&o.ProfileDir, "profile-dir", "", "write a CPU profile of each rendezvous measured into this directory")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	doc := fs.String("doc", "", "also write the Markdown report here (e.g. docs/bench.md)")
	hostNetns := fs.Bool("host-netns", false, "run in the current network namespace (default as root: a namespace of its own, with a UDP hash table sized for the simulated clients)")
	parse(fs, args)
	if o.Window < 5*time.Second || o.Window > time.Hour {
		usageFail(fs, fmt.Errorf("--window %v: give 5s to 1h (a shorter window measures mostly noise)", o.Window))
	}
	if !*hostNetns && !bench.InOwnNetns() && os.Geteuid() == 0 {
		code, err := bench.RunInOwnNetns(os.Args)
		if err == nil {
			os.Exit(code)
		}
		fmt.Fprintf(os.Stderr, "gcn-punch bench: cannot run in a network namespace of its own (%v); running here\n", err)
	}
	o.Sizes, o.KeepaliveAt, o.TreeSizes, o.Fanouts = positive(*sizes), positive(*kaSizes), positive(*treeSizes), positive(*fanouts)
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

// positive drops the zeros (and negatives) of a list of sizes: "--sizes 0"
// measures none.
func positive(xs []int) []int {
	var out []int
	for _, x := range xs {
		if x > 0 {
			out = append(out, x)
		}
	}
	return out
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
	fs.BoolVar(&o.Peer, "peer", false, "take part in fan-out trees, forwarding as daemons do")
	fs.BoolVar(&o.Echo, "echo", false, "echo for the floor measurement: no protocol, no crypto")
	fs.IntVar(&o.RegisterRate, "register-rate", 0, "registrations a second at most (0: as fast as answered)")
	fs.IntVar(&o.Workers, "workers", 1, "threads serving the clients' sockets")
	parse(fs, args)
	if o.Workers < 1 || o.Workers > 64 {
		usageFail(fs, fmt.Errorf("--workers %d: give 1 to 64", o.Workers))
	}
	if o.Keepalive != 0 && (o.Keepalive < time.Second || o.Keepalive > punch.MaxKeepalive) {
		usageFail(fs, fmt.Errorf("--keepalive %v: give 0 (none) or 1s to %v", o.Keepalive, punch.MaxKeepalive))
	}
	var err error
	if o.Server, err = netip.ParseAddrPort(*server); err != nil {
		return err
	}
	if o.ServerKey, err = wire.ParseKey(*key); err != nil && !o.Echo {
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
