package bench

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Targets are the goals the figures are read against; they are never
// asserted in tests.
var Targets = struct {
	FanOutMillis100k, RSSBytes, P50Millis, P99Millis, KeepaliveCPUPercent100k, TreeCPURatio, TreeFloorRatio float64
}{1000, 1024, 5, 20, 5, 0.25, 2}

func (s Spread) fmt(unit string, prec int) string {
	return fmt.Sprintf("%.*f %s (%.*f–%.*f)", prec, s.Median, unit, prec, s.Min, prec, s.Max)
}

// count renders a whole-number spread: the median, and the range when the
// runs differ.
func (s Spread) count() string {
	if s.Min == s.Max {
		return fmt.Sprintf("%.0f", s.Median)
	}
	return fmt.Sprintf("%.0f (%.0f–%.0f)", s.Median, s.Min, s.Max)
}

// Table writes the results as Markdown tables.
func (r Results) Table(w io.Writer) {
	fmt.Fprintf(w, "Machine: %d CPUs (%s), Linux %s, %s, %s. Medians of %d runs, range in brackets.\n\n",
		r.Machine.CPUs, r.Machine.CPUModel, r.Machine.Kernel, r.Machine.GoVersion, r.Machine.Date, r.Runs)
	if r.Machine.OwnNetns {
		fmt.Fprintf(w, "Ran in its own network namespace, UDP hash table %d buckets (see below).\n\n", r.Machine.UDPHashEntries)
	} else {
		fmt.Fprintf(w, "Ran in the host's network namespace, UDP hash table %d buckets.\n\n", r.Machine.UDPHashEntries)
	}
	switch per := r.Machine.ClientsPerGenerator; {
	case per >= 100000:
		fmt.Fprintf(w, "One generator process holds 100k simulated clients here, on a thread per core.\n\n")
	case per > 0:
		fmt.Fprintf(w, "The open-file limit here cannot be raised to 100k sockets in one process: 100k simulated clients take %d generator processes of at most %d, each on one thread, and the tree's deepest members are reached later than with one process on a thread per core.\n\n", (100000+per-1)/per, per)
	}
	fmt.Fprintln(w, "### Fan-out: one push, N registered clients, until all have acked")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "All acked, here and below: from the hook's start until the rendezvous took the last client's ack")
	fmt.Fprintln(w, "(its `last_ack_unix_nano`, read once its `subscriptions_behind` is 0).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| clients | all acked | rendezvous CPU per recipient | RSS per idle client |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, f := range r.FanOut {
		fmt.Fprintf(w, "| %d | %s | %s | %s |\n", f.Clients, f.AllAckedMillis.fmt("ms", 1), f.CPUMicrosPerRecip.fmt("µs", 2), f.RSSBytesPerClient.fmt("B", 0))
	}
	fmt.Fprintln(w)
	if len(r.Trees) > 0 {
		fmt.Fprintln(w, "### Peer-to-peer fan-out: the tree against direct sending, one push")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Simulated daemons that forward as real ones do (`--peer`), each run measuring the floor, `--fanout 0`")
		fmt.Fprintln(w, "and each arity one after another; ratios are to the floor and to `--fanout 0` of the same run.")
		fmt.Fprintln(w, "Datagrams and CPU are the rendezvous's own. The floor: the same number of datagrams, sent and")
		fmt.Fprintln(w, "read as the rendezvous does, echoed by the same simulated sockets, with no protocol and no crypto.")
		fmt.Fprintln(w, "All simulated daemons share the machine's two cores, so the deepest members of a large tree are")
		fmt.Fprintln(w, "reached later than independent daemons would reach them; a member not acked by its deadline")
		fmt.Fprintln(w, "(250 ms + 150 ms per level) is served directly, which shows as direct fallbacks and more CPU.")
		fmt.Fprintln(w, "The simulated clients' CPU (every generator process together) is the work that real daemons")
		fmt.Fprintln(w, "would do on their own machines; here it shares the cores with the rendezvous, so read all acked")
		fmt.Fprintln(w, "against it.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| clients | floor: all echoed | floor sender's CPU | simulated clients' CPU |\n|---|---|---|---|")
		for _, f := range r.Floors {
			fmt.Fprintf(w, "| %d | %s | %s | %s |\n", f.Clients, f.AllEchoedMillis.fmt("ms", 1), f.CPUMillis.fmt("ms", 1), f.SimCPUMillis.fmt("ms", 1))
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| clients | --fanout | all acked | ÷ floor | rendezvous CPU per push | ÷ direct | simulated clients' CPU | datagrams out | datagrams in | direct fallbacks |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
		for _, t := range r.Trees {
			fmt.Fprintf(w, "| %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", t.Clients, t.Fanout, t.AllAckedMillis.fmt("ms", 1), t.FloorRatio.fmt("×", 2),
				t.CPUMillis.fmt("ms", 1), t.CPURatio.fmt("×", 2), t.SimCPUMillis.fmt("ms", 1), t.DatagramsOut.count(), t.DatagramsIn.count(), t.DirectFallbacks.count())
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "### Latency: hook start → `--exec` start, %d pushes, one daemon, loopback\n\n", r.Latency.Pushes)
	fmt.Fprintln(w, "| p50 | p99 |\n|---|---|")
	fmt.Fprintf(w, "| %s | %s |\n\n", r.Latency.P50Millis.fmt("ms", 2), r.Latency.P99Millis.fmt("ms", 2))
	fmt.Fprintln(w, "### Keepalive load: rendezvous CPU while every client keeps alive every 25 s")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Each simulated client sends what the daemon sends: quiet keepalives, asking for a pong at least")
	fmt.Fprintln(w, "every 2 minutes (one keepalive in five), in steady state (the clients' cycles spread evenly).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| clients | window | CPU, % of one core |\n|---|---|---|")
	for _, k := range r.Keepalive {
		fmt.Fprintf(w, "| %d | %.0f s | %s |\n", k.Clients, k.WindowSec, k.CPUPercentCore.fmt("%", 2))
	}
	fmt.Fprintln(w)
	p := r.Polling
	fmt.Fprintln(w, "### Baseline: `git fetch` every 60 s (what users run today)")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Expected latency %.0f s on average, %.0f s at worst. One fetch of one new commit costs %s of CPU\n", p.MeanLatencySec, p.WorstLatencySec, p.CPUMillisPerFetch.fmt("ms", 1))
	fmt.Fprintf(w, "(client and git-upload-pack together, %d real fetches; an upper bound on the server's share).\n\n", p.Sample)
	fmt.Fprintln(w, "| clients | polling: server CPU per minute | gcn-punch keepalives: server CPU per minute |\n|---|---|---|")
	ns := make([]int, 0, len(p.CPUSecPerMinutePerN))
	for n := range p.CPUSecPerMinutePerN {
		ns = append(ns, n)
	}
	sort.Ints(ns)
	for _, n := range ns {
		ka := "not measured"
		for _, k := range r.Keepalive {
			if k.Clients == n {
				ka = fmt.Sprintf("%.2f s", k.CPUPercentCore.Median/100*60)
			}
		}
		fmt.Fprintf(w, "| %d | %.1f s | %s |\n", n, p.CPUSecPerMinutePerN[n], ka)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "### Against the targets")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| measure | target | measured |\n|---|---|---|")
	for _, f := range r.FanOut {
		if f.Clients == 100000 {
			fmt.Fprintf(w, "| fan-out, 100k recipients all acked | ≤ %.0f ms | %.1f ms |\n", Targets.FanOutMillis100k, f.AllAckedMillis.Median)
		}
	}
	var rss []string
	for _, f := range r.FanOut {
		rss = append(rss, fmt.Sprintf("%.0f B at %d", f.RSSBytesPerClient.Median, f.Clients))
	}
	fmt.Fprintf(w, "| rendezvous RSS per idle client | ≤ %.0f B | %s |\n", Targets.RSSBytes, strings.Join(rss, ", "))
	fmt.Fprintf(w, "| latency hook → exec | p50 ≤ %.0f ms, p99 ≤ %.0f ms | p50 %.2f ms, p99 %.2f ms |\n", Targets.P50Millis, Targets.P99Millis, r.Latency.P50Millis.Median, r.Latency.P99Millis.Median)
	for _, t := range r.Trees {
		if t.Fanout == 0 {
			continue
		}
		fmt.Fprintf(w, "| tree (--fanout %d), %d clients: rendezvous CPU per push | ≤ %.2f× direct | %.2f× |\n", t.Fanout, t.Clients, Targets.TreeCPURatio, t.CPURatio.Median)
		if t.Clients == 100000 {
			fmt.Fprintf(w, "| tree (--fanout %d), 100k clients all acked | ≤ %.0f ms, ≤ %.0f× floor | %.1f ms, %.2f× |\n", t.Fanout, Targets.FanOutMillis100k, Targets.TreeFloorRatio, t.AllAckedMillis.Median, t.FloorRatio.Median)
		}
	}
	for _, k := range r.Keepalive {
		if k.Clients == 100000 {
			fmt.Fprintf(w, "| keepalives from 100k clients | ≤ %.0f%% of one core | %.2f%% |\n", Targets.KeepaliveCPUPercent100k, k.CPUPercentCore.Median)
		}
	}
}

// Doc renders docs/bench.md.
func (r Results) Doc() string {
	var b strings.Builder
	b.WriteString("# Benchmarks\n\nWritten by `make bench` (`gcn-punch bench`). The real `gcn-punch rendezvous` runs in its own\n")
	b.WriteString("process; load-generator processes simulate the clients, each with its own key and UDP socket, speaking\n")
	b.WriteString("the real client protocol and acking; every push goes through the real hook. CPU time is read from\n")
	b.WriteString("each process's CPU clock (all its threads, to the nanosecond), RSS from `/proc/PID/status` of the\n")
	b.WriteString("rendezvous. The generators share the machine's two cores with the rendezvous, so fan-out times\n")
	b.WriteString("include their work too. RSS per client at small N is mostly the heap's fixed growth, shared by all\n")
	b.WriteString("clients.\n\n")
	b.WriteString("As root, the bench runs in a network namespace of its own whose UDP hash table is sized for the\n")
	b.WriteString("simulation (`net.ipv4.udp_child_hash_entries`, 65536 buckets; `--host-netns` runs it in place).\n")
	b.WriteString("The 100k simulated clients are 100k sockets on one host, and each datagram delivered on loopback\n")
	b.WriteString("looks its socket up in that table; with the host's table (sized at boot from the RAM: 16384 buckets\n")
	b.WriteString("here) the lookups walk chains of about six sockets, the largest single item (17%) in the\n")
	b.WriteString("rendezvous's profile of a 100k fan-out. In production the rendezvous's host holds one socket.\n\n")
	r.Table(&b)
	return b.String()
}
