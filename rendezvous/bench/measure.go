package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous"
)

// pushRun is what one push to n registered clients cost the rendezvous.
type pushRun struct {
	AllAckedMs      float64 // hook start → the rendezvous took the last client's ack
	CPUMs           float64 // the rendezvous's CPU for the push
	SimCPUMs        float64 // the simulated clients' CPU for it, all generator processes
	RSSPerClient    float64 // bytes of the rendezvous's RSS per idle client
	In, Out         uint64  // the rendezvous's datagrams for the push
	DirectFallbacks uint64  // tree members it served directly
}

// pushOnce starts a rendezvous with --fanout k and n simulated clients
// (taking part in its trees when k > 0), and measures one push.
func pushOnce(ctx context.Context, o Options, n, k int) (pushRun, error) {
	var res pushRun
	rp, err := startRendezvous(o, k)
	if err != nil {
		return res, err
	}
	defer rp.stop()
	time.Sleep(300 * time.Millisecond)
	pid := rp.cmd.Process.Pid
	rss0, err := procRSS(pid)
	if err != nil {
		return res, err
	}
	gens, evs, _, err := startGenerators(ctx, o, rp.target(k > 0), n, 0)
	defer stopAll(gens)
	if err != nil {
		return res, err
	}
	if _, err := await(evs, "registered", 5*time.Minute); err != nil {
		return res, err
	}
	if k > 0 {
		if err := awaitTree(rp, n, 5*time.Minute); err != nil {
			return res, err
		}
	}
	waitIdle(pid)
	rss1, _ := procRSS(pid)
	st0, err := rp.stats()
	if err != nil {
		return res, err
	}
	cpu0, _ := procCPU(pid)
	sim0 := gensCPU(gens)
	t0 := time.Now()
	if err := rp.hook(o, 1); err != nil {
		return res, err
	}
	if _, err := await(evs, "notified", 2*time.Minute); err != nil {
		return res, err
	}
	// Every simulated client has the event and has sent its ack. Done when
	// the rendezvous holds every subscription at the head: the time is when
	// it took the last ack, as the floor's is when its sender read the
	// last echo.
	var cpu1, sim1 time.Duration
	var st1 rendezvous.Stats
	for i := 0; ; i++ {
		time.Sleep(200 * time.Millisecond)
		cpu1, _ = procCPU(pid)
		sim1 = gensCPU(gens)
		if st1, err = rp.stats(); err != nil {
			return res, err
		}
		if st1.SubscriptionsBehind == 0 {
			break
		}
		if i == 50 {
			return res, fmt.Errorf("%d of %d clients never acked the push", st1.SubscriptionsBehind, n)
		}
	}
	res.AllAckedMs = float64(time.Unix(0, st1.LastAckUnixNano).Sub(t0).Microseconds()) / 1000
	res.CPUMs = float64((cpu1 - cpu0).Microseconds()) / 1000
	res.SimCPUMs = float64((sim1 - sim0).Microseconds()) / 1000
	res.RSSPerClient = float64(rss1-rss0) / float64(n)
	// Less the two stats requests' own datagrams: none (a Unix socket).
	res.In, res.Out = st1.DatagramsIn-st0.DatagramsIn, st1.DatagramsOut-st0.DatagramsOut
	res.DirectFallbacks = st1.DirectFallbacks - st0.DirectFallbacks
	return res, nil
}

// awaitTree waits until all n clients are in the tree, every edge made so
// far reported its path, and the rendezvous hears nothing for a second (no
// Edge is being repeated): the counters stop moving.
func awaitTree(rp *rendezvousProc, n int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last rendezvous.Stats
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		st, err := rp.stats()
		if err != nil {
			return err
		}
		ok := st.PunchOKHost + st.PunchOKSrflx + st.PunchOKPrflx
		if st.TreeJoins >= uint64(n) && ok > 0 && ok == last.PunchOKHost+last.PunchOKSrflx+last.PunchOKPrflx && st.DatagramsIn == last.DatagramsIn {
			return nil
		}
		last = st
	}
	return fmt.Errorf("the tree did not form: %d joins, %d edges, %d paths", last.TreeJoins, last.Edges, last.PunchOKSrflx+last.PunchOKHost)
}

// keepaliveOnce returns the rendezvous's CPU % of one core while n clients
// keep alive every 25 s.
func keepaliveOnce(ctx context.Context, o Options, n int) (float64, error) {
	rp, err := startRendezvous(o, 0)
	if err != nil {
		return 0, err
	}
	defer rp.stop()
	gens, evs, starts, err := startGenerators(ctx, o, rp.target(false), n, 25*time.Second)
	defer stopAll(gens)
	if err != nil {
		return 0, err
	}
	if _, err := await(evs, "registered", 5*time.Minute); err != nil {
		return 0, err
	}
	pid := rp.cmd.Process.Pid
	waitIdle(pid) // past the registration burst and its record writes
	for _, s := range starts {
		io.WriteString(s, "keepalive\n")
	}
	time.Sleep(time.Second)
	cpu0, _ := procCPU(pid)
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(o.Window):
	}
	cpu1, _ := procCPU(pid)
	return 100 * (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds(), nil
}

// latencyOnce returns p50 and p99 (ms) from the hook starting to the
// daemon's --exec program starting, over LatencyPushes pushes.
func latencyOnce(ctx context.Context, o Options) (float64, float64, error) {
	rp, err := startRendezvous(o, 0)
	if err != nil {
		return 0, 0, err
	}
	defer rp.stop()
	out := filepath.Join(rp.dir, "exec.times")
	prog := filepath.Join(rp.dir, "on-push")
	// bash's $EPOCHREALTIME: the program's first act records the time.
	os.WriteFile(prog, []byte("#!/bin/bash\necho \"$EPOCHREALTIME $GCN_SEQ\" >> "+out+"\n"), 0o755)
	d := exec.CommandContext(ctx, o.Binary, "daemon", "--server", rp.addr.String(), "--server-key", rp.key.String(),
		"--repo-id", "chat.git", "--state", filepath.Join(rp.dir, "state"), "--exec", prog, "--no-desktop")
	if err := d.Start(); err != nil {
		return 0, 0, err
	}
	defer func() { d.Process.Kill(); d.Wait() }()
	for i := 0; i < 200; i++ {
		if daemonKnowsPosition(filepath.Join(rp.dir, "state")) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	starts := make([]time.Time, o.LatencyPushes+1)
	for i := 1; i <= o.LatencyPushes; i++ {
		starts[i] = time.Now()
		if err := rp.hook(o, i); err != nil {
			return 0, 0, err
		}
		// One push at a time: wait for its exec, bounded.
		for j := 0; j < 500 && countLines(out) < i; j++ {
			time.Sleep(time.Millisecond)
		}
	}
	b, _ := os.ReadFile(out)
	var lat []float64
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		sec, err1 := strconv.ParseFloat(f[0], 64)
		seq, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil || seq < 1 || seq > o.LatencyPushes {
			continue
		}
		lat = append(lat, (sec-float64(starts[seq].UnixNano())/1e9)*1000)
	}
	if len(lat) != o.LatencyPushes {
		return 0, 0, fmt.Errorf("%d of %d pushes reached --exec", len(lat), o.LatencyPushes)
	}
	sort.Float64s(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// pollingBaseline measures real `git fetch` runs against a test repository
// with one new commit each time, as a 60 s polling loop would see.
func pollingBaseline(ctx context.Context, o Options) (Polling, error) {
	p := Polling{IntervalSec: 60, MeanLatencySec: 30, WorstLatencySec: 60, Sample: o.PollSample, CPUSecPerMinutePerN: map[int]float64{}}
	dir, err := os.MkdirTemp("", "gcn-bench-poll")
	if err != nil {
		return p, err
	}
	defer os.RemoveAll(dir)
	env := append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_AUTHOR_NAME=b", "GIT_AUTHOR_EMAIL=b@example.invalid",
		"GIT_COMMITTER_NAME=b", "GIT_COMMITTER_EMAIL=b@example.invalid")
	git := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %v: %v %s", args, err, out)
		}
		return nil
	}
	bare, pusher, poller := filepath.Join(dir, "chat.git"), filepath.Join(dir, "pusher"), filepath.Join(dir, "poller")
	for _, a := range [][]string{{"init", "-q", "--bare", bare}, {"clone", "-q", bare, pusher},
		{"-C", pusher, "commit", "-q", "--allow-empty", "-m", "0"}, {"-C", pusher, "push", "-q", "origin", "HEAD:main"},
		{"clone", "-q", bare, poller}} {
		if err := git(a...); err != nil {
			return p, err
		}
	}
	var cpu []float64
	for i := 0; i < o.PollSample; i++ {
		if err := git("-C", pusher, "commit", "-q", "--allow-empty", "-m", strconv.Itoa(i+1)); err != nil {
			return p, err
		}
		if err := git("-C", pusher, "push", "-q", "origin", "HEAD:main"); err != nil {
			return p, err
		}
		cmd := exec.CommandContext(ctx, "git", "-C", poller, "fetch", "-q", "origin")
		cmd.Env = env
		if err := cmd.Run(); err != nil {
			return p, err
		}
		// The fetch's rusage includes git-upload-pack, the server's side.
		cpu = append(cpu, float64((cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime()).Microseconds())/1000)
	}
	p.CPUMillisPerFetch = spread(cpu)
	for _, n := range o.Sizes {
		p.CPUSecPerMinutePerN[n] = float64(n) * p.CPUMillisPerFetch.Median / 1000
	}
	return p, nil
}
