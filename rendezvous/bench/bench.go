package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"syscall"
	"time"
)

// Options configure `gcn-punch bench`.
type Options struct {
	Binary        string        // the gcn-punch binary to measure
	Sizes         []int         // fan-out sizes, e.g. 1000, 10000, 100000
	KeepaliveAt   []int         // keepalive-load sizes, e.g. 10000, 100000
	Runs          int           // repetitions; figures are medians with the spread
	Window        time.Duration // keepalive-load measuring window
	LatencyPushes int           // pushes for the latency measurement
	PollSample    int           // real git fetches for the polling baseline
	TreeSizes     []int         // sizes of the fan-out tree comparison, e.g. 10000, 100000
	Fanouts       []int         // tree arities compared with direct sending (--fanout 0)
	Progress      io.Writer     // progress lines
	// ProfileDir, when set, gets a CPU profile of each rendezvous measured
	// (rendezvous-<fanout>-<n>.prof, for `go tool pprof`).
	ProfileDir string
}

// perGenerator keeps each generator under the 20 000 open files a process
// may have here when the limit cannot be raised.
const perGenerator = 15000

// clientsPerGenerator is how many clients one generator process simulates:
// all of them when the open-file limit can be raised to fit (root may), so
// that the generators' own scheduling costs as little as possible on the
// machine the rendezvous is measured on; else perGenerator.
func clientsPerGenerator(n int) int {
	need := uint64(n) + 256 // the sockets, plus the process's own files
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return perGenerator
	}
	if lim.Cur >= need {
		return n
	}
	want := syscall.Rlimit{Cur: need, Max: max(lim.Max, need)}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) != nil {
		return min(n, perGenerator)
	}
	return n // the children inherit the raised limit
}

// Spread is a median with its range over the runs.
type Spread struct {
	Median, Min, Max float64
}

func spread(xs []float64) Spread {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return Spread{}
	}
	return Spread{Median: s[len(s)/2], Min: s[0], Max: s[len(s)-1]}
}

// FanOut is one size's fan-out figures.
type FanOut struct {
	Clients           int    `json:"clients"`
	AllAckedMillis    Spread `json:"all_acked_ms"`
	CPUMicrosPerRecip Spread `json:"cpu_us_per_recipient"`
	RSSBytesPerClient Spread `json:"rss_bytes_per_idle_client"`
}

// Latency is hook start → --exec start.
type Latency struct {
	Pushes    int    `json:"pushes"`
	P50Millis Spread `json:"p50_ms"`
	P99Millis Spread `json:"p99_ms"`
}

// KeepaliveLoad is the rendezvous's CPU while clients keep alive.
type KeepaliveLoad struct {
	Clients        int     `json:"clients"`
	IntervalSec    float64 `json:"interval_s"`
	WindowSec      float64 `json:"window_s"`
	CPUPercentCore Spread  `json:"cpu_percent_of_one_core"`
}

// Polling is the baseline users run today: git fetch every 60 s.
type Polling struct {
	IntervalSec         float64         `json:"interval_s"`
	MeanLatencySec      float64         `json:"expected_mean_latency_s"`
	WorstLatencySec     float64         `json:"worst_latency_s"`
	CPUMillisPerFetch   Spread          `json:"cpu_ms_per_fetch"`
	Sample              int             `json:"sample_fetches"`
	CPUSecPerMinutePerN map[int]float64 `json:"server_cpu_s_per_minute"`
}

// Machine says where the figures were measured.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Date      string `json:"date"`
	// UDPHashEntries is the UDP socket hash table's size where the bench
	// ran; OwnNetns says it ran in a namespace of its own (see netns.go).
	UDPHashEntries int  `json:"udp_hash_entries"`
	OwnNetns       bool `json:"own_netns"`
	// ClientsPerGenerator is how many of 100k simulated clients one
	// generator process held here: all of them when the open-file limit
	// could be raised that far (then on a thread per core), else
	// perGenerator, each process on one thread. The tree's timings depend
	// on it.
	ClientsPerGenerator int `json:"clients_per_generator"`
}

// TreeRun is one arity's figures in the tree comparison: what one push to
// Clients simulated daemons cost the rendezvous with --fanout Fanout (0:
// it sends to every client itself). Ratios are to figures of the same run.
type TreeRun struct {
	Clients        int    `json:"clients"`
	Fanout         int    `json:"fanout"`
	AllAckedMillis Spread `json:"all_acked_ms"`
	FloorRatio     Spread `json:"all_acked_over_floor"`
	CPUMillis      Spread `json:"cpu_ms_per_push"`
	CPURatio       Spread `json:"cpu_over_direct"` // to --fanout 0 in the same run
	// SimCPUMillis is the simulated clients' CPU for the push, every
	// generator process together: the work that real daemons do on their
	// own machines, and that here shares the cores with the rendezvous.
	SimCPUMillis    Spread `json:"simulated_clients_cpu_ms"`
	DatagramsOut    Spread `json:"datagrams_out_per_push"`
	DatagramsIn     Spread `json:"datagrams_in_per_push"`
	DirectFallbacks Spread `json:"direct_fallbacks"`
}

// Floor is the same number of datagrams with no protocol and no crypto
// (see floor.go).
type Floor struct {
	Clients         int    `json:"clients"`
	AllEchoedMillis Spread `json:"all_echoed_ms"`
	CPUMillis       Spread `json:"sender_cpu_ms"`
	SimCPUMillis    Spread `json:"simulated_clients_cpu_ms"`
}

// Results is everything `gcn-punch bench --json` prints.
type Results struct {
	Machine   Machine         `json:"machine"`
	Runs      int             `json:"runs"`
	FanOut    []FanOut        `json:"fan_out"`
	Floors    []Floor         `json:"floor,omitempty"`
	Trees     []TreeRun       `json:"tree,omitempty"`
	Latency   Latency         `json:"latency"`
	Keepalive []KeepaliveLoad `json:"keepalive_load"`
	Polling   Polling         `json:"polling_baseline"`
}

func (o *Options) progress(format string, a ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", a...)
	}
}

// Run measures everything.
func Run(ctx context.Context, o Options) (Results, error) {
	r := Results{Machine: machine(), Runs: o.Runs}
	if o.ProfileDir != "" {
		if err := os.MkdirAll(o.ProfileDir, 0o755); err != nil {
			return r, fmt.Errorf("--profile-dir: %w", err)
		}
	}
	for _, n := range o.Sizes {
		var ms, cpu, rss []float64
		for run := 0; run < o.Runs; run++ {
			f, err := pushOnce(ctx, o, n, 0)
			if err != nil {
				return r, fmt.Errorf("fan-out %d: %w", n, err)
			}
			perRecip := 1000 * f.CPUMs / float64(n)
			o.progress("fan-out %d, run %d: all acked in %.1f ms, %.2f µs CPU per recipient, %.0f B RSS per client", n, run+1, f.AllAckedMs, perRecip, f.RSSPerClient)
			ms, cpu, rss = append(ms, f.AllAckedMs), append(cpu, perRecip), append(rss, f.RSSPerClient)
		}
		r.FanOut = append(r.FanOut, FanOut{Clients: n, AllAckedMillis: spread(ms), CPUMicrosPerRecip: spread(cpu), RSSBytesPerClient: spread(rss)})
	}
	for _, n := range o.TreeSizes {
		fl, trees, err := treeComparison(ctx, o, n)
		if err != nil {
			return r, fmt.Errorf("tree comparison at %d: %w", n, err)
		}
		r.Floors = append(r.Floors, fl)
		r.Trees = append(r.Trees, trees...)
	}
	var p50s, p99s []float64
	for run := 0; run < o.Runs && o.LatencyPushes > 0; run++ {
		p50, p99, err := latencyOnce(ctx, o)
		if err != nil {
			return r, fmt.Errorf("latency: %w", err)
		}
		o.progress("latency, run %d: p50 %.2f ms, p99 %.2f ms", run+1, p50, p99)
		p50s, p99s = append(p50s, p50), append(p99s, p99)
	}
	if o.LatencyPushes > 0 {
		r.Latency = Latency{Pushes: o.LatencyPushes, P50Millis: spread(p50s), P99Millis: spread(p99s)}
	}
	for _, n := range o.KeepaliveAt {
		var pct []float64
		for run := 0; run < o.Runs; run++ {
			p, err := keepaliveOnce(ctx, o, n)
			if err != nil {
				return r, fmt.Errorf("keepalive load %d: %w", n, err)
			}
			o.progress("keepalives from %d clients, run %d: %.2f%% of one core", n, run+1, p)
			pct = append(pct, p)
		}
		r.Keepalive = append(r.Keepalive, KeepaliveLoad{Clients: n, IntervalSec: 25, WindowSec: o.Window.Seconds(), CPUPercentCore: spread(pct)})
	}
	if o.PollSample > 0 {
		p, err := pollingBaseline(ctx, o)
		if err != nil {
			return r, fmt.Errorf("polling baseline: %w", err)
		}
		r.Polling = p
	}
	return r, nil
}

// treeComparison measures, run by run, the floor, direct sending and each
// arity at n clients, so that each ratio compares figures of one run.
func treeComparison(ctx context.Context, o Options, n int) (Floor, []TreeRun, error) {
	arities := append([]int{0}, o.Fanouts...)
	var flMs, flCPU, flSim []float64
	type series struct{ ms, ratio, cpu, cpuRatio, sim, out, in, fb []float64 }
	ser := make([]series, len(arities))
	for run := 0; run < o.Runs; run++ {
		fr, err := floorOnce(ctx, o, n)
		if err != nil {
			return Floor{}, nil, err
		}
		floor := fr.Ms
		o.progress("floor %d, run %d: all echoed in %.1f ms, sender CPU %.1f ms, simulated clients' CPU %.1f ms", n, run+1, floor, fr.CPUMs, fr.SimCPUMs)
		flMs, flCPU, flSim = append(flMs, floor), append(flCPU, fr.CPUMs), append(flSim, fr.SimCPUMs)
		var direct float64
		for i, k := range arities {
			f, err := pushOnce(ctx, o, n, k)
			if err != nil {
				return Floor{}, nil, fmt.Errorf("--fanout %d: %w", k, err)
			}
			if k == 0 {
				direct = f.CPUMs
			}
			o.progress("push to %d, --fanout %d, run %d: all acked in %.1f ms (%.2f× floor), rendezvous CPU %.1f ms, simulated clients' CPU %.1f ms, datagrams out %d in %d, %d direct fallbacks",
				n, k, run+1, f.AllAckedMs, f.AllAckedMs/floor, f.CPUMs, f.SimCPUMs, f.Out, f.In, f.DirectFallbacks)
			s := &ser[i]
			s.ms, s.ratio, s.cpu = append(s.ms, f.AllAckedMs), append(s.ratio, f.AllAckedMs/floor), append(s.cpu, f.CPUMs)
			s.cpuRatio, s.sim = append(s.cpuRatio, f.CPUMs/direct), append(s.sim, f.SimCPUMs)
			s.out, s.in, s.fb = append(s.out, float64(f.Out)), append(s.in, float64(f.In)), append(s.fb, float64(f.DirectFallbacks))
		}
	}
	trees := make([]TreeRun, len(arities))
	for i, k := range arities {
		s := ser[i]
		trees[i] = TreeRun{Clients: n, Fanout: k, AllAckedMillis: spread(s.ms), FloorRatio: spread(s.ratio), CPUMillis: spread(s.cpu),
			CPURatio: spread(s.cpuRatio), SimCPUMillis: spread(s.sim), DatagramsOut: spread(s.out), DatagramsIn: spread(s.in), DirectFallbacks: spread(s.fb)}
	}
	return Floor{Clients: n, AllEchoedMillis: spread(flMs), CPUMillis: spread(flCPU), SimCPUMillis: spread(flSim)}, trees, nil
}
