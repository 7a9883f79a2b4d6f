package loadtest

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
)

// The soak's flags (go test passes them through to the test binary):
//
//	REACH_SOAK=1 go test -count=1 -timeout 30m -run '^TestSoak$' -v ./internal/loadtest \
//	    -soak.pairs 500 -soak.duration 10m
var (
	soakPairs    = flag.Int("soak.pairs", 500, "TestSoak: relayed pairs (two peers each)")
	soakDuration = flag.Duration("soak.duration", 10*time.Minute, "TestSoak: how long the pairs move data, from the moment every pair moves it")
	soakWarmup   = flag.Duration("soak.warmup", time.Minute, "TestSoak: the first part of the duration left out of the RSS fit")
	soakEvery    = flag.Duration("soak.sample", 5*time.Second, "TestSoak: how often the server's RSS and goroutines are sampled")
	soakRate     = flag.Int("soak.rate", 8<<10, "TestSoak: bytes per second each pair sends each way")
	soakRamp     = flag.Int("soak.ramp", 16, "TestSoak: pairs set up at once (dial, relay links, session) while the first ones already move data")
	soakMaxSlope = flag.Float64("soak.max-slope", 1024, "TestSoak: the largest server RSS slope after the warm-up, KiB per minute, that passes")
)

// soakConfig is one soak run.
type soakConfig struct {
	pairs                    int
	duration, warmup, sample time.Duration
	rate                     int     // bytes/s per pair, each way
	ramp                     int     // pairs set up at once
	maxSlope                 float64 // KiB/min; negative: not checked (too short a run)
}

// TestSoak is issue 14's soak: `reach server` in a child process on
// 127.0.0.1, and 2×soak.pairs reach nodes in this process, each on its own
// loopback address, restricted to the relay rung (Config.Strategies), so
// every pair's session goes through the server's relay over a UDP link.
// Each pair moves soak.rate bytes per second each way, continuously, for
// soak.duration on two streams of its session, and checks every byte
// against a seeded pseudo-random pattern as it arrives. At the end every
// sender half-closes and every receiver reads to EOF: bytes lost (sent
// but never read) and corrupted (read but not the pattern) must be 0, and
// every flow must have moved data. Meanwhile the server's RSS (/proc) and
// goroutines (its /metrics) are sampled every soak.sample; after
// soak.warmup the RSS slope (least squares) must stay under
// soak.max-slope and the goroutine count must not grow. After the nodes
// close, the server's goroutines return to what they were before the
// first peer came. See docs/benchmarks.md, "Relay soak".
func TestSoak(t *testing.T) {
	if os.Getenv("REACH_SOAK") == "" {
		t.Skip("soak: set REACH_SOAK=1 (10 minutes, 1,000 peers; docs/benchmarks.md)")
	}
	runSoak(t, soakConfig{pairs: *soakPairs, duration: *soakDuration, warmup: *soakWarmup, sample: *soakEvery,
		rate: *soakRate, ramp: *soakRamp, maxSlope: *soakMaxSlope})
}

// TestSoakSmoke runs the soak small and short (20 pairs, 30 s), so that
// it keeps working between full runs.
func TestSoakSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("soak smoke run: 40 peers for 30 s")
	}
	runSoak(t, soakConfig{pairs: 20, duration: 30 * time.Second, warmup: 10 * time.Second, sample: 2 * time.Second,
		rate: 32 << 10, ramp: 16, maxSlope: -1})
}

// runSoak runs one soak and checks it (see TestSoak).
func runSoak(t *testing.T, cfg soakConfig) {
	log := warnLogger(t)
	srv := startSoakServer(t, buildReach(t))
	baseGs, err := srv.goroutines()
	if err != nil {
		t.Fatal(err)
	}
	baseRSS, _ := srv.rss()
	t.Logf("server %s: %d goroutines, RSS %.1f MiB before any peer", srv.connect, baseGs, mib(baseRSS))

	setupStart := time.Now()
	nodes := startSoakNodes(t, srv.connect, 2*cfg.pairs, log)
	t.Logf("%d nodes registered in %v", len(nodes), time.Since(setupStart).Round(time.Millisecond))

	stop, stopSending := context.WithCancel(context.Background())
	kill, killAll := context.WithCancel(context.Background())
	pairs := make([]*soakPair, cfg.pairs)
	closed := false
	defer func() { // on every way out: no goroutine or node left behind
		stopSending()
		killAll()
		for _, p := range pairs {
			if p != nil {
				p.wg.Wait()
			}
		}
		if !closed {
			closeNodes(nodes)
		}
	}()
	for i := range pairs {
		pairs[i] = newSoakPair(i, nodes[2*i], nodes[2*i+1])
		pairs[i].serve(stop, kill, cfg.rate)
	}
	forEach(cfg.ramp, len(pairs), func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := pairs[i].run(ctx, stop, kill, cfg.rate); err != nil {
			pairs[i].setupErr = fmt.Errorf("%v into the setup: %w", time.Since(setupStart).Round(time.Millisecond), err)
		}
	})
	// A pair that could not set up fails the test, but the others run
	// on, so that a run still measures the server over its duration.
	var up []*soakPair
	for _, p := range pairs {
		if p.setupErr != nil {
			t.Errorf("pair %d: %v", p.index, p.setupErr)
		} else {
			up = append(up, p)
		}
	}
	if len(up) == 0 {
		srv.logMetrics(t)
		return
	}
	start := time.Now()
	t.Logf("%d of %d relayed pairs moving %d B/s each way, set up in %v; running for %v", len(up), len(pairs), cfg.rate,
		start.Sub(setupStart).Round(time.Millisecond), cfg.duration)

	cpu0, _ := srv.cpu()
	moved0 := movedNow(up)
	samples := sampleSoak(t, srv, up, start, cfg)
	if cpu1, err := srv.cpu(); err == nil {
		used := cpu1 - cpu0
		t.Logf("server CPU over the run: %v (%.0f%% of a core); %.1f MB of payload relayed per server CPU-second",
			used.Round(10*time.Millisecond), 100*used.Seconds()/time.Since(start).Seconds(),
			float64(movedNow(up)-moved0)/1e6/max(used.Seconds(), 0.01))
	}
	stopSending()
	// The drain: every receiver reads to its sender's half-close.
	drained := make(chan struct{})
	go func() {
		for _, p := range up {
			for d := range p.flows {
				<-p.flows[d].done
			}
		}
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(opTimeout):
		t.Errorf("not every flow ended within %v of the senders' half-close", opTimeout)
	}
	killAll()
	for _, p := range pairs {
		p.wg.Wait()
	}
	ran := time.Since(start)
	tot := totals(up)
	t.Logf("moved %d bytes (%.1f MiB, %.2f MiB/s) in %v: sent %d, received %d, lost %d, corrupted %d",
		tot.received, mib(uint64(tot.received)), mib(uint64(tot.received))/ran.Seconds(), ran.Round(time.Millisecond),
		tot.sent, tot.received, tot.lost, tot.corrupt)
	for _, f := range tot.failed {
		t.Error(f)
	}
	if tot.lost != 0 || tot.corrupt != 0 {
		t.Errorf("%d bytes lost, %d corrupted; want none", tot.lost, tot.corrupt)
	}
	checkSamples(t, samples, cfg)
	if t.Failed() {
		srv.logMetrics(t)
	}

	closeNodes(nodes)
	closed = true
	var afterGs int
	ok := waitUntil(20*time.Second, func() bool {
		afterGs, err = srv.goroutines()
		return err == nil && afterGs <= baseGs+5
	})
	afterRSS, _ := srv.rss()
	t.Logf("server after every node closed: %d goroutines (before the peers: %d), RSS %.1f MiB", afterGs, baseGs, mib(afterRSS))
	if !ok {
		t.Errorf("server goroutines %d 20 s after every peer left, %d before the first came", afterGs, baseGs)
	}
}

// startSoakNodes starts n relay-only nodes registered with the server at
// cs, node i on 127.1.<i/250>.<i%250+1>, 64 at a time.
func startSoakNodes(t *testing.T, cs string, n int, log *slog.Logger) []*reach.Node {
	nodes := make([]*reach.Node, n)
	var mu sync.Mutex
	var failures []string
	forEach(64, n, func(i int) {
		ip := fmt.Sprintf("127.1.%d.%d", i/250, i%250+1)
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		k, err := identity.GenerateKey()
		if err == nil {
			nodes[i], err = reach.New(ctx, reach.Config{Key: k, Servers: []string{cs}, ListenAddr: netip.MustParseAddrPort(ip + ":0"),
				Strategies: []string{reach.StrategyRelay}, DisablePortMapping: true, UpgradeInterval: -1,
				DialTCP: dialTCPFrom(ip), IgnoreProxyEnvironment: true, Logger: log.With("node", ip)})
		}
		if err != nil {
			mu.Lock()
			failures = append(failures, fmt.Sprintf("node %s: %v", ip, err))
			mu.Unlock()
		}
	})
	if len(failures) > 0 {
		closeNodes(nodes)
		for _, f := range failures {
			t.Error(f)
		}
		t.FailNow()
	}
	return nodes
}

// sampleSoak samples the server every cfg.sample until cfg.duration has
// passed since start, logging each sample.
func sampleSoak(t *testing.T, srv *soakServer, pairs []*soakPair, start time.Time, cfg soakConfig) []soakSample {
	var out []soakSample
	tick := time.NewTicker(cfg.sample)
	defer tick.Stop()
	end := time.After(cfg.duration)
	for {
		select {
		case <-end:
			return out
		case <-tick.C:
		}
		s := soakSample{at: time.Since(start), peerGs: runtime.NumGoroutine()}
		// A sample the server could not give (its /metrics answers late
		// on a starved machine) is skipped, not the rest of the run.
		var err error
		if s.rss, err = srv.rss(); err != nil {
			t.Errorf("server RSS: %v", err)
			return out
		}
		if s.goroutines, s.heap, err = srv.runtimeStats(); err != nil {
			t.Logf("sample %6.1fs skipped: server goroutines: %v", s.at.Seconds(), err)
			continue
		}
		s.moved = movedNow(pairs)
		t.Logf("sample %6.1fs: server RSS %7.1f MiB (heap in use %7.1f MiB), %5d goroutines; peers' process %6d goroutines; moved %8.1f MiB",
			s.at.Seconds(), mib(s.rss), mib(s.heap), s.goroutines, s.peerGs, mib(uint64(s.moved)))
		out = append(out, s)
	}
}

// movedNow is what every pair's receivers have read so far.
func movedNow(pairs []*soakPair) int64 {
	var n int64
	for _, p := range pairs {
		n += p.flows[0].received.Load() + p.flows[1].received.Load()
	}
	return n
}

// checkSamples fits the server's RSS after the warm-up (KiB per minute)
// and checks it and the goroutine count against cfg.
func checkSamples(t *testing.T, samples []soakSample, cfg soakConfig) {
	i := slices.IndexFunc(samples, func(s soakSample) bool { return s.at >= cfg.warmup })
	if i < 0 || len(samples)-i < 3 {
		t.Errorf("%d samples after the %v warm-up; want at least 3", max(len(samples)-max(i, 0), 0), cfg.warmup)
		return
	}
	after := samples[i:]
	x, y := make([]float64, len(after)), make([]float64, len(after))
	minRSS, maxRSS := after[0].rss, after[0].rss
	minG, maxG := after[0].goroutines, after[0].goroutines
	for j, s := range after {
		x[j], y[j] = s.at.Minutes(), float64(s.rss)/1024
		minRSS, maxRSS = min(minRSS, s.rss), max(maxRSS, s.rss)
		minG, maxG = min(minG, s.goroutines), max(maxG, s.goroutines)
	}
	slope, _ := linearFit(x, y)
	first, last := after[0], after[len(after)-1]
	if first.heap > 0 {
		hy := make([]float64, len(after))
		for j, s := range after {
			hy[j] = float64(s.heap) / 1024
		}
		hslope, _ := linearFit(x, hy)
		t.Logf("after the warm-up: server Go heap in use %.1f to %.1f MiB, slope %+.1f KiB/min", mib(first.heap), mib(last.heap), hslope)
	}
	t.Logf("after the %v warm-up (%d samples, %v to %v): server RSS %.1f to %.1f MiB (min %.1f, max %.1f), slope %+.1f KiB/min; goroutines %d to %d (min %d, max %d)",
		cfg.warmup, len(after), first.at.Round(time.Second), last.at.Round(time.Second), mib(first.rss), mib(last.rss),
		mib(minRSS), mib(maxRSS), slope, first.goroutines, last.goroutines, minG, maxG)
	if cfg.maxSlope >= 0 && slope > cfg.maxSlope {
		t.Errorf("server RSS grows %.1f KiB/min after the warm-up; bound %.0f", slope, cfg.maxSlope)
	}
	// Every linked peer holds the same goroutines all along: the count
	// may wobble with the ones that come and go per packet, not grow.
	if bound := first.goroutines + first.goroutines/50 + 10; last.goroutines > bound {
		t.Errorf("server goroutines grew from %d to %d after the warm-up (bound %d)", first.goroutines, last.goroutines, bound)
	}
}

// forEach calls f(0..n-1), at most par at a time, and waits for them.
func forEach(par, n int, f func(int)) {
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(i)
		})
	}
	wg.Wait()
}

// waitUntil polls cond every 200 ms for up to d.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}
