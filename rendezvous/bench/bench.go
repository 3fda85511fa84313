package bench

import (
	"context"
	"fmt"
	"io"
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
	Progress      io.Writer     // progress lines
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
}

// Results is everything `gcn-punch bench --json` prints.
type Results struct {
	Machine   Machine         `json:"machine"`
	Runs      int             `json:"runs"`
	FanOut    []FanOut        `json:"fan_out"`
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
	for _, n := range o.Sizes {
		var ms, cpu, rss []float64
		for run := 0; run < o.Runs; run++ {
			f, err := fanOutOnce(ctx, o, n)
			if err != nil {
				return r, fmt.Errorf("fan-out %d: %w", n, err)
			}
			o.progress("fan-out %d, run %d: all acked in %.1f ms, %.2f µs CPU per recipient, %.0f B RSS per client", n, run+1, f[0], f[1], f[2])
			ms, cpu, rss = append(ms, f[0]), append(cpu, f[1]), append(rss, f[2])
		}
		r.FanOut = append(r.FanOut, FanOut{Clients: n, AllAckedMillis: spread(ms), CPUMicrosPerRecip: spread(cpu), RSSBytesPerClient: spread(rss)})
	}
	var p50s, p99s []float64
	for run := 0; run < o.Runs; run++ {
		p50, p99, err := latencyOnce(ctx, o)
		if err != nil {
			return r, fmt.Errorf("latency: %w", err)
		}
		o.progress("latency, run %d: p50 %.2f ms, p99 %.2f ms", run+1, p50, p99)
		p50s, p99s = append(p50s, p50), append(p99s, p99)
	}
	r.Latency = Latency{Pushes: o.LatencyPushes, P50Millis: spread(p50s), P99Millis: spread(p99s)}
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
	p, err := pollingBaseline(ctx, o)
	if err != nil {
		return r, fmt.Errorf("polling baseline: %w", err)
	}
	r.Polling = p
	return r, nil
}
