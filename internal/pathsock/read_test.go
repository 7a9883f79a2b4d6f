package pathsock

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// readSetup is a Conn on loopback whose relay-style intercept takes data
// packets (first byte 0x2c) from any source, and a sender.
type readSetup struct {
	c      *Conn
	to     netip.AddrPort
	send   *net.UDPConn
	taken  int
	lastOf netip.AddrPort
	ms     []ipv4.Message
	q      []byte // the QUIC-looking datagram
}

func newReadSetup(tb testing.TB, network string, laddr *net.UDPAddr, sendTo string) *readSetup {
	tb.Helper()
	u, err := net.ListenUDP(network, laddr)
	if err != nil {
		tb.Skipf("no %s socket: %v", network, err)
	}
	s := &readSetup{c: New(u)}
	tb.Cleanup(func() { s.c.Close() })
	port := u.LocalAddr().(*net.UDPAddr).Port
	s.to = netip.AddrPortFrom(netip.MustParseAddr(sendTo), uint16(port))
	snd := "udp4"
	if s.to.Addr().Is6() {
		snd = "udp6"
	}
	if s.send, err = net.ListenUDP(snd, nil); err != nil {
		tb.Skipf("no %s socket: %v", snd, err)
	}
	tb.Cleanup(func() { s.send.Close() })
	s.c.Intercept(0x2c, netip.AddrPort{}, func(b []byte, from netip.AddrPort) (int, netip.AddrPort) {
		s.taken++
		s.lastOf = from
		return 0, netip.AddrPort{}
	})
	s.ms = make([]ipv4.Message, 8)
	for i := range s.ms {
		s.ms[i].Buffers = [][]byte{make([]byte, 1500)}
		s.ms[i].OOB = make([]byte, 128)
	}
	return s
}

// round sends data data packets and one QUIC-looking datagram, and reads
// until the QUIC one comes out of ReadBatch; it returns its message.
func (s *readSetup) round(tb testing.TB, data int, pkt []byte) *ipv4.Message {
	for range data {
		if _, err := s.send.WriteToUDPAddrPort(pkt, s.to); err != nil {
			tb.Fatal(err)
		}
	}
	if len(s.q) != len(pkt) {
		s.q = append([]byte{0x40}, pkt[1:]...)
	}
	q := s.q
	if _, err := s.send.WriteToUDPAddrPort(q, s.to); err != nil {
		tb.Fatal(err)
	}
	s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := s.c.ReadBatch(s.ms, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if n != 1 || s.ms[0].N != len(q) || s.ms[0].Buffers[0][0] != 0x40 {
		tb.Fatalf("ReadBatch gave %d messages (first of %d bytes), want the QUIC datagram alone", n, s.ms[0].N)
	}
	return &s.ms[0]
}

// TestReadSources: datagrams read on the socket come with their sources,
// as net.UDPConn gives them (an IPv4 peer on a dual-stack socket in its
// IPv4-mapped form), to quic-go as *net.UDPAddr and to an InterceptFunc
// unmapped; data packets taken by the intercept never reach quic-go.
func TestReadSources(t *testing.T) {
	for _, k := range []struct {
		name, network, listen, sendTo, want string
	}{
		{"ipv4", "udp4", "127.0.0.1", "127.0.0.1", "127.0.0.1"},
		{"dual-stack-ipv4", "udp", "::", "127.0.0.1", "::ffff:127.0.0.1"},
		{"ipv6", "udp6", "::1", "::1", "::1"},
	} {
		t.Run(k.name, func(t *testing.T) {
			s := newReadSetup(t, k.network, &net.UDPAddr{IP: net.ParseIP(k.listen)}, k.sendTo)
			sport := s.send.LocalAddr().(*net.UDPAddr).Port
			pkt := make([]byte, 100)
			pkt[0] = 0x2c
			m := s.round(t, 3, pkt)
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				t.Fatalf("source %T %v, want a *net.UDPAddr", m.Addr, m.Addr)
			}
			if got := ua.AddrPort(); got != netip.AddrPortFrom(netip.MustParseAddr(k.want), uint16(sport)) {
				t.Errorf("quic-go's source %v, want %s port %d", got, k.want, sport)
			}
			if want := netip.AddrPortFrom(netip.MustParseAddr(k.sendTo), uint16(sport)); s.taken != 3 || s.lastOf != want {
				t.Errorf("the intercept took %d (last from %v), want 3 from %v", s.taken, s.lastOf, want)
			}
			// The next datagram from the same source: the same address,
			// unchanged (quic-go may keep the first).
			m2 := s.round(t, 0, pkt)
			if m2.Addr != ua || ua.AddrPort().Port() != uint16(sport) {
				t.Errorf("second read's source %v (%p), want the first's %v (%p)", m2.Addr, m2.Addr, ua, ua)
			}
		})
	}
}

// TestReadAllocatesNothing: a batch of data packets taken by an intercept
// and a datagram handed on from a source read before cost no allocation.
func TestReadAllocatesNothing(t *testing.T) {
	s := newReadSetup(t, "udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, "127.0.0.1")
	pkt := make([]byte, 1200)
	pkt[0] = 0x2c
	s.round(t, 7, pkt) // the source's address made
	allocs := testing.AllocsPerRun(100, func() {
		s.round(t, 7, pkt)
	})
	// The sends may allocate nothing either; the reads must not.
	if allocs != 0 {
		t.Errorf("%.1f allocations a round of 8 datagrams read, want 0", allocs)
	}
}

// TestAddrCacheBounded: a flood of sources does not grow the cache past
// addrCacheMax, and an address handed out is never changed.
func TestAddrCacheBounded(t *testing.T) {
	var a addrCache
	first := netip.MustParseAddrPort("192.0.2.1:1")
	u := a.get(first)
	for i := range 3 * addrCacheMax {
		a.get(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 2))
		if len(a.m) > addrCacheMax {
			t.Fatalf("cache holds %d sources, more than %d", len(a.m), addrCacheMax)
		}
	}
	if u.AddrPort() != first {
		t.Errorf("an address handed out changed to %v", u)
	}
}

// BenchmarkReadIntercept: reading a batch of relay data packets (taken by
// an intercept, as a relay server forwards them) and one datagram handed
// on. allocs/op is per batch of 8 datagrams (0 since issue 14; x/net's
// ReadBatch made a *net.UDPAddr and its IP for each).
//
//	go test -run '^$' -bench ReadIntercept -benchmem ./internal/pathsock
func BenchmarkReadIntercept(b *testing.B) {
	s := newReadSetup(b, "udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, "127.0.0.1")
	pkt := make([]byte, 1200)
	pkt[0] = 0x2c
	b.ReportAllocs()
	for b.Loop() {
		s.round(b, 7, pkt)
	}
}
