package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/stream"
	"github.com/reachp2p/reach/supernode"
)

// The core benchmarks compare reach with bare quic-go between the same two
// lab hosts, through the same NATs, in one run, so the ratio means something
// on a shared, noisy machine:
//
//	go test -run '^$' -bench 'BenchmarkLab' -count 5 -benchtime 3x ./lab/e2e
//
// Each benchmark builds its lab, nodes and bare QUIC connections once; the
// sub-benchmarks (and every -count repetition) reuse them. See
// docs/benchmarks.md for the figures.

const (
	// labBenchBytes is what one throughput iteration moves, on one new
	// stream, in labBenchChunk writes.
	labBenchBytes = 64 << 20
	labBenchChunk = 64 << 10
	// labBarePort is the local port of the bare quic-go sockets. Masquerade
	// keeps a free source port, so behind a port-restricted NAT the
	// socket's external address is the router's WAN address and this port.
	labBarePort = 41000
	// labAccessDelay is the one-way delay on each peer router's WAN link in
	// BenchmarkLabConnect (issue 12 sets 20 ms): a peer-to-peer round trip
	// crosses two such links twice, 4 × 20 ms = 80 ms.
	labAccessDelay = 20 * time.Millisecond
)

// BenchmarkLabThroughput: one stream's throughput over reach and over bare
// quic-go between the same two hosts. reach-holepunch and bare-quic run
// between two hosts behind two different port-restricted NATs (reach must
// win by holepunch; bare quic-go runs over a hand-punched mapping);
// reach-direct and bare-quic-public between two public hosts. Both use the
// flow-control windows of stream.QUICConfig(stream.Config{}) and the same
// kind of socket (dual-stack *net.UDPConn). paired-holepunch and
// paired-public interleave the two and report reach/bare directly. No link
// impairment: this measures what reach costs on top of quic-go.
func BenchmarkLabThroughput(b *testing.B) {
	s := reachlab.NewScenario(b, reachlab.ServerConfig{})
	cs := s.ConnectString()
	pa, pb := s.Site(b, "tpa", natlab.Kind(natlab.PortRestricted)), s.Site(b, "tpb", natlab.Kind(natlab.PortRestricted))
	oa, ob := s.Site(b, "toa", natlab.Open), s.Site(b, "tob", natlab.Open)

	// The contexts the receivers run in; they end with the benchmark.
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()

	pairs := []struct {
		reachName, bareName, pairedName string
		a, b                            *natlab.Site
		want                            string
	}{
		{"reach-holepunch", "bare-quic", "paired-holepunch", pa, pb, reach.StrategyHolepunch},
		{"reach-direct", "bare-quic-public", "paired-public", oa, ob, reach.StrategyDirect},
	}
	for _, p := range pairs {
		// reach: a dials b once; every iteration opens a new stream on the
		// session.
		sess, nb := reachSession(b, cs, p.a.Host, p.b.Host, p.want)
		got := make(chan copyResult, 1)
		go func() {
			for {
				st, err := nb.Accept(runCtx)
				if err != nil {
					return
				}
				got <- drain(st)
			}
		}()
		openReach := func(ctx context.Context) (halfStream, error) {
			st, err := sess.OpenStream(ctx)
			if err != nil {
				return nil, err
			}
			return st, nil
		}

		// bare quic-go over other sockets of the same hosts, on the same
		// address family as reach's path (public hosts have IPv6 too, and
		// reach may pick it).
		cc, sc := bareConn(b, p.a, p.b, sess.RemoteAddr().Addr().Is6())
		bgot := make(chan copyResult, 1)
		go func() {
			for {
				st, err := sc.AcceptStream(runCtx)
				if err != nil {
					return
				}
				bgot <- drain(quicHalf{st})
			}
		}()
		openBare := func(ctx context.Context) (halfStream, error) {
			st, err := cc.OpenStreamSync(ctx)
			if err != nil {
				return nil, err
			}
			return quicHalf{st}, nil
		}

		b.Run(p.reachName, func(b *testing.B) { benchCopy(b, openReach, got) })
		b.Run(p.bareName, func(b *testing.B) { benchCopy(b, openBare, bgot) })
		// The two sub-benchmarks above run one after the other, -count
		// times each, so a neighbour's load during one block skews their
		// ratio. paired interleaves them (reach, bare, bare, reach, ...)
		// and reports both rates and their ratio from the same stretch of
		// time: the figure to quote.
		b.Run(p.pairedName, func(b *testing.B) { benchPaired(b, openReach, got, openBare, bgot) })
	}
}

// BenchmarkLabConnect: the time from Dial to the first echoed byte, over
// reach with fresh nodes every iteration (rendezvous introduction, punch,
// QUIC and TLS handshake, stream) and over bare quic-go (QUIC and TLS
// handshake, stream) on an already punched path between the same two hosts
// behind two port-restricted NATs. Each peer router's WAN link delays 20 ms
// each way, so a peer-to-peer round trip is 80 ms (a peer to the server
// 40 ms). Metrics: ms/op and RTT/op, the time in units of the measured
// peer-to-peer round trip (rtt-ms).
//
// Besides the home pair (reach-holepunch): the same pair behind linux-host
// routers, each behind its own ISP (the listener primes and holds), and a
// restricted-cone dialler to a symmetric listener (the dialler cannot open
// the listener's NAT first, so the listener's hold runs to its fallback).
// The ISP hops add no delay, so the home pair's round trip is their unit
// too.
func BenchmarkLabConnect(b *testing.B) {
	s := reachlab.NewScenario(b, reachlab.ServerConfig{Relay: true})
	cs := s.ConnectString()
	pa, pb := s.Site(b, "cna", natlab.Kind(natlab.PortRestricted)), s.Site(b, "cnb", natlab.Kind(natlab.PortRestricted))
	// xa and xb cannot reach each other (a firewall rule): the relay.
	xa, xb := s.Site(b, "cxa", natlab.Kind(natlab.PortRestricted)), s.Site(b, "cxb", natlab.Kind(natlab.PortRestricted))
	la := s.SiteWith(b, "cla", natlab.SiteConfig{Kind: natlab.Kind(natlab.PortRestricted), Firewall: natlab.LinuxHost, ISP: true})
	lb := s.SiteWith(b, "clb", natlab.SiteConfig{Kind: natlab.Kind(natlab.PortRestricted), Firewall: natlab.LinuxHost, ISP: true})
	ra := s.Site(b, "cra", natlab.Kind(natlab.RestrictedCone))
	sb := s.Site(b, "csb", natlab.Kind(natlab.Symmetric))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, site := range []*natlab.Site{pa, pb, la, lb, ra, sb, xa, xb} {
		// Before any traffic: inserting the delay forwarder drops the link
		// for a few milliseconds.
		if err := site.Router.Impair(ctx, natlab.Impairment{Delay: labAccessDelay}); err != nil {
			b.Fatal(err)
		}
	}
	// A public listener (no NAT) at the same distance: direct.
	pub, err := s.AddPublicHost(ctx, "cpub")
	if err != nil {
		b.Fatal(err)
	}
	if err := pub.Impair(ctx, natlab.Impairment{Delay: labAccessDelay}); err != nil {
		b.Fatal(err)
	}
	if err := xa.Router.Block(ctx, xb.Router.WAN()); err != nil {
		b.Fatal(err)
	}
	// A listener behind a port-restricted router that runs miniupnpd.
	ugw, _, err := s.AddUPnPRouter(ctx, natlab.RouterConfig{Name: "cupr", NAT: natlab.PortRestricted}, natlab.UPnPConfig{})
	if err != nil {
		b.Fatal(err)
	}
	uh, err := ugw.AddHost(ctx, "cuph")
	if err != nil {
		b.Fatal(err)
	}
	if err := ugw.Impair(ctx, natlab.Impairment{Delay: labAccessDelay}); err != nil {
		b.Fatal(err)
	}
	// A symmetric dialler for the forwarding rungs (to the symmetric
	// listener sb), a volunteer and a coturn, each 20 ms away.
	ya := s.Site(b, "cya", natlab.Kind(natlab.Symmetric))
	if err := ya.Router.Impair(ctx, natlab.Impairment{Delay: labAccessDelay}); err != nil {
		b.Fatal(err)
	}
	vh, err := s.AddPublicHost(ctx, "cvol")
	if err != nil {
		b.Fatal(err)
	}
	th, err := s.AddPublicHost(ctx, "cturn")
	if err != nil {
		b.Fatal(err)
	}
	for _, h := range []*natlab.Host{vh, th} {
		if err := h.Impair(ctx, natlab.Impairment{Delay: labAccessDelay}); err != nil {
			b.Fatal(err)
		}
	}
	if _, _, err := startVolunteer(b, vh, cs, supernode.Config{}); err != nil {
		b.Fatalf("volunteer: %v", err)
	}
	ct, err := th.StartCoturn(ctx, natlab.CoturnConfig{Users: map[string]string{"alice": "wonderland"}})
	if err != nil {
		b.Fatal(err)
	}
	turnCfg := []reach.TURNServer{{URL: "turn:" + ct.Addr().String(), Username: "alice", Password: "wonderland"}}
	only := func(fwd string) []string { return []string{"direct", "upnp", "holepunch", fwd} }

	// The bare path, punched once; its UDP round trip is the RTT unit.
	ca, cb, aAddr, bAddr := punchedUDP(b, pa, pb, false)
	rtt := udpRTT(b, ca, cb, aAddr, bAddr)
	b.Logf("peer-to-peer UDP round trip %v (nominal %v)", rtt, 4*labAccessDelay)
	report := func(b *testing.B, total time.Duration) {
		ms := float64(total.Microseconds()) / 1000 / float64(b.N)
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(ms/(float64(rtt.Microseconds())/1000), "RTT/op")
		b.ReportMetric(float64(rtt.Microseconds())/1000, "rtt-ms")
	}

	// The bare server: it echoes the first stream of every connection. It
	// runs first: the punched path is not kept alive while reach dials.
	ctr := &quic.Transport{Conn: ca}
	str := &quic.Transport{Conn: cb}
	b.Cleanup(func() { ctr.Close(); str.Close() })
	ck, sk := benchKey(b), benchKey(b)
	stls, err := identity.ServerTLSConfig(sk, stream.ALPN)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := str.Listen(stls, stream.QUICConfig(stream.Config{}))
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		for {
			qc, err := ln.Accept(runCtx)
			if err != nil {
				return
			}
			go func() {
				st, err := qc.AcceptStream(runCtx)
				if err != nil {
					return
				}
				io.Copy(st, st)
				st.Close()
			}()
		}
	}()

	b.Run("bare-quic", func(b *testing.B) {
		var total time.Duration
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			// A fresh TLS config every time: no session resumption.
			ctls, _, err := identity.ClientTLSConfig(ck, sk.ID(), stream.ALPN)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			b.StartTimer()

			start := time.Now()
			qc, err := ctr.Dial(ctx, net.UDPAddrFromAddrPort(bAddr), ctls, stream.QUICConfig(stream.Config{}))
			if err == nil {
				var st *quic.Stream
				if st, err = qc.OpenStreamSync(ctx); err == nil {
					err = echoByte(quicHalf{st})
				}
			}
			el := time.Since(start)

			b.StopTimer()
			cancel()
			if err != nil {
				b.Fatalf("bare dial and echo: %v", err)
			}
			total += el
			qc.CloseWithError(0, "")
			b.StartTimer()
		}
		b.StopTimer()
		report(b, total)
	})
	for _, c := range []struct {
		name       string
		dialer     *natlab.Host
		lis        *natlab.Host
		want       string
		strategies []string
		turn       []reach.TURNServer
		// ready: what the listener (and dialler) must have before the
		// clock starts (a port mapping, TURN allocations).
		ready func(na, nb *reach.Node) bool
	}{
		{"reach-direct", pa.Host, pub, reach.StrategyDirect, nil, nil, nil},
		{"reach-upnp", pa.Host, uh, reach.StrategyUPnP, nil, nil, func(_, nb *reach.Node) bool {
			return nb.Status().PortMapping.External.IsValid()
		}},
		{"reach-holepunch", pa.Host, pb.Host, reach.StrategyHolepunch, nil, nil, nil},
		{"reach-holepunch-linux-host", la.Host, lb.Host, reach.StrategyHolepunch, nil, nil, nil},
		{"reach-holepunch-symmetric-listener", ra.Host, sb.Host, reach.StrategyHolepunch, nil, nil, nil},
		// The forwarding rungs, one at a time (each alone after the
		// direct ones, so that the one measured is the one that wins).
		// (Both symmetric: once each node has measured its mapping, the
		// forwarding rungs start at once.)
		{"reach-supernode", ya.Host, sb.Host, reach.StrategySupernode, only("supernode"), nil, mappingsKnown},
		{"reach-turn", ya.Host, sb.Host, reach.StrategyTURN, only("turn"), turnCfg, func(na, nb *reach.Node) bool {
			return na.Status().TURN.IsValid() && nb.Status().TURN.IsValid() && mappingsKnown(na, nb)
		}},
		{"reach-relay", xa.Host, xb.Host, reach.StrategyRelay, only("relay"), nil, nil},
	} {
		want := c.want
		b.Run(c.name, func(b *testing.B) {
			cfg := reach.Config{Servers: []string{cs}, Logger: quietLogger(b), Strategies: c.strategies, TURN: c.turn}
			var total time.Duration
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				na := reachlab.NewNode(b, c.dialer, cfg)
				nb := reachlab.NewNode(b, c.lis, cfg)
				reachlab.Echo(b, nb)
				// Ready as a running node is: registered, its NAT's mapping
				// measured (a few STUN round trips after it registered),
				// and whatever the rung needs.
				reachlab.MustWaitFor(b, 10*time.Second, "the nodes ready for "+want, func() bool {
					return mappingsKnown(na, nb) && (c.ready == nil || c.ready(na, nb))
				})
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				b.StartTimer()

				start := time.Now()
				c, err := na.Dial(ctx, nb.ID())
				if err == nil {
					err = echoByte(c)
				}
				el := time.Since(start)

				b.StopTimer()
				cancel()
				if err != nil {
					b.Fatalf("dial and echo: %v", err)
				}
				if s := c.Session(); s.Strategy() != want {
					b.Fatalf("strategy %s, want %s", s.Strategy(), want)
				}
				total += el
				// The echo side is done when our half-close comes back as EOF.
				c.CloseWrite()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.Copy(io.Discard, c); err != nil {
					b.Fatalf("echo side did not finish: %v", err)
				}
				c.Close()
				na.Close()
				nb.Close()
				b.StartTimer()
			}
			b.StopTimer()
			report(b, total)
		})
	}

}

// mappingsKnown reports whether both nodes have measured their NAT's
// mapping (Node.Mapping).
func mappingsKnown(na, nb *reach.Node) bool { return na.Mapping() != "" && nb.Mapping() != "" }

// reachSession starts nodes on a and bh, dials a session from a to bh and
// checks that strategy want carries it. It returns the session and the
// listening node.
func reachSession(b *testing.B, cs string, a, bh *natlab.Host, want string) (*stream.Session, *reach.Node) {
	b.Helper()
	cfg := reach.Config{Servers: []string{cs}, Logger: quietLogger(b)}
	na := reachlab.NewNode(b, a, cfg)
	nb := reachlab.NewNode(b, bh, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, err := na.DialSession(ctx, nb.ID())
	if err != nil {
		b.Fatalf("dial %s -> %s: %v", a.Name(), bh.Name(), err)
	}
	if sess.Strategy() != want {
		b.Fatalf("%s -> %s: strategy %s, want %s", a.Name(), bh.Name(), sess.Strategy(), want)
	}
	b.Logf("%s -> %s: %s over %v", a.Name(), bh.Name(), sess.Strategy(), sess.RemoteAddr())
	return sess, nb
}

// bareConn punches a path between sites a and bs (over IPv6 if v6, which
// needs public hosts) and opens a bare quic-go connection over it, a the
// client; both ends close when the benchmark
// ends. It returns the client's and the server's connection.
func bareConn(b *testing.B, a, bs *natlab.Site, v6 bool) (client, server *quic.Conn) {
	b.Helper()
	ca, cb, _, bAddr := punchedUDP(b, a, bs, v6)
	ctr := &quic.Transport{Conn: ca}
	str := &quic.Transport{Conn: cb}
	b.Cleanup(func() { ctr.Close(); str.Close() })
	ck, sk := benchKey(b), benchKey(b)
	stls, err := identity.ServerTLSConfig(sk, stream.ALPN)
	if err != nil {
		b.Fatal(err)
	}
	ctls, _, err := identity.ClientTLSConfig(ck, sk.ID(), stream.ALPN)
	if err != nil {
		b.Fatal(err)
	}
	qconf := stream.QUICConfig(stream.Config{})
	ln, err := str.Listen(stls, qconf)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	acc := make(chan *quic.Conn, 1)
	go func() {
		c, _ := ln.Accept(ctx)
		acc <- c
	}()
	client, err = ctr.Dial(ctx, net.UDPAddrFromAddrPort(bAddr), ctls, qconf)
	if err != nil {
		b.Fatalf("bare quic %s -> %v: %v", a.Host.Name(), bAddr, err)
	}
	if server = <-acc; server == nil {
		b.Fatal("bare quic: accept failed")
	}
	b.Cleanup(func() {
		client.CloseWithError(0, "")
		server.CloseWithError(0, "")
	})
	return client, server
}

// externalAddr is where the other peer reaches s's socket bound to port:
// the host itself if public (its IPv6 address if v6), else its router's
// WAN address (masquerade keeps the port).
func externalAddr(s *natlab.Site, port uint16, v6 bool) netip.AddrPort {
	if s.Router == nil {
		if v6 {
			return netip.AddrPortFrom(s.Host.Addr6(), port)
		}
		return netip.AddrPortFrom(s.Host.Addr(), port)
	}
	return netip.AddrPortFrom(s.Router.WAN(), port)
}

// punchPrefix starts every datagram of the manual punch and the RTT probe:
// below 0x40, so quic-go drops any that are still queued when it takes the
// socket.
const punchPrefix = "\x3abench-punch"

// punchedUDP opens a UDP socket on labBarePort on each site's host and
// opens the NAT mappings between them by hand: each side sends to the
// other's external address until both have heard from the other. It
// returns the sockets and each one's external address (IPv6 if v6).
func punchedUDP(b *testing.B, a, bs *natlab.Site, v6 bool) (ca, cb *net.UDPConn, aAddr, bAddr netip.AddrPort) {
	b.Helper()
	var err error
	local := netip.AddrPortFrom(netip.Addr{}, labBarePort) // dual-stack, like a node's socket
	if ca, err = a.Host.ListenUDP(local); err != nil {
		b.Fatal(err)
	}
	if cb, err = bs.Host.ListenUDP(local); err != nil {
		ca.Close()
		b.Fatal(err)
	}
	b.Cleanup(func() { ca.Close(); cb.Close() })
	aAddr, bAddr = externalAddr(a, labBarePort, v6), externalAddr(bs, labBarePort, v6)
	var heardA, heardB atomic.Bool // A heard from B; B heard from A
	deadline := time.Now().Add(5 * time.Second)
	side := func(c *net.UDPConn, to netip.AddrPort, heard, other *atomic.Bool) error {
		buf := make([]byte, 1500)
		for !heard.Load() || !other.Load() {
			if time.Now().After(deadline) {
				return fmt.Errorf("manual punch to %v: heard=%v other=%v", to, heard.Load(), other.Load())
			}
			if _, err := c.WriteToUDPAddrPort([]byte(punchPrefix), to); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err == nil && string(buf[:n]) == punchPrefix && netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) == to {
				heard.Store(true)
			}
		}
		return c.SetReadDeadline(time.Time{})
	}
	errc := make(chan error, 1)
	go func() { errc <- side(cb, aAddr, &heardB, &heardA) }()
	err = side(ca, bAddr, &heardA, &heardB)
	if err2 := <-errc; err == nil {
		err = err2
	}
	if err != nil {
		b.Fatalf("%s <-> %s: %v", a.Host.Name(), bs.Host.Name(), err)
	}
	return ca, cb, aAddr, bAddr
}

// udpRTT measures the median round trip of 15 datagrams from ca to cb and
// back over the punched path.
func udpRTT(b *testing.B, ca, cb *net.UDPConn, aAddr, bAddr netip.AddrPort) time.Duration {
	b.Helper()
	defer ca.SetReadDeadline(time.Time{})
	defer cb.SetReadDeadline(time.Time{})
	buf := make([]byte, 1500)
	// read waits for the probe named want, skipping leftover punches.
	read := func(c *net.UDPConn, want string) error {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return err
			}
			if string(buf[:n]) == want {
				return nil
			}
		}
	}
	var rtts []time.Duration
	for i := range 15 {
		p := fmt.Sprintf("%s-rtt-%d", punchPrefix, i)
		start := time.Now()
		if _, err := ca.WriteToUDPAddrPort([]byte(p), bAddr); err != nil {
			b.Fatal(err)
		}
		if err := read(cb, p); err != nil {
			b.Fatalf("rtt probe %d: %v", i, err)
		}
		if _, err := cb.WriteToUDPAddrPort([]byte(p), aAddr); err != nil {
			b.Fatal(err)
		}
		if err := read(ca, p); err != nil {
			b.Fatalf("rtt probe %d echo: %v", i, err)
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2]
}

// halfStream is what the benchmarks need of a reach or quic-go stream.
type halfStream interface {
	io.ReadWriter
	CloseWrite() error
	Close() error
	SetDeadline(time.Time) error
}

// quicHalf gives a quic-go stream the half-close of a reach stream.
type quicHalf struct{ *quic.Stream }

func (s quicHalf) CloseWrite() error { return s.Stream.Close() }
func (s quicHalf) Close() error {
	s.Stream.CancelRead(0)
	return s.Stream.Close()
}

type copyResult struct {
	n   int64
	err error
}

// drain reads st to its end, closes it and reports how much came.
func drain(st halfStream) copyResult {
	st.SetDeadline(time.Now().Add(time.Minute))
	n, err := io.Copy(io.Discard, st)
	st.Close()
	return copyResult{n, err}
}

// benchPaired interleaves copies over reach and over the bare
// comparison (reach, bare, bare, reach, ...) and reports both rates and
// their ratio from the same stretch of time.
func benchPaired(b *testing.B, openReach func(context.Context) (halfStream, error), got <-chan copyResult,
	openBare func(context.Context) (halfStream, error), bgot <-chan copyResult) {
	var reachTime, bareTime, reachCPU, bareCPU time.Duration
	for i := range b.N {
		for k := range 2 {
			cpu0 := processCPU()
			if (i+k)%2 == 0 {
				reachTime += copyOnce(b, openReach, got)
				reachCPU += processCPU() - cpu0
			} else {
				bareTime += copyOnce(b, openBare, bgot)
				bareCPU += processCPU() - cpu0
			}
		}
	}
	mb := float64(b.N) * labBenchBytes / 1e6
	mib := float64(b.N) * labBenchBytes / (1 << 20)
	b.ReportMetric(mb/reachTime.Seconds(), "reach-MB/s")
	b.ReportMetric(mb/bareTime.Seconds(), "bare-MB/s")
	b.ReportMetric(bareTime.Seconds()/reachTime.Seconds(), "reach/bare")
	// The CPU both ends used (the lab's hosts are this process), per MiB
	// moved: steadier than throughput on a shared machine.
	b.ReportMetric(reachCPU.Seconds()*1e3/mib, "reach-cpu-ms/MiB")
	b.ReportMetric(bareCPU.Seconds()*1e3/mib, "bare-cpu-ms/MiB")
}

// benchCopy moves labBenchBytes on a new stream per iteration.
func benchCopy(b *testing.B, open func(context.Context) (halfStream, error), got <-chan copyResult) {
	b.SetBytes(labBenchBytes)
	b.ResetTimer()
	for range b.N {
		copyOnce(b, open, got)
	}
}

// copyOnce moves labBenchBytes on a new stream and waits until the
// receiver has read it all. It returns how long that took.
func copyOnce(b *testing.B, open func(context.Context) (halfStream, error), got <-chan copyResult) time.Duration {
	b.Helper()
	buf := make([]byte, labBenchChunk)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	st, err := open(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(time.Minute))
	for sent := 0; sent < labBenchBytes; sent += len(buf) {
		if _, err := st.Write(buf); err != nil {
			b.Fatalf("after %d bytes: %v", sent, err)
		}
	}
	if err := st.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	var r copyResult
	select {
	case r = <-got:
	case <-ctx.Done():
		r.err = errors.New("receiver did not finish")
	}
	el := time.Since(start)
	if r.err != nil || r.n != labBenchBytes {
		b.Fatalf("received %d bytes (want %d): %v", r.n, labBenchBytes, r.err)
	}
	return el
}

// echoByte writes one byte on c and waits for it to come back.
func echoByte(c io.ReadWriter) error {
	if d, ok := c.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Now().Add(10 * time.Second))
		defer d.SetDeadline(time.Time{})
	}
	if _, err := c.Write([]byte{0x2a}); err != nil {
		return err
	}
	var p [1]byte
	if _, err := io.ReadFull(c, p[:]); err != nil {
		return err
	}
	if p[0] != 0x2a {
		return fmt.Errorf("echo: got %#x", p[0])
	}
	return nil
}

func benchKey(b *testing.B) *identity.Key {
	k, err := identity.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	return k
}

// processCPU is the CPU time (user and system) the process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
