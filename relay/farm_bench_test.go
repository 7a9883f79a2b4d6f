package relay_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A client farm is a child process (this test binary, see TestMain) that
// holds part of BenchmarkRelayScale's simulated idle peers, so that they
// are neither in the server's process nor in the flood pair's.

// farmPeers is how many simulated peers one farm holds by default
// (RELAY_SCALE_PER_FARM sets another number): 25,000, so 100,000 peers
// are four farms linked one after another (2,500 sockets each at 10 peers
// a socket, well under a process's 20,000 open files). With peers that
// kept their real clients (RELAY_SCALE_FULL) one farm of 100,000, or four
// linking at once, fell into a collapse near 80,000 peers: each linking
// farm's collections marked a heap of 100 KB a peer held
// (docs/benchmarks.md, "Clients out of the pair's process").
const farmPeers = 25000

// farmGCPercent is the full farms' GOGC (RELAY_SCALE_FULL): once linked their peers allocate
// little, and a lower target keeps their heap (what bounds how many fit
// on this machine) closer to what is live.
const farmGCPercent = 25

// farm is one farm process as the benchmark sees it.
type farm struct {
	*cpuChild
	peers int
}

// farmStat is a farm's resident set and CPU time at one moment.
type farmStat struct {
	rss int64
	cpu time.Duration
}

// startFarms starts ceil(peers/perFarm) farms, each linking its share of
// peers to the server at cs (registered over UDP, linked over link: "udp"
// or "" for none) at nice level nice, one after another: a farm starts
// once the one before says it is ready (its peers linked), so that only
// one farm at a time links (workers handshakes at a time) and collects
// its handshakes' garbage over its own heap alone, the farms before it
// idling meanwhile. Up to 1% of a farm's peers may fail to link (the
// caller checks what the server holds).
func startFarms(b *testing.B, cs string, peers, perFarm int, link string, nice int) []*farm {
	b.Helper()
	n := (peers + perFarm - 1) / perFarm
	// Handshakes at a time: 48 for keepalive-only peers (linking is
	// bound by the handshakes' CPU, not by a farm's heap), 8 for peers
	// that keep their real clients (RELAY_SCALE_FULL).
	workers := envInt("RELAY_SCALE_WORKERS", 48)
	if os.Getenv("RELAY_SCALE_FULL") != "" {
		workers = envInt("RELAY_SCALE_WORKERS", 8)
	}
	farms := make([]*farm, n)
	for i := range farms {
		k := peers / n
		if i < peers%n {
			k++
		}
		env := fmt.Sprintf("RELAY_SCALE_FARM=%s %d %s %d", cs, k, cmpOr(link, "-"), workers)
		f := &farm{cpuChild: startChild(b, env, -1, nice), peers: k}
		farms[i] = f
		select {
		case l, ok := <-f.lines:
			if !ok {
				b.Fatalf("client farm %d: exited", i)
			} else if r, ok := strings.CutPrefix(l, "farm ready "); !ok {
				b.Fatalf("client farm %d: %s", i, l)
			} else {
				b.Logf("farm %d (%d peers): %s", i, f.peers, r)
			}
		case <-time.After(2 * time.Hour):
			b.Fatalf("client farm %d: not ready in 2 h", i)
		}
	}
	return farms
}

func cmpOr(s, or string) string {
	if s == "" {
		return or
	}
	return s
}

// pin moves every thread of process pid onto cpus (taskset's list).
func pin(b *testing.B, pid int, cpus string) {
	b.Helper()
	if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		b.Fatalf("taskset %d: %v: %s", pid, err, out)
	}
}

// renice sets every thread of process pid to nice level nice (threads
// it starts later inherit it from the thread that starts them).
func renice(pid, nice int) error {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, _ := strconv.Atoi(t.Name())
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
			return fmt.Errorf("renice %d: %w", tid, err)
		}
	}
	return nil
}

// stat reads a farm's RSS and CPU time.
func (f *farm) stat(b *testing.B) farmStat {
	b.Helper()
	var s farmStat
	var us int64
	if _, err := fmt.Sscan(strings.TrimPrefix(f.command(b, "stat"), "ok "), &s.rss, &us); err != nil {
		b.Fatal(err)
	}
	s.cpu = time.Duration(us) * time.Microsecond
	return s
}

// farmStats sums the farms' stats.
func farmStats(b *testing.B, farms []*farm) farmStat {
	b.Helper()
	var sum farmStat
	for _, f := range farms {
		s := f.stat(b)
		sum.rss += s.rss
		sum.cpu += s.cpu
	}
	return sum
}

// selfCPU is this process's CPU time (user + system).
func selfCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// farmChild is a client farm: spec is "<connect string> <peers> <link>
// <workers>" (link "-": registered only). It links its peers, says "farm
// ready <linked> <left out> <RSS> <seconds>" (or "farm failed <error>"),
// and answers commands on stdin until it closes: "stat" (RSS and CPU
// time in µs), "keep" (keepalive counters, lightStats), "heap PATH" (a heap profile after a GC), "cpuprofile PATH
// SECONDS".
func farmChild(spec string) error {
	var cs, link string
	var peers, workers int
	if _, err := fmt.Sscan(spec, &cs, &peers, &link, &workers); err != nil {
		return fmt.Errorf("farm %q: %w", spec, err)
	}
	if link == "-" {
		link = ""
	}
	raiseFileLimit()
	// A light farm's heap is small (what its handshakes in flight
	// hold): GC at 400% while it links (at 25 the collector took a
	// third of its CPU), Go's default once linked.
	gcLinking, gcLinked := 400, 100
	if os.Getenv("RELAY_SCALE_FULL") != "" {
		gcLinking, gcLinked = farmGCPercent, farmGCPercent
	}
	debug.SetGCPercent(gcLinking)
	// Commands, read from the start: the farm ends when its stdin closes,
	// even while it links.
	cmds := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmds <- sc.Text()
		}
		os.Exit(0) // the peers are not closed one by one: the benchmark is over
	}()
	start := time.Now()
	// Up to 1% left out: the benchmark fails below 99% held. Peers are
	// keepalive-only once parked and detached (farm_light_bench_test.go),
	// or with RELAY_SCALE_FULL=1 keep their real clients (100 to a
	// socket, 100–145 KB a peer in the farm).
	stopProfile := func() {}
	if p := os.Getenv("RELAY_SCALE_FARM_LINK_PROFILE"); p != "" {
		// A CPU profile of the farm while it links (each farm overwrites it).
		if f, err := os.Create(p); err == nil && pprof.StartCPUProfile(f) == nil {
			stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
		}
	}
	var light *lightFarm
	var failed int
	var err error
	if os.Getenv("RELAY_SCALE_FULL") != "" {
		_, failed, err = linkPeers(cs, peers, "udp", link, true, workers, peers/100)
	} else {
		light, failed, err = linkLightPeers(cs, peers, link, workers, envInt("RELAY_SCALE_PER_SOCKET", lightPerSocket), peers/100)
	}
	stopProfile()
	debug.SetGCPercent(gcLinked)
	if err != nil {
		fmt.Println("farm failed", err)
		return nil
	}
	runtime.GC()
	debug.FreeOSMemory()
	rss, _ := vmRSS(os.Getpid())
	fmt.Printf("farm ready %d %d %d %.0f\n", peers-failed, failed, rss, time.Since(start).Seconds())
	for line := range cmds {
		cmd, arg, _ := strings.Cut(line, " ")
		switch cmd {
		case "stat":
			rss, _ := vmRSS(os.Getpid())
			fmt.Println("ok", rss, selfCPU().Microseconds())
		case "keep":
			// Keepalives sent and answered: park sent, PINGs sent, park
			// PONGs, link PONGs, "unknown" hints, other datagrams.
			var st lightStats
			if light != nil {
				st = light.stats()
			}
			fmt.Println("ok", st.sentPark, st.sentPing, st.pongPark, st.pongPing, st.unknown, st.other)
		case "heap":
			runtime.GC()
			f, err := os.Create(arg)
			if err == nil {
				err = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
			fmt.Println("ok", err)
		case "cpuprofile": // PATH SECONDS
			path, secs, _ := strings.Cut(arg, " ")
			d, _ := strconv.Atoi(secs)
			f, err := os.Create(path)
			if err == nil {
				err = pprof.StartCPUProfile(f)
				time.Sleep(time.Duration(d) * time.Second)
				pprof.StopCPUProfile()
				f.Close()
			}
			fmt.Println("ok", err)
		default:
			fmt.Println("unknown command")
		}
	}
	return nil
}
