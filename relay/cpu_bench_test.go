package relay_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/gctarget"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// Relay CPU benchmark parameters: 1200-byte packets (as in issue 14's
// figures), sent in GSO-sized batches as quic-go hands them to a relay
// path, with at most cpuWindow packets between sender and receiver (the
// relay's default SendQueue: more overflow its queue for the receiver) so
// the receiver loses little. RELAY_CPU_WINDOW=n sets another window,
// RELAY_CPU_FLOOD=10s a longer flood (for profiles).
const (
	cpuPacket   = 1200
	cpuBatch    = 8
	cpuWindow   = 512
	cpuFloodFor = 3 * time.Second
)

// BenchmarkRelayCPU: the relay's CPU time per forwarded packet, for each
// pair of link kinds (sender-receiver). The server (rendezvous + relay,
// as `reach server` runs them, with no rate limits) runs in a child
// process (this test binary, see TestMain) pinned to one core with
// taskset; the parent links two clients and floods 1200-byte packets a→b
// for cpuFloodFor, and reads the child's CPU time (getrusage, user + system)
// and counters before and after. udp-udp, udp-tls and tls-udp must carry
// the UDP side's packets as data packets (the relay's counters say so);
// ws-ws is two WebSocket links (HTTPS, a WebSocket, the inner TLS);
// udp-udp-datagram is the older path, plain sockets so QUIC DATAGRAM
// frames. Metrics: µs/pkt (relay CPU per forwarded packet), MB/cpu-s
// (payload forwarded per relay CPU-second), MB/s (throughput at the
// receiver), loss-% (sent but not received) and relay-core-% (how busy
// the relay's core was: the figures are at that load, not at saturation).
//
//	go test -run '^$' -bench BenchmarkRelayCPU -benchtime 1x -count 3 ./relay/
//
// RELAY_CPU_PROFILE=prefix makes the child write a CPU profile of each
// flood to prefix-<kind>.pprof; RELAY_CPU_ALLOCS=prefix its allocations
// (since it started: the floods' dominate) to prefix-<kind>.allocs.pprof.
func BenchmarkRelayCPU(b *testing.B) {
	for _, k := range []struct{ name, from, to string }{
		{"udp-udp", "udp", "udp"},
		{"tls-tls", "tls", "tls"},
		{"udp-tls", "udp", "tls"},
		{"tls-udp", "tls", "udp"},
		{"ws-ws", "ws", "ws"},
		{"udp-udp-datagram", "dgram", "dgram"},
	} {
		b.Run(k.name, func(b *testing.B) {
			rc := startCPUChild(b, k.name)
			f := newCPUFlood(b, rc, k.from, k.to)
			var sum cpuResult
			b.ResetTimer()
			for range b.N {
				sum.add(f.run(b))
			}
			b.StopTimer()
			sum.report(b, k.name)
		})
	}
}

// cpuFlood is a linked sender and receiver, warmed up, ready to flood
// a→b through the relay child rc.
type cpuFlood struct {
	rc            *cpuChild
	from, to      string
	path          *relay.PeerPath
	got, lastNano *atomic.Int64
	wake          chan struct{}
	burst         []byte
	window        int64
	flood         time.Duration
}

// newCPUFlood links a sender over from and a receiver over to ("udp",
// "tls", "dgram") to rc's relay and warms them up.
func newCPUFlood(b *testing.B, rc *cpuChild, from, to string) *cpuFlood {
	b.Helper()
	f := &cpuFlood{rc: rc, from: from, to: to, got: new(atomic.Int64), lastNano: new(atomic.Int64),
		wake: make(chan struct{}, 1), window: cpuWindow, flood: cpuFloodFor}
	recv, ridB := cpuClient(b, rc.sa, to, func(identity.PeerID, []byte) {
		f.lastNano.Store(time.Now().UnixNano())
		if f.got.Add(1)%cpuBatch == 0 {
			select {
			case f.wake <- struct{}{}:
			default:
			}
		}
	})
	send, ridA := cpuClient(b, rc.sa, from, func(identity.PeerID, []byte) {})
	cpuWarmUp(b, rc, from, to, send.Path(ridB), recv.Path(ridA), f.got)
	for i := range cpuBatch {
		f.burst = append(f.burst, cpuPattern(byte(i))...)
	}
	f.path = send.Path(ridB)
	if d, err := time.ParseDuration(os.Getenv("RELAY_CPU_FLOOD")); err == nil {
		f.flood = d
	}
	if w, err := strconv.Atoi(os.Getenv("RELAY_CPU_WINDOW")); err == nil {
		f.window = int64(w)
	}
	return f
}

// run floods once and returns the counts.
func (f *cpuFlood) run(b *testing.B) cpuResult {
	b.Helper()
	rc, got := f.rc, f.got
	got0 := got.Load()
	rc.command(b, "profile")
	m0 := rc.mark(b)
	start := time.Now()
	sent, off := int64(0), int64(0)
	for end := start.Add(f.flood); time.Now().Before(end); {
		g := got.Load() - got0
		off = min(off, sent-g) // written off, then came late
		if sent-g-off+cpuBatch > f.window {
			select {
			case <-f.wake:
			case <-time.After(100 * time.Millisecond):
				// Lost on the way: write off what is missing.
				off = sent - (got.Load() - got0)
			}
			continue
		}
		f.path.SendSegments(f.burst, cpuPacket)
		sent += cpuBatch
	}
	// Drain: until nothing arrived for 200ms.
	for last := got.Load(); ; last = got.Load() {
		time.Sleep(200 * time.Millisecond)
		if got.Load() == last {
			break
		}
	}
	m1 := rc.mark(b)
	rc.command(b, "unprofile")
	r := cpuResult{
		sent: sent, got: got.Load() - got0,
		wall: time.Duration(f.lastNano.Load() - start.UnixNano()),
		cpu:  m1.cpu - m0.cpu, fwd: m1.packets - m0.packets, bytes: m1.bytes - m0.bytes,
		dataIn: m1.dataIn - m0.dataIn, dataOut: m1.dataOut - m0.dataOut, drops: m1.drops - m0.drops,
		mallocs: m1.mallocs - m0.mallocs, gcs: m1.gcs - m0.gcs,
	}
	if r.drops > 0 {
		b.Logf("relay drops: %s", rc.command(b, "drops"))
	}
	r.check(b, f.from, f.to)
	return r
}

// cpuResult is one flood's counts.
type cpuResult struct {
	sent, got              int64
	wall, cpu              time.Duration
	fwd, bytes             uint64
	dataIn, dataOut, drops uint64
	mallocs, gcs           uint64 // the relay's heap allocations and GC cycles
}

func (r *cpuResult) add(o cpuResult) {
	r.sent += o.sent
	r.got += o.got
	r.wall += o.wall
	r.cpu += o.cpu
	r.fwd += o.fwd
	r.bytes += o.bytes
	r.dataIn += o.dataIn
	r.dataOut += o.dataOut
	r.drops += o.drops
	r.mallocs += o.mallocs
	r.gcs += o.gcs
}

// check fails b unless the UDP sides' packets went as data packets (and
// none did on the datagram path), so the figure is of the path named.
func (r cpuResult) check(b *testing.B, from, to string) {
	b.Helper()
	if r.fwd == 0 {
		b.Fatalf("the relay forwarded nothing (%d sent, %d received)", r.sent, r.got)
	}
	enough := func(n uint64) bool { return n*100 >= r.fwd*95 }
	if from == "udp" && !enough(r.dataIn) {
		b.Fatalf("%d of %d forwarded packets came as data packets", r.dataIn, r.fwd)
	}
	if to == "udp" && !enough(r.dataOut) {
		b.Fatalf("%d of %d forwarded packets went as data packets", r.dataOut, r.fwd)
	}
	if from == "dgram" && r.dataIn+r.dataOut != 0 {
		b.Fatalf("data packets on the datagram path: %d in, %d out", r.dataIn, r.dataOut)
	}
}

func (r cpuResult) report(b *testing.B, name string) {
	us := float64(r.cpu.Microseconds()) / float64(r.fwd)
	mbPerCPU := float64(r.bytes) / 1e6 / r.cpu.Seconds()
	mbs := float64(r.got*cpuPacket) / 1e6 / r.wall.Seconds()
	loss := 100 * float64(r.sent-r.got) / float64(r.sent)
	b.ReportMetric(us, "µs/pkt")
	b.ReportMetric(mbPerCPU, "MB/cpu-s")
	b.ReportMetric(mbs, "MB/s")
	b.ReportMetric(loss, "loss-%")
	b.ReportMetric(100*r.cpu.Seconds()/r.wall.Seconds(), "relay-core-%")
	b.ReportMetric(r.allocs(), "allocs/pkt")
	b.ReportMetric(0, "ns/op")
	b.Logf("%s: sent %d, received %d (loss %.2f%%), relay forwarded %d (data in %d, out %d, drops %d), relay CPU %v over %v: %.2f µs/pkt, %.0f MB/cpu-s, %.1f MB/s; relay heap allocations %.2f a packet, %d GC cycles",
		name, r.sent, r.got, loss, r.fwd, r.dataIn, r.dataOut, r.drops, r.cpu, r.wall, us, mbPerCPU, mbs, r.allocs(), r.gcs)
}

// allocs is the relay's heap allocations per forwarded packet (the
// whole process's: forwarding, and whatever else ran meanwhile).
func (r cpuResult) allocs() float64 { return float64(r.mallocs) / float64(max(r.fwd, 1)) }

// cpuWarmUp sends packets both ways until each UDP side's link carries
// data packets both ways (its probe was answered and the relay saw one of
// its data packets), so the flood measures that path from its start.
func cpuWarmUp(b *testing.B, rc *cpuChild, from, to string, ab, ba *relay.PeerPath, got *atomic.Int64) {
	b.Helper()
	p := cpuPattern(1)
	until := func(what string, send *relay.PeerPath, done func(before, now cpuMark) bool) {
		before := rc.mark(b)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			send.Send(p)
			time.Sleep(20 * time.Millisecond)
			if done(before, rc.mark(b)) {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("warm-up: %s never happened", what)
			}
		}
	}
	g0 := got.Load()
	until("a packet a→b", ab, func(cpuMark, cpuMark) bool { return got.Load() > g0 })
	if to == "udp" {
		until("b sends data packets", ba, func(m0, m1 cpuMark) bool { return m1.dataIn > m0.dataIn })
	}
	if from == "udp" {
		until("a sends data packets", ab, func(m0, m1 cpuMark) bool { return m1.dataIn > m0.dataIn })
	}
	if to == "udp" {
		until("b gets data packets", ab, func(m0, m1 cpuMark) bool { return m1.dataOut > m0.dataOut })
	}
}

// cpuClient links a relay client over kind ("udp": a pathsock socket, so
// data packets; "dgram": a plain UDP socket, so DATAGRAM frames; "tls").
func cpuClient(b *testing.B, sa rendezvous.ServerAddr, kind string, deliver func(identity.PeerID, []byte)) (*relay.Client, identity.PeerID) {
	b.Helper()
	k, err := identity.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	cfg := relay.ClientConfig{Key: k, Deliver: deliver, Logger: quiet()}
	switch kind {
	case "tls":
		cfg.Dialers = []relay.LinkDialer{relay.TLSDialer{}}
	case "ws":
		cfg.Dialers = []relay.LinkDialer{relay.WSDialer{}}
	case "udp", "dgram":
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		var pc net.PacketConn = u
		if kind == "udp" {
			pc = pathsock.New(u)
		}
		tr := &quic.Transport{Conn: pc}
		b.Cleanup(func() { tr.Close(); u.Close() })
		cfg.Socket, cfg.Dialers = tr, []relay.LinkDialer{relay.UDPDialer{Socket: tr}}
	}
	c, err := relay.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, sa); err != nil {
		b.Fatal(err)
	}
	return c, k.ID()
}

// cpuChild is BenchmarkRelayCPU's server process (and BenchmarkRelayScale's
// client farms: the same pipes).
type cpuChild struct {
	sa    rendezvous.ServerAddr
	pid   int
	in    io.Writer
	lines chan string
}

// cpuMark is the child's CPU time and relay counters at one moment.
type cpuMark struct {
	cpu                                    time.Duration
	packets, bytes, dataIn, dataOut, drops uint64
	mallocs, gcs                           uint64 // heap objects allocated, GC cycles (runtime.MemStats)
}

// startCPUChild starts the server process, pinned to the last core when
// taskset is there.
func startCPUChild(b *testing.B, kind string) *cpuChild {
	b.Helper()
	return startCPUChildNice(b, kind, 0)
}

// startCPUChildNice is startCPUChild at nice level nice.
func startCPUChildNice(b *testing.B, kind string, nice int) *cpuChild {
	b.Helper()
	cpu := -1
	if _, err := exec.LookPath("taskset"); err == nil && runtime.NumCPU() > 1 {
		cpu = runtime.NumCPU() - 1
	} else {
		b.Log("taskset not found: the relay is not pinned to a core")
	}
	rc := startChild(b, "RELAY_CPU_CHILD="+kind, cpu, nice)
	line := rc.line(b, 30*time.Second)
	cs, ok := strings.CutPrefix(line, "relay ready ")
	if !ok {
		b.Fatalf("relay child said %q", line)
	}
	f := strings.Fields(cs)
	var err error
	if rc.sa, err = rendezvous.ParseServerAddr(f[0]); err != nil {
		b.Fatal(err)
	}
	if len(f) > 1 {
		b.Logf("relay child: %s", strings.Join(f[1:], " "))
	}
	return rc
}

// startChild runs this test binary again with env set (TestMain picks
// the child's part by it), on core cpu (-1: any) at nice level nice,
// talking over its stdin and stdout; it ends when its stdin closes (at
// b's cleanup).
func startChild(b *testing.B, env string, cpu, nice int) *cpuChild {
	b.Helper()
	args := []string{os.Args[0], "-test.run=^$"}
	if cpu >= 0 {
		args = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, args...)
	}
	if nice != 0 {
		args = append([]string{"nice", "-n", strconv.Itoa(nice)}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env)
	cmd.Stderr = os.Stderr
	// A child outlives nothing: a killed benchmark takes it along.
	cmd.SysProcAttr = childAttr()
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	rc := &cpuChild{pid: cmd.Process.Pid, in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			rc.lines <- sc.Text()
		}
		close(rc.lines)
	}()
	return rc
}

func (rc *cpuChild) line(b *testing.B, wait time.Duration) string {
	b.Helper()
	select {
	case l, ok := <-rc.lines:
		if !ok {
			b.Fatal("the relay child exited")
		}
		return l
	case <-time.After(wait):
		b.Fatal("the relay child did not answer")
	}
	return ""
}

// command sends the child cmd and waits for its "ok".
func (rc *cpuChild) command(b *testing.B, cmd string) string {
	b.Helper()
	fmt.Fprintln(rc.in, cmd)
	l := rc.line(b, 10*time.Second)
	if !strings.HasPrefix(l, "ok") {
		b.Fatalf("relay child: %s: %s", cmd, l)
	}
	return l
}

// mark reads the child's CPU time and counters.
func (rc *cpuChild) mark(b *testing.B) cpuMark {
	b.Helper()
	f := strings.Fields(rc.command(b, "mark"))
	if len(f) != 9 {
		b.Fatalf("relay child: mark: %q", f)
	}
	var v [8]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	return cpuMark{cpu: time.Duration(v[0]) * time.Microsecond, packets: v[1], bytes: v[2], dataIn: v[3], dataOut: v[4], drops: v[5],
		mallocs: v[6], gcs: v[7]}
}

// relayCPUChild is BenchmarkRelayCPU's server process: rendezvous +
// relay on loopback without rate limits. It says "relay ready <connect
// string>" and then answers commands on stdin until it closes: "mark"
// (CPU time in µs, user + system, and the relay's counters), "profile"
// and "unprofile" (a CPU profile to $RELAY_CPU_PROFILE-<kind>.pprof).
func relayCPUChild(kind string) error {
	rcfg := relay.ServerConfig{PeerRate: -1, TotalRate: -1, ConnRate: -1, MaxLinksPerIP: -1, Logger: quiet()}
	// RELAY_NO_GRO=1: the server's UDP socket without GRO (comparisons).
	scfg := rendezvous.ServerConfig{Logger: quiet(), DisableGRO: os.Getenv("RELAY_NO_GRO") != ""}
	if kind == "scale" {
		// BenchmarkRelayScale: room for its idle peers, all from loopback.
		rcfg.MaxClients = 1 << 20
		scfg.MaxPeers = 1 << 20
		scfg.Limits.Disable = true
		scfg.Park.After = -1 // registrations stay connected (the default parks after 60 s)
		if os.Getenv("RELAY_SCALE_PARK") != "" {
			// Registrations park after 1 s idle (ServerConfig.Park).
			scfg.Park.After = time.Second
		}
	}
	// The GC target `reach server` runs with (--gc-percent; GOGC and
	// GOMEMLIMIT in the environment win); RELAY_SERVER_GOGC sets another.
	gc, err := gctarget.Apply(gctarget.Config{Percent: envInt("RELAY_SERVER_GOGC", 0)}, os.Getenv)
	if err != nil {
		return err
	}
	if os.Getenv("RELAY_CPU_ALLOCS") != "" {
		runtime.MemProfileRate = 64 // every allocation, nearly
	}
	rl := relay.NewServer(rcfg)
	scfg.Protocols = map[string]rendezvous.Protocol{relay.ALPN: rl}
	rs, err := rendezvous.StartServer(context.Background(), scfg, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		return err
	}
	defer rs.Close()
	var cpus unix.CPUSet
	unix.SchedGetaffinity(0, &cpus)
	fmt.Printf("relay ready %s cpus=%d gomaxprocs=%d gogc=%d\n", rs.ConnectString(), cpus.Count(), runtime.GOMAXPROCS(0), gc.Percent)
	var prof *os.File
	var nprof int
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "mark":
			var ru unix.Rusage
			unix.Getrusage(unix.RUSAGE_SELF, &ru)
			us := ru.Utime.Sec*1e6 + ru.Utime.Usec + ru.Stime.Sec*1e6 + ru.Stime.Usec
			st := rl.Stats()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Printf("ok %d %d %d %d %d %d %d %d\n", us, st.Packets, st.Bytes, st.DataIn, st.DataOut, st.Drops, ms.Mallocs, ms.NumGC)
		case "drops":
			fmt.Println("ok", rl.Metrics().Drops)
		case "gc":
			runtime.GC()
			fmt.Println("ok")
		case "peers":
			rss, _ := vmRSS(os.Getpid())
			m := rl.Metrics()
			st := rs.Stats()
			fmt.Println("ok", st.Peers, rl.Stats().Clients, m.Detached, rss, m.Connections["udp"], st.Parked)
		case "profile":
			if p := os.Getenv("RELAY_CPU_PROFILE"); p != "" && prof == nil {
				name := p + "-" + kind + ".pprof"
				if kind == "scale" {
					// Each of BenchmarkRelayScale's floods: -scale-1 and on.
					nprof++
					name = fmt.Sprintf("%s-%s-%d.pprof", p, kind, nprof)
				}
				if prof, err = os.Create(name); err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(prof); err != nil {
					return err
				}
			}
			fmt.Println("ok")
		case "unprofile":
			if prof != nil {
				pprof.StopCPUProfile()
				prof.Close()
				prof = nil
			}
			if p := os.Getenv("RELAY_CPU_ALLOCS"); p != "" {
				// Where the child allocated, since it started.
				if err := writeAllocs(p + "-" + kind + ".allocs.pprof"); err != nil {
					return err
				}
			}
			fmt.Println("ok")
		default:
			fmt.Println("unknown command")
		}
	}
	return nil
}

// writeAllocs writes the process's allocation profile to name.
func writeAllocs(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

// cpuPattern is a 1200-byte packet that starts as a QUIC short header.
func cpuPattern(seed byte) []byte {
	p := make([]byte, cpuPacket)
	for i := range p {
		p[i] = seed + byte(i)
	}
	p[0] = 0x40 | seed&0x3f
	return p
}
