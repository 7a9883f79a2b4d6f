package relay_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/gctarget"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// idleKinds are what BenchmarkRelayIdleMemory measures: a peer
// registered with the rendezvous server (over QUIC, or over TLS on TCP as
// a node whose UDP is blocked does), linked to the relay (over QUIC or
// TLS), or both as a real node is.
var idleKinds = []struct {
	name     string
	reg      string // "", "udp", "tcp", "ws" (TLS in a WebSocket): the rendezvous registration
	link     string // "", "udp", "tls", "ws" (WebSocket): the relay link
	sameSock bool   // registration and link share the node's socket
	park     bool   // the server parks idle registrations (after 1 s)
}{
	{"reg", "udp", "", false, false},
	{"reg-parked", "udp", "", false, true},
	{"reg-tcp", "tcp", "", false, false},
	{"udp", "", "udp", false, false},
	{"tls", "", "tls", false, false},
	{"reg+udp", "udp", "udp", true, false},
	{"reg-parked+udp", "udp", "udp", true, true},
	{"reg-tcp+tls", "tcp", "tls", false, false},
	{"ws", "", "ws", false, false},
	{"reg-ws+ws", "ws", "ws", false, false}, // a node behind a proxy that passes only HTTP
}

// BenchmarkRelayIdleMemory: the server's memory per idle peer, as the
// growth of its resident set (VmRSS) with RELAY_IDLE_PEERS (default
// 10,000) idle peers, for each kind of peer (idleKinds). The server
// (rendezvous + relay, per-source limits off) runs alone in a child
// process (this test binary, see TestMain); the peers run in the
// benchmark's process, many to a UDP socket (peersPerSocket) and, over
// TCP, from several loopback addresses (tcpSources). Besides B/peer
// (RSS) it reports the server's heap in use after a GC, its goroutine
// stacks and its goroutines, each per peer. Kinds with TCP connections
// get fewer peers if the open files limit cannot be raised (see
// raiseFileLimit). With RELAY_IDLE_PROFILE=DIR
// the server writes a heap profile (DIR/KIND.heap) and its goroutines
// (DIR/KIND.goroutines) with the peers connected. Tailscale's DERP holds
// an idle client in about 25 KB of RSS on this machine.
//
//	go test -run '^$' -bench BenchmarkRelayIdleMemory -benchtime 1x ./relay/
func BenchmarkRelayIdleMemory(b *testing.B) {
	peers := 10000
	if s := os.Getenv("RELAY_IDLE_PEERS"); s != "" {
		peers, _ = strconv.Atoi(s)
	}
	profDir := os.Getenv("RELAY_IDLE_PROFILE")
	raiseFileLimit()
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	for _, k := range idleKinds {
		b.Run(k.name, func(b *testing.B) {
			peers := peers
			// A TCP connection is a descriptor in the server and one here.
			if tcp := b2i(k.reg == "tcp" || k.reg == "ws") + b2i(k.link == "tls" || k.link == "ws"); tcp > 0 && peers*tcp > int(lim.Cur)-500 {
				peers = (int(lim.Cur) - 500) / tcp
				b.Logf("%s: %d peers: %d open files allowed", k.name, peers, lim.Cur)
			}
			for range b.N {
				srv := startMemServer(b, k.park)
				before := srv.measure(b)
				nodes, err := linkIdlePeers(srv.cs, peers, k.reg, k.link, k.sameSock)
				defer nodes.close()
				if err != nil {
					b.Fatal(err)
				}
				time.Sleep(3 * time.Second) // handshakes' garbage settles, keep-alives start
				if k.park {
					time.Sleep(3 * time.Second) // the last ones park, and their connections close
				}
				// RELAY_IDLE_WAIT: how much longer the peers stay idle
				// before the measure (the runtime returns the handshakes'
				// garbage to the system over minutes, not seconds).
				if d, err := time.ParseDuration(os.Getenv("RELAY_IDLE_WAIT")); err == nil {
					time.Sleep(d)
				}
				after := srv.measure(b)
				// A peer whose keep-alives were starved of CPU may have
				// timed out meanwhile (the two cores are shared): its
				// registration comes back, its link does not.
				for _, n := range []struct {
					what      string
					got, want int
				}{{"registered", after.registered, peers * b2i(k.reg != "")}, {"linked", after.linked, peers * b2i(k.link != "")}} {
					if n.got != n.want {
						b.Logf("%d peers %s, want %d", n.got, n.what, n.want)
					}
					if n.got < n.want*99/100 {
						b.Fatalf("%d peers %s, want %d", n.got, n.what, n.want)
					}
				}
				if profDir != "" {
					srv.command(b, "profile "+filepath.Join(profDir, k.name))
				}
				per := func(f func(memFigures) float64) float64 { return (f(after) - f(before)) / float64(peers) }
				rss := per(func(m memFigures) float64 { return m.rss })
				b.ReportMetric(rss, "B/peer")
				b.ReportMetric(per(func(m memFigures) float64 { return m.settled }), "settledB/peer")
				b.ReportMetric(per(func(m memFigures) float64 { return m.heap }), "heapB/peer")
				b.ReportMetric(per(func(m memFigures) float64 { return m.stacks }), "stackB/peer")
				b.ReportMetric(per(func(m memFigures) float64 { return m.goroutines }), "goroutines/peer")
				if k.link == "udp" {
					b.Logf("%d of %d links detached", after.detached, after.linked)
				}
				if k.park {
					b.Logf("%d of %d registrations parked", after.parked, after.registered)
				}
				b.Logf("stacks used %.1f KB/peer", per(func(m memFigures) float64 { return m.stackUsed })/1024)
				b.Logf("%s: %d idle peers: RSS %.1f KB each (%.0f -> %.0f MB); heap %.1f KB, stacks %.1f KB, %.2f goroutines each",
					k.name, peers, rss/1024, before.rss/1e6, after.rss/1e6,
					per(func(m memFigures) float64 { return m.heap })/1024,
					per(func(m memFigures) float64 { return m.stacks })/1024,
					per(func(m memFigures) float64 { return m.goroutines }))
				nodes.close()
				srv.stop()
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// peersPerSocket is how many simulated peers share one UDP socket: the
// server keeps nothing per client socket, and 10,000 peers then need 100
// sockets rather than 10,000.
const peersPerSocket = 100

// tcpSources is how many loopback addresses (127.0.0.1 and on) the
// simulated peers' TCP connections come from, so that 100,000 of them fit
// in the ephemeral ports.
const tcpSources = 8

// memServer is the server's child process.
type memServer struct {
	cmd   *exec.Cmd
	cs    string
	stdin *os.File
	out   *bufio.Scanner
}

// memFigures are the server's memory figures at one moment.
type memFigures struct {
	rss, heap, stacks, goroutines float64
	registered, linked, detached  int
	parked                        int     // registrations parked (ServerConfig.Park)
	settled                       float64 // RSS once the runtime returned its free memory (debug.FreeOSMemory)
	stackUsed                     float64 // the used part of goroutine stacks
}

func startMemServer(b *testing.B, park bool) *memServer {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RELAY_MEM_SERVER=1")
	if park {
		cmd.Env = append(cmd.Env, "RELAY_MEM_PARK=1")
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	s := &memServer{cmd: cmd, out: bufio.NewScanner(out)}
	s.stdin = in.(*os.File)
	if !s.out.Scan() {
		cmd.Process.Kill()
		cmd.Wait()
		b.Fatal("memory server: no connect string")
	}
	s.cs = s.out.Text()
	return s
}

// command sends one line to the server and returns its one-line answer.
func (s *memServer) command(b *testing.B, line string) string {
	fmt.Fprintln(s.stdin, line)
	if !s.out.Scan() {
		b.Fatalf("memory server: no answer to %q", line)
	}
	return s.out.Text()
}

// measure reads the server's RSS from outside, then asks it for its heap
// and goroutines (after a GC, which does not change the RSS just read).
func (s *memServer) measure(b *testing.B) memFigures {
	rss, err := vmRSS(s.cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	m := memFigures{rss: float64(rss)}
	if _, err := fmt.Sscan(s.command(b, "mem"), &m.heap, &m.stacks, &m.goroutines, &m.registered, &m.linked, &m.stackUsed, &m.detached, &m.parked); err != nil {
		b.Fatal(err)
	}
	s.command(b, "free")
	if rss, err = vmRSS(s.cmd.Process.Pid); err != nil {
		b.Fatal(err)
	}
	m.settled = float64(rss)
	return m
}

func (s *memServer) stop() {
	s.stdin.Close()
	s.cmd.Wait()
}

// vmRSS is a process's resident set in bytes.
func vmRSS(pid int) (int64, error) {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(st)) {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// raiseFileLimit lifts the open files limit (the process's own, and so
// its children's): 10,000 TLS links are 10,000 descriptors on each side.
// Without CAP_SYS_RESOURCE it stays at the hard limit, and kinds with two
// TCP connections a peer get fewer peers.
func raiseFileLimit() {
	lim := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// memServerChild is BenchmarkRelayIdleMemory's server process: it runs
// rendezvous + relay on loopback with the per-source limits off, prints
// its connect string, and answers commands on stdin until it closes:
// "mem" (heap in use and goroutine stacks after a GC, goroutines, peers
// registered and linked) and
// "profile PREFIX" (PREFIX.heap, PREFIX.goroutines).
func memServerChild() error {
	raiseFileLimit()
	// The GC target `reach server` runs with; RELAY_SERVER_GOGC sets another.
	if _, err := gctarget.Apply(gctarget.Config{Percent: envInt("RELAY_SERVER_GOGC", 0)}, os.Getenv); err != nil {
		return err
	}
	rl := relay.NewServer(relay.ServerConfig{ConnRate: -1, MaxLinksPerIP: -1, MaxClients: 1 << 20, Logger: quiet()})
	park := rendezvous.ParkConfig{After: -1} // the unparked kinds: off
	if os.Getenv("RELAY_MEM_PARK") != "" {
		park.After = time.Second
	}
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Park:      park,
		Logger:    quiet(),
		MaxPeers:  1 << 20,
		Limits:    rendezvous.LimitConfig{Disable: true},
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
	}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		return err
	}
	defer rs.Close()
	fmt.Println(rs.ConnectString())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "mem":
			runtime.GC()
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			ms := []metrics.Sample{{Name: "/gc/scan/stack:bytes"}}
			metrics.Read(ms)
			st := rs.Stats()
			fmt.Println(m.HeapInuse, m.StackInuse, runtime.NumGoroutine(), st.Peers, rl.Stats().Clients, ms[0].Value.Uint64(), rl.Metrics().Detached, st.Parked)
		case "free":
			runtime.GC()
			debug.FreeOSMemory()
			fmt.Println("freed")
		case "profile":
			err := writeProfiles(arg)
			fmt.Println("profiled", err)
		default:
			fmt.Println("unknown command")
		}
	}
	return nil
}

func writeProfiles(prefix string) error {
	runtime.GC()
	debug.FreeOSMemory()
	for _, p := range []struct {
		name, ext string
		debug     int
	}{{"heap", ".heap", 0}, {"goroutine", ".goroutines", 1}} {
		f, err := os.Create(prefix + p.ext)
		if err != nil {
			return err
		}
		err = pprof.Lookup(p.name).WriteTo(f, p.debug)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// idleNodes are the simulated peers of one measurement.
type idleNodes struct {
	mu      sync.Mutex
	closers []func()
}

func (n *idleNodes) add(f func()) {
	n.mu.Lock()
	n.closers = append(n.closers, f)
	n.mu.Unlock()
}

func (n *idleNodes) close() {
	n.mu.Lock()
	cl := n.closers
	n.closers = nil
	n.mu.Unlock()
	for i := len(cl) - 1; i >= 0; i-- {
		cl[i]()
	}
}

// linkIdlePeers connects count peers to the server at cs: registered
// over reg ("udp": QUIC, "tcp": TLS; "": not registered) and linked to
// the relay over link ("udp", "tls", "ws"; "": not linked). With sameSock a
// peer's registration and link come from one socket, as a node's do. A
// peer that fails three times is an error.
func linkIdlePeers(cs string, count int, reg, link string, sameSock bool) (*idleNodes, error) {
	nodes, _, err := linkPeers(cs, count, reg, link, sameSock, 8, 0)
	return nodes, err
}

// linkPeers is linkIdlePeers with workers handshakes at a time, and up to
// tolerate peers that failed three times left out (failed says how many).
func linkPeers(cs string, count int, reg, link string, sameSock bool, workers, tolerate int) (_ *idleNodes, failed int, err error) {
	sa, err := rendezvous.ParseServerAddr(cs)
	if err != nil {
		return nil, 0, err
	}
	nodes := new(idleNodes)
	// Sockets are pathsock's, as a node's: relay links over UDP take
	// their data packets on them (by token: many links share one) and
	// detach.
	perSock := peersPerSocket
	sockets := map[int]*quic.Transport{}
	socket := func(i int) (*quic.Transport, error) {
		nodes.mu.Lock()
		defer nodes.mu.Unlock()
		if tr := sockets[i/perSock]; tr != nil {
			return tr, nil
		}
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		tr := &quic.Transport{Conn: pathsock.New(uc)}
		sockets[i/perSock] = tr
		nodes.closers = append(nodes.closers, func() { tr.Close(); uc.Close() })
		return tr, nil
	}
	dialTCP := func(i int) func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%tcpSources))}}
		return d.DialContext
	}
	// one connects peer i; on failure it closes what it opened.
	one := func(i int) (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var closers []func()
		defer func() {
			if err != nil {
				for _, f := range closers {
					f()
				}
				return
			}
			for _, f := range closers {
				nodes.add(f)
			}
		}()
		k, err := identity.GenerateKey()
		if err != nil {
			return err
		}
		var regSock, linkSock *quic.Transport
		if reg == "udp" {
			if regSock, err = socket(i); err != nil {
				return err
			}
		}
		if link == "udp" {
			linkSock = regSock
			if !sameSock {
				// Another socket for the link: i's neighbour in a second range.
				if linkSock, err = socket(count + i); err != nil {
					return err
				}
			}
		}
		if reg != "" {
			rc, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: k, Servers: []rendezvous.ServerAddr{sa},
				Transport: regSock, ForceTCP: reg == "tcp" || reg == "ws", WebSocket: reg == "ws", DialTCP: dialTCP(i), DialTimeout: 15 * time.Second})
			if err != nil {
				return err
			}
			closers = append(closers, func() { rc.Close() })
			if err := rc.Start(ctx); err != nil {
				return fmt.Errorf("peer %d: register: %w", i, err)
			}
		}
		if link != "" {
			var d relay.LinkDialer = relay.TLSDialer{DialTCP: dialTCP(i)}
			switch link {
			case "udp":
				d = relay.UDPDialer{Socket: linkSock}
			case "ws":
				d = relay.WSDialer{DialTCP: dialTCP(i)}
			}
			c, err := relay.NewClient(relay.ClientConfig{Key: k, Dialers: []relay.LinkDialer{d}, DialTimeout: 15 * time.Second})
			if err != nil {
				return err
			}
			closers = append(closers, func() { c.Close() })
			if _, err := c.Connect(ctx, sa); err != nil {
				return fmt.Errorf("peer %d: link: %w", i, err)
			}
		}
		return nil
	}
	// A few handshakes at a time, each peer tried up to three times: the
	// two cores are shared, and a handshake starved of CPU times out.
	errs := make(chan error, workers)
	next := make(chan int)
	var nFailed atomic.Int64
	for range workers {
		go func() {
			var err error
			for i := range next {
				for try := 0; err == nil; try++ {
					e := one(i)
					if e == nil {
						break
					}
					if try == 2 {
						if nFailed.Add(1) > int64(tolerate) {
							err = e
						} else {
							fmt.Fprintf(os.Stderr, "left out: %v\n", e)
						}
						break
					}
				}
			}
			errs <- err
		}()
	}
	start := time.Now()
	for i := range count {
		next <- i
		if i%2000 == 0 && i > 0 {
			fmt.Fprintf(os.Stderr, "%d peers in %v\n", i, time.Since(start).Round(time.Second))
		}
	}
	close(next)
	for range workers {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return nodes, int(nFailed.Load()), err
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }
