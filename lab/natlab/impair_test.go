package natlab

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// echoUDP runs a UDP echo server on h at addr until the test ends.
func echoUDP(t testing.TB, h *Host, addr netip.AddrPort) {
	t.Helper()
	c, err := h.ListenUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// waitPath waits (2 s at most) until a datagram from h to the echo server
// at dst comes back: after a wire is inserted, the link's carrier is back.
func waitPath(t testing.TB, h *Host, dst netip.AddrPort) {
	t.Helper()
	c, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv6Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		c.WriteToUDPAddrPort([]byte("path?"), dst) // may fail while the link is down; the read below waits anyway
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, _, err := c.ReadFromUDPAddrPort(buf); err == nil && string(buf[:n]) == "path?" {
			return
		}
	}
	t.Fatalf("no echo from %v through %s's link within 2s", dst, h.Name())
}

// pingUDP sends n numbered datagrams from h to an echo server at dst, one
// every interval, and returns the round-trip times of those that came
// back, sorted.
func pingUDP(t testing.TB, h *Host, dst netip.AddrPort, n int, interval time.Duration) []time.Duration {
	t.Helper()
	c, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv6Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := make([]time.Time, n)
	var mu sync.Mutex
	var rtts []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			now := time.Now()
			if k < 4 {
				continue
			}
			i := binary.BigEndian.Uint32(buf)
			mu.Lock()
			if int(i) < n {
				rtts = append(rtts, now.Sub(sent[i]))
			}
			mu.Unlock()
		}
	}()
	msg := make([]byte, 64)
	for i := range n {
		binary.BigEndian.PutUint32(msg, uint32(i))
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		if _, err := c.WriteToUDPAddrPort(msg, dst); err != nil {
			t.Fatal(err)
		}
		time.Sleep(interval) // the probes' spacing
	}
	// Replies still on their way: wait until all are in, 500 ms at most
	// (lost ones never come).
	tick := time.NewTicker(10 * time.Millisecond)
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); <-tick.C {
		mu.Lock()
		all := len(rtts) == n
		mu.Unlock()
		if all {
			break
		}
	}
	tick.Stop()
	c.SetReadDeadline(time.Now())
	<-done
	slices.Sort(rtts)
	return rtts
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

// TestImpairDelay: 20 ms each way on one link gives a 40 ms round trip,
// and a delay on one direction only counts once.
func TestImpairDelay(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	a, b, _ := publicTrio(t, ctx, l)
	echoUDP(t, a, netip.AddrPortFrom(a.Addr(), 7))
	base := pingUDP(t, b, netip.AddrPortFrom(a.Addr(), 7), 50, 2*time.Millisecond)
	t.Logf("no impairment: median RTT %v, p95 %v", quantile(base, .5), quantile(base, .95))
	for _, tc := range []struct {
		name     string
		up, down Impairment
		want     time.Duration // round trip
	}{
		{"20ms-each-way", Impairment{Delay: 20 * time.Millisecond}, Impairment{Delay: 20 * time.Millisecond}, 40 * time.Millisecond},
		{"30ms-up-only", Impairment{Delay: 30 * time.Millisecond}, Impairment{}, 30 * time.Millisecond},
		{"20ms±5ms-down-only", Impairment{}, Impairment{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}, 20 * time.Millisecond},
	} {
		if err := b.ImpairEach(ctx, tc.up, tc.down); err != nil {
			t.Fatal(err)
		}
		waitPath(t, b, netip.AddrPortFrom(a.Addr(), 7)) // carrier back after the first insertion
		rtts := pingUDP(t, b, netip.AddrPortFrom(a.Addr(), 7), 200, 5*time.Millisecond)
		med, p95 := quantile(rtts, .5), quantile(rtts, .95)
		t.Logf("%s: %d/200 replies, median RTT %v, p95 %v (asked %v)", tc.name, len(rtts), med, p95, tc.want)
		if len(rtts) < 190 {
			t.Errorf("%s: only %d/200 replies on a lossless link", tc.name, len(rtts))
		}
		// Tolerance: 2.5 ms per delayed direction (timer granularity and
		// the forwarder's scheduling on shared cores).
		// With jitter the median is a sample's: allow a quarter of the
		// jitter below (its standard error here is about a tenth).
		// Load on the shared cores only ever adds delay, so the delay the
		// wire delivers is read off a low quantile (p10: within 5 ms of
		// what was asked), and the median gets room for the load (+15 ms).
		lo := tc.want - tc.down.Jitter/4
		if tc.down.Jitter == 0 {
			if p10 := quantile(rtts, .10); p10 < tc.want || p10 > tc.want+5*time.Millisecond {
				t.Errorf("%s: p10 RTT %v, want within [%v, %v]", tc.name, p10, tc.want, tc.want+5*time.Millisecond)
			}
		}
		if med < lo || med > tc.want+15*time.Millisecond {
			t.Errorf("%s: median RTT %v, want within [%v, %v]", tc.name, med, lo, tc.want+15*time.Millisecond)
		}
		if j := tc.down.Jitter; j > 0 {
			lo, hi := quantile(rtts, .05), quantile(rtts, .95)
			t.Logf("%s: p5 %v, p95 %v", tc.name, lo, hi)
			if lo < tc.want-j || hi-lo < j {
				t.Errorf("%s: spread p5 %v .. p95 %v, want at least %v wide and above %v", tc.name, lo, hi, j, tc.want-j)
			}
		}
	}
	if w := b.wireOf(); w == nil || w.stats.Oversize[0].Load()+w.stats.Oversize[1].Load() > 0 {
		t.Errorf("wire missing or saw oversize frames (offloads not off)")
	}
}

// TestImpairWireProtocols: a wired link carries IPv6 (with neighbour
// discovery), ICMP and TCP, with the addresses unchanged.
func TestImpairWireProtocols(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	a, b, _ := publicTrio(t, ctx, l)
	if err := b.Impair(ctx, Impairment{Delay: 5 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// IPv6 UDP: the source seen is b's own address.
	as, err := a.ListenUDP(netip.AddrPortFrom(a.Addr6(), 4000))
	if err != nil {
		t.Fatal(err)
	}
	defer as.Close()
	bs, err := b.ListenUDP(netip.AddrPortFrom(b.Addr6(), 4001))
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	_, from, err := Probe(bs, netip.AddrPortFrom(a.Addr6(), 4000), "v6", as, 2*time.Second)
	if err != nil || from.Addr() != b.Addr6() {
		t.Fatalf("IPv6 over the wire: from %v, err %v", from, err)
	}
	// ICMP: a datagram to a closed port comes back as port unreachable,
	// which a connected UDP socket reports as ECONNREFUSED.
	var cc net.Conn
	if err := b.Run(func() (err error) {
		cc, err = net.Dial("udp", netip.AddrPortFrom(a.Addr(), 9).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cc.Write([]byte("x"))
	cc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := cc.Read(make([]byte, 8)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("ICMP port unreachable not delivered: %v", err)
	}
	// TCP, 4 MiB with checksums checked by the kernel at each end.
	if bps := tcpGoodput(t, b, a, 4<<20, 0); bps <= 0 {
		t.Errorf("TCP over the wire failed")
	}
}

// tcpGoodput sends from one host to another over TCP for dur (or until
// size bytes when dur is 0) and returns the goodput in bit/s measured by
// the receiver, skipping the first 300 ms (slow start, the initial burst).
func tcpGoodput(t testing.TB, from, to *Host, size int64, dur time.Duration) float64 {
	t.Helper()
	ln, err := to.ListenTCP(netip.AddrPortFrom(to.Addr(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		bps float64
		err error
	}
	res := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 64<<10)
		var total, mark int64
		var start, markT, last time.Time
		for {
			n, err := c.Read(buf)
			now := time.Now()
			if n > 0 {
				if start.IsZero() {
					start = now
				}
				total += int64(n)
				last = now
				if markT.IsZero() && now.Sub(start) >= 300*time.Millisecond {
					markT, mark = now, total
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				res <- result{err: err}
				return
			}
		}
		if markT.IsZero() || !last.After(markT) {
			markT, mark = start, 0
		}
		res <- result{bps: float64(total-mark) * 8 / last.Sub(markT).Seconds()}
	}()
	c, err := from.DialTCP(netip.AddrPortFrom(to.Addr(), uint16(ln.Addr().(*net.TCPAddr).Port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	end := time.Now().Add(dur)
	for sent := int64(0); ; sent += int64(len(buf)) {
		if (dur == 0 && sent >= size) || (dur > 0 && time.Now().After(end)) {
			break
		}
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(buf); err != nil {
			c.Close()
			t.Fatal(err)
		}
	}
	c.Close()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.bps
}

// TestImpairRate: a 20 Mbit/s limit delivers 20 Mbit/s ± 20% of TCP
// goodput, in each direction, with and without a wire.
func TestImpairRate(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	a, b, c := publicTrio(t, ctx, l)
	const rate = 20_000_000
	if err := b.Impair(ctx, Impairment{Rate: rate}); err != nil {
		t.Fatal(err)
	}
	if err := c.Impair(ctx, Impairment{Rate: rate, Delay: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	check := func(name string, got float64) {
		t.Logf("%s: %.1f Mbit/s (asked %d)", name, got/1e6, rate/1_000_000)
		if got < rate*0.8 || got > rate*1.2 {
			t.Errorf("%s: %.1f Mbit/s, want %d ± 20%%", name, got/1e6, rate/1_000_000)
		}
	}
	check("up", tcpGoodput(t, b, a, 0, 2*time.Second))
	check("down", tcpGoodput(t, a, b, 0, 2*time.Second))
	check("up, wired 10ms", tcpGoodput(t, c, a, 0, 2*time.Second))
	// Removing the limit lifts it.
	if err := b.Impair(ctx, Impairment{}); err != nil {
		t.Fatal(err)
	}
	if got := tcpGoodput(t, b, a, 16<<20, 0); got < 2*rate {
		t.Errorf("after removing the limit: %.1f Mbit/s", got/1e6)
	}
}

// TestImpairLoss: 10% loss asked gives 10% lost, within a binomial
// tolerance, in each direction.
func TestImpairLoss(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	a, b, _ := publicTrio(t, ctx, l)
	const p, n = 0.10, 2000
	if err := b.Impair(ctx, Impairment{Loss: p}); err != nil {
		t.Fatal(err)
	}
	tol := 4.5 * math.Sqrt(p*(1-p)/n)
	for _, dir := range []struct {
		name     string
		from, to *Host
	}{{"up", b, a}, {"down", a, b}} {
		got := 1 - float64(countReceived(t, dir.from, dir.to, n))/n
		t.Logf("%s: %.2f%% lost of %d (asked %.0f%%, accepted %.1f%%..%.1f%%)", dir.name, got*100, n, p*100, (p-tol)*100, (p+tol)*100)
		if math.Abs(got-p) > tol {
			t.Errorf("%s: lost %.2f%%, want %.0f%% ± %.1f%%", dir.name, got*100, p*100, tol*100)
		}
	}
	// Zero removes the loss.
	if err := b.Impair(ctx, Impairment{}); err != nil {
		t.Fatal(err)
	}
	if got := countReceived(t, b, a, 500); got != 500 {
		t.Errorf("after removing the loss: %d/500 arrived", got)
	}
}

// countReceived sends n datagrams from one host to the other, paced, and
// returns how many arrived.
func countReceived(t testing.TB, from, to *Host, n int) int {
	t.Helper()
	rc, err := to.ListenUDP(netip.AddrPortFrom(to.Addr(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	sc, err := from.ListenUDP(netip.AddrPortFrom(from.Addr(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	got := make(chan int, 1)
	go func() {
		k := 0
		buf := make([]byte, 128)
		for {
			if _, err := rc.Read(buf); err != nil {
				got <- k
				return
			}
			k++
		}
	}()
	dst := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	msg := make([]byte, 100)
	for i := range n {
		sc.WriteToUDPAddrPort(msg, dst)
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // pace the burst so the receiver's buffer is not what drops
		}
	}
	// Datagrams still in flight: the count is what is measured, and the
	// lost ones never come, so there is nothing to wait for but time.
	time.Sleep(300 * time.Millisecond)
	rc.SetReadDeadline(time.Now())
	return <-got
}

// TestImpairClassification: impairing a router's WAN link (delay, rate)
// and its LAN host's link does not change how the NAT classifies, and the
// delay really is on the router's WAN.
func TestImpairClassification(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, 2*time.Minute)
	a, b, c := publicTrio(t, ctx, l)
	echoUDP(t, a, netip.AddrPortFrom(a.Addr(), 7))
	for _, tc := range []struct {
		nat       NAT
		mapping   Mapping
		filtering Filtering
	}{
		{PortRestricted, EIM, APDF},
		{FullCone, EIM, EIF},
		{Symmetric, APDM, APDF},
	} {
		name := string(tc.nat)[:4]
		rt, err := l.AddRouter(ctx, RouterConfig{Name: name, NAT: tc.nat})
		if err != nil {
			t.Fatal(err)
		}
		h, err := rt.AddHost(ctx, name+"h")
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.Impair(ctx, Impairment{Delay: 15 * time.Millisecond, Rate: 50_000_000}); err != nil {
			t.Fatal(err)
		}
		if err := h.Impair(ctx, Impairment{Delay: 5 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		if st := linkOf(&rt.Host); st.dev != "wan" {
			t.Fatalf("router link uses %s, want wan", st.dev)
		}
		waitPath(t, h, netip.AddrPortFrom(a.Addr(), 7)) // carrier back after the insertions
		rtts := pingUDP(t, h, netip.AddrPortFrom(a.Addr(), 7), 40, 5*time.Millisecond)
		med := quantile(rtts, .5)
		t.Logf("%s: median RTT through the NAT %v (asked 2×(15+5) ms)", tc.nat, med)
		// p10 reads the delay the wires deliver: load only adds to it, so
		// a busy machine moves the median (logged above) and not p10.
		if p10 := quantile(rtts, .10); len(rtts) < 38 || p10 < 40*time.Millisecond || p10 > 46*time.Millisecond {
			t.Errorf("%s: %d/40 replies, p10 %v, median %v, want about 40 ms", tc.nat, len(rtts), p10, med)
		}
		got, err := Classify(h, a, b, c)
		if err != nil {
			t.Fatalf("%s: classify: %v", tc.nat, err)
		}
		t.Logf("%-16s impaired: %s", tc.nat, got)
		if got.Mapping != tc.mapping || got.Filtering != tc.filtering {
			t.Errorf("%s impaired: mapping %q filtering %q, want %q %q", tc.nat, got.Mapping, got.Filtering, tc.mapping, tc.filtering)
		}
	}
}

// TestImpairInvalid: out-of-range settings are refused with
// ErrBadImpairment before anything is touched.
func TestImpairInvalid(t *testing.T) {
	for _, imp := range []Impairment{{Delay: -1}, {Loss: 1.5}, {Loss: math.NaN()}, {Rate: -1}, {Rate: 100}} {
		if err := imp.validate(); !errors.Is(err, ErrBadImpairment) {
			t.Errorf("%+v: err %v, want ErrBadImpairment", imp, err)
		}
	}
	if err := (Impairment{Delay: time.Second, Loss: 1, Rate: 1e9}).validate(); err != nil {
		t.Errorf("valid impairment refused: %v", err)
	}
}

// TestImpairWireStops: Lab.Close stops every goroutine of the wires.
func TestImpairWireStops(t *testing.T) {
	Require(t)
	ignore := goleak.IgnoreCurrent()
	ctx := ctxT(t, time.Minute)
	l, err := New(ctx, Config{Logger: TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := l.AddPublicHost(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.AddPublicHost(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Impair(ctx, Impairment{Delay: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// Frames in flight when Close comes.
	c, err := b.ListenUDP(netip.AddrPortFrom(b.Addr(), 0))
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		c.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(a.Addr(), 9))
	}
	c.Close()
	if n := wireGoroutines(); n != 4 {
		t.Errorf("%d wire goroutines running, want 4", n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := wireGoroutines(); n != 0 {
		t.Errorf("%d wire goroutines left after Close", n)
	}
	goleak.VerifyNone(t, ignore)
}

func wireGoroutines() int {
	buf := make([]byte, 1<<20)
	s := string(buf[:runtime.Stack(buf, true)])
	return strings.Count(s, "natlab.(*wire).read(") + strings.Count(s, "natlab.(*wire).write(")
}

// BenchmarkWireThroughput reports the TCP goodput through a wire with no
// delay (the forwarder's ceiling) next to the same link without a wire.
func BenchmarkWireThroughput(b *testing.B) {
	for _, wired := range []bool{false, true} {
		name := "direct"
		if wired {
			name = "wire"
		}
		b.Run(name, func(b *testing.B) {
			l := NewT(b)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			x, err := l.AddPublicHost(ctx, "x")
			if err != nil {
				b.Fatal(err)
			}
			y, err := l.AddPublicHost(ctx, "y")
			if err != nil {
				b.Fatal(err)
			}
			if wired {
				st := linkOf(y)
				st.mu.Lock()
				err := st.insertWire(ctx)
				st.mu.Unlock()
				if err != nil {
					b.Fatal(err)
				}
				echoUDP(b, x, netip.AddrPortFrom(x.Addr(), 7))
				waitPath(b, y, netip.AddrPortFrom(x.Addr(), 7)) // carrier back after the insertion
			}
			const size = 32 << 20
			b.SetBytes(size)
			b.ResetTimer()
			var sum float64
			for range b.N {
				sum += tcpGoodput(b, y, x, size, 0)
			}
			b.ReportMetric(sum/float64(b.N)/1e6, "Mbit/s")
			if w := y.wireOf(); w != nil {
				s := &w.stats
				frames := s.Forwarded[0].Load() + s.Forwarded[1].Load()
				b.ReportMetric(float64(frames)/b.Elapsed().Seconds()/1e3, "kframes/s")
				b.ReportMetric(float64(s.Dropped[0].Load()+s.Dropped[1].Load())/float64(b.N), "drops/op")
			}
		})
	}
}
