package loadtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	// honestN honest peers, each on its own loopback address
	// (127.0.1.1 ...), so that no per-source limit is shared among them.
	honestN = 100
	// honestData is what each honest peer sends through the relay and
	// gets back (its neighbour echoes it): one way and the other.
	honestData = 1 << 20
	// opTimeout bounds each honest operation.
	opTimeout = 45 * time.Second
	// heapMargin is what the flood may add to the heap's peak over the
	// honest peers' own (the baseline phase; 100 transfers in flight
	// make that peak vary by tens of MiB from run to run), and
	// heapAfterMargin what it may add to the heap once the transfers and
	// the flood are over (the servers' state): the bounds stated in
	// docs/security.md, "Load test".
	heapMargin      = 256 << 20
	heapAfterMargin = 32 << 20
)

// TestLoadHostileSource is the load test of issue 15. A server
// (rendezvous, STUN and relay with their default limits, as `reach
// server` runs them) on 127.0.0.1; 100 honest reach nodes, each on its own
// loopback address, register, are introduced to their neighbour (node i
// dials node i+1) over the relay only, and send 1 MiB that comes back,
// checked by SHA-256. First alone (the baseline), then, against a fresh
// server, while one hostile address (127.0.0.2) floods at full speed:
// registrations under fresh identities, introductions to the honest
// peers, STUN binding requests, and relay packets to random and to honest
// peer IDs over 16 relay links. Every honest operation must succeed; the
// hostile excess must be refused or dropped and counted in the servers'
// statistics; the heap (server and clients: they share the process) must
// stay within heapMargin of the baseline's peak.
func TestLoadHostileSource(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: 100 nodes, about a minute")
	}
	if os.Getenv("REACH_LOADTEST") == "" {
		// It needs the machine to itself: beside the lab tests (go test
		// ./... runs packages in parallel) two cores starve 100 nodes.
		// .ci/run runs it on its own after the suite.
		t.Skip("load test: set REACH_LOADTEST=1 (.ci/run does, after the suite)")
	}
	var base, flood outcome
	t.Run("baseline", func(t *testing.T) { base = runPhase(t, false) })
	if t.Failed() {
		return
	}
	t.Run("flood", func(t *testing.T) { flood = runPhase(t, true) })
	t.Logf("heap in use (after a GC; server and clients): baseline peak %.1f MiB, after %.1f MiB; under the flood peak %.1f MiB, after %.1f MiB; bounds: peak %.1f MiB (+%d), after %.1f MiB (+%d)",
		mib(base.heapPeak), mib(base.heapAfter), mib(flood.heapPeak), mib(flood.heapAfter),
		mib(base.heapPeak+heapMargin), heapMargin>>20, mib(base.heapAfter+heapAfterMargin), heapAfterMargin>>20)
	if flood.heapPeak > base.heapPeak+heapMargin {
		t.Errorf("heap under the flood: peak %.1f MiB, bound %.1f MiB", mib(flood.heapPeak), mib(base.heapPeak+heapMargin))
	}
	if flood.heapAfter > base.heapAfter+heapAfterMargin {
		t.Errorf("heap after the flood: %.1f MiB, bound %.1f MiB", mib(flood.heapAfter), mib(base.heapAfter+heapAfterMargin))
	}
}

// outcome is what one phase measured.
type outcome struct {
	heapPeak, heapAfter uint64
}

// runPhase runs the honest peers against a fresh server, with or without
// the hostile flood, checks them and returns the heap figures.
func runPhase(t *testing.T, withFlood bool) outcome {
	log := warnLogger(t)
	rl := relay.NewServer(relay.ServerConfig{Logger: log.With("part", "relay")})
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{Logger: log.With("part", "rendezvous"),
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl}}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })

	keys := make([]*identity.Key, honestN)
	ids := make([]identity.PeerID, honestN)
	for i := range keys {
		keys[i] = newKey(t)
		ids[i] = keys[i].ID()
	}
	sampler := startSampler()

	var h *hostile
	floodCtx, stopFlood := context.WithCancel(context.Background())
	defer stopFlood()
	var floodWG sync.WaitGroup
	start := time.Now()
	if withFlood {
		h = &hostile{}
		h.prepare(t, rs.ServerAddr(), log.With("side", "hostile"))
		start = time.Now()
		floodWG.Go(func() { h.run(floodCtx, t, rs, ids, log.With("side", "hostile")) })
		time.Sleep(time.Second) // the flood at full speed before the first honest peer
	}

	res := runHonest(t, rs.ConnectString(), keys, log)
	honestTook := time.Since(start)
	var forwarded uint64 // packets the relay forwarded from hostile links
	if withFlood {
		for _, p := range rl.Peers() {
			if h.linkIDs[p.Peer] {
				forwarded += p.Packets
			}
		}
		stopFlood()
		floodWG.Wait()
		for _, l := range h.links {
			l.Close()
		}
		for _, c := range h.intro {
			c.Close()
		}
	}
	took := time.Since(start)
	heapAfter := heapInUse() // the flood over; server and honest nodes still up
	st, m := rs.Stats(), rl.Metrics()
	closeNodes(res.nodes)
	peak := max(sampler.stop(), heapAfter)

	t.Logf("honest (%d peers, %d KiB each way): %d registered, %d introduced, %d relayed sessions, %d echoes intact; done %v after the start",
		honestN, honestData>>10, res.registered, res.introduced, res.relayed, res.intact, honestTook.Round(time.Millisecond))
	for _, f := range res.failures {
		t.Error(f)
	}
	if res.intact != honestN {
		t.Errorf("%d of %d honest peers moved their data intact", res.intact, honestN)
	}
	t.Logf("rendezvous: %d registrations (%d rate-limited), %d connections refused, %d Retries, peak %d handshakes in progress; %d introductions (%d rate-limited, %d refused busy); STUN %d answered, %d dropped over the limit; %d buckets",
		st.Registrations, st.RegistrationsLimited, st.ConnsRefused, st.Retries, st.PeakHandshakes, st.Introductions, st.IntrosLimited, st.IntrosRefused,
		st.STUNRequests, st.STUNLimited, st.Sources)
	t.Logf("relay: links registered %s, rejected %s; %d packets (%.1f MiB) forwarded, %d sessions now; drops %s",
		nonZero(m.Connections), nonZero(m.Rejected), m.Packets, float64(m.Bytes)/(1<<20), m.Sessions, nonZero(m.Drops))
	t.Logf("heap in use: peak %.1f MiB, %.1f MiB after (phase of %v)", mib(peak), mib(heapAfter), took.Round(time.Millisecond))
	if withFlood {
		for _, line := range h.summary() {
			t.Log("hostile " + line)
		}
		t.Logf("hostile relay packets forwarded: %d", forwarded)
		checkHostile(t, h, st, m, forwarded, took)
	}
	return outcome{heapPeak: peak, heapAfter: heapAfter}
}

// checkHostile asserts that the flood's excess was refused or dropped,
// and counted: what it got is within each limit's bucket over the time
// it flooded.
func checkHostile(t *testing.T, h *hostile, st rendezvous.Stats, m relay.MetricsSnapshot, forwarded uint64, took time.Duration) {
	secs := took.Seconds()
	within := func(burst int, rate float64, n int) int64 {
		return int64(float64(n)*(float64(burst)+rate*secs)) + 2
	}
	if got, bound := h.regOK.Load(), within(rendezvous.DefaultRegisterBurst, rendezvous.DefaultRegisterRate, 1); got > bound {
		t.Errorf("hostile registrations: %d registered, bound %d", got, bound)
	}
	if got, bound := h.introOK.Load(), within(rendezvous.DefaultPeerIntroBurst, rendezvous.DefaultPeerIntroRate, introPeers); got > bound {
		t.Errorf("hostile introductions: %d answered, bound %d", got, bound)
	}
	if h.introLimited.Load() == 0 || st.IntrosLimited == 0 {
		t.Errorf("hostile introductions: %d rate-limited, server counted %d (want some)", h.introLimited.Load(), st.IntrosLimited)
	}
	if got, bound := h.stunAnswered.Load(), within(rendezvous.DefaultSTUNBurst, rendezvous.DefaultSTUNRate, 1); got > bound {
		t.Errorf("hostile STUN: %d answered, bound %d", got, bound)
	}
	if st.STUNLimited == 0 {
		t.Error("hostile STUN: none dropped over the limit")
	}
	if h.relayGot.Load() != 0 {
		t.Errorf("hostile relay packets: %d delivered to hostile links; want none", h.relayGot.Load())
	}
	// A link asks for consent one round trip after its WELCOME; packets
	// in that window get through, and the sessions they opened end when
	// it asks (relay.Server.enableConsent): a few per honest peer, where
	// those sessions used to live on (27,822 packets in one run).
	if bound := uint64(20 * honestN); forwarded > bound {
		t.Errorf("%d hostile relay packets forwarded to honest peers that never consented, bound %d", forwarded, bound)
	}
	if m.Drops["no_peer"] == 0 || m.Drops["not_allowed"] == 0 {
		t.Errorf("hostile relay packets: drops %s, want no_peer and not_allowed", nonZero(m.Drops))
	}
}

// honestResult is what the honest peers did.
type honestResult struct {
	nodes                                   []*reach.Node
	registered, introduced, relayed, intact int
	failures                                []string
}

// runHonest starts a node per key, each on its own loopback address,
// then has node i dial node i+1 over the relay and echo 1 MiB.
func runHonest(t *testing.T, cs string, keys []*identity.Key, log *slog.Logger) *honestResult {
	res := &honestResult{nodes: make([]*reach.Node, len(keys))}
	var mu sync.Mutex
	fail := func(f string, args ...any) {
		mu.Lock()
		res.failures = append(res.failures, fmt.Sprintf(f, args...))
		mu.Unlock()
	}
	count := func(n *int) {
		mu.Lock()
		*n++
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Go(func() {
			ip := fmt.Sprintf("127.0.1.%d", i+1)
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			n, err := reach.New(ctx, reach.Config{Key: k, Servers: []string{cs}, ListenAddr: netip.MustParseAddrPort(ip + ":0"),
				Strategies: []string{reach.StrategyRelay}, DisablePortMapping: true, UpgradeInterval: -1,
				DialTCP: dialTCPFrom(ip), IgnoreProxyEnvironment: true, Logger: log.With("node", ip)})
			if err != nil {
				fail("honest %s: register: %v", ip, err)
				return
			}
			res.nodes[i] = n
			count(&res.registered)
			go echo(n)
		})
	}
	wg.Wait()
	for i, n := range res.nodes {
		next := res.nodes[(i+1)%len(keys)]
		if n == nil || next == nil {
			continue
		}
		wg.Go(func() {
			ip := fmt.Sprintf("127.0.1.%d", i+1)
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			sess, err := n.DialSession(ctx, next.ID())
			if err != nil {
				fail("honest %s: dial: %v", ip, err)
				return
			}
			count(&res.introduced)
			if s := sess.Strategy(); s != reach.StrategyRelay {
				fail("honest %s: session over %q, want the relay", ip, s)
				return
			}
			count(&res.relayed)
			st, err := sess.OpenStream(ctx)
			if err != nil {
				fail("honest %s: open stream: %v", ip, err)
				return
			}
			defer st.Close()
			st.SetDeadline(time.Now().Add(opTimeout))
			if err := roundTrip(st, honestData); err != nil {
				fail("honest %s: echo: %v", ip, err)
				return
			}
			count(&res.intact)
		})
	}
	wg.Wait()
	return res
}

// echo serves every stream n accepts by copying it back.
func echo(n *reach.Node) {
	for {
		c, err := n.Accept(context.Background())
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(opTimeout))
			io.Copy(c, c)
			c.CloseWrite()
		}()
	}
}

// roundTrip sends size random bytes on c and checks that the same come
// back, by SHA-256.
func roundTrip(c *reach.Stream, size int) error {
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, rerr := io.Copy(h, c)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read after %d bytes: %w", n, rerr)
	}
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo of %d bytes differs (%d bytes back)", size, n)
	}
	return nil
}

// closeNodes closes the nodes at once.
func closeNodes(nodes []*reach.Node) {
	var wg sync.WaitGroup
	for _, n := range nodes {
		if n != nil {
			wg.Go(func() { n.Close() })
		}
	}
	wg.Wait()
}

// sampler records the peak of heapInUse, sampled every 500 ms.
type sampler struct {
	done chan struct{}
	peak chan uint64
}

func startSampler() *sampler {
	s := &sampler{done: make(chan struct{}), peak: make(chan uint64)}
	go func() {
		peak := heapInUse()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				peak = max(peak, heapInUse())
			case <-s.done:
				s.peak <- peak
				return
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peak.
func (s *sampler) stop() uint64 {
	close(s.done)
	return <-s.peak
}

// heapInUse is the heap's in-use spans after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// nonZero formats a counter map's non-zero entries, sorted.
func nonZero[V int | uint64](m map[string]V) string {
	var parts []string
	for k, v := range m {
		if v != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, v))
		}
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// testWriter writes each log line with t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// warnLogger logs warnings and errors to t: a hundred nodes' debug logs
// would drown the figures.
func warnLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
