//go:build linux

package pathsock

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

func setIntOpt(t *testing.T, u *net.UDPConn, level, opt, v int) {
	t.Helper()
	rc, err := u.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil || serr != nil {
		t.Fatalf("setsockopt %d/%d: %v %v", level, opt, err, serr)
	}
}

func quicMsgs(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1452)}
		ms[i].OOB = make([]byte, 128) // quic-go's oobBufferSize
	}
	return ms
}

// TestGRODualStackControlMessages: on a dual-stack socket with every
// control message quic-go asks for (packet info and traffic class, both
// families), each datagram of an IPv4 sender's coalesced run reaches the
// reader with its ECN bits and packet info, from the sender's
// IPv4-mapped address, and an InterceptFunc sees the sender unmapped.
func TestGRODualStackControlMessages(t *testing.T) {
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified})
	if err != nil {
		t.Skipf("no dual-stack socket: %v", err)
	}
	c := New(u)
	defer c.Close()
	if !c.EnableGRO() {
		t.Skip("the kernel refused UDP_GRO")
	}
	setIntOpt(t, u, unix.IPPROTO_IP, unix.IP_RECVTOS, 1)
	setIntOpt(t, u, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	setIntOpt(t, u, unix.IPPROTO_IPV6, unix.IPV6_RECVTCLASS, 1)
	setIntOpt(t, u, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
	snd := New(udpLoopback(t))
	defer snd.Close()
	setIntOpt(t, snd.udp, unix.IPPROTO_IP, unix.IP_TOS, 0x02) // ECT(0)
	var intercepted []netip.AddrPort
	c.Intercept(0x2c, netip.AddrPort{}, func(b []byte, from netip.AddrPort) (int, netip.AddrPort) {
		intercepted = append(intercepted, from)
		return 0, netip.AddrPort{}
	})
	port := u.LocalAddr().(*net.UDPAddr).Port
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	const n, size = 20, 1000
	b := groBatchOf(0x41, n, size, size)
	for i := 0; i < n; i += 3 { // some for the intercept, interleaved
		b[i*size] = 0x2c
	}
	if err := snd.WriteSegments(b, size, to); err != nil {
		t.Fatal(err)
	}
	ms := quicMsgs(8)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	got := 0
	mapped := netip.AddrPortFrom(netip.AddrFrom16(apOf(snd.udp).Addr().As16()), apOf(snd.udp).Port())
	for got < n-(n+2)/3 {
		k, err := c.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d: %v", got, err)
		}
		for _, m := range ms[:k] {
			if m.Buffers[0][0] != 0x41 || m.N != size {
				t.Fatalf("datagram %d: first %#x, %d bytes", got, m.Buffers[0][0], m.N)
			}
			if from := m.Addr.(*net.UDPAddr).AddrPort(); from != mapped {
				t.Errorf("datagram %d from %v, want %v", got, from, mapped)
			}
			cms, err := unix.ParseSocketControlMessage(m.OOB[:m.NN])
			if err != nil {
				t.Fatal(err)
			}
			var ecn, info bool
			for _, cm := range cms {
				switch {
				case cm.Header.Level == unix.IPPROTO_IP && cm.Header.Type == unix.IP_TOS:
					ecn = cm.Data[0]&3 == 2
				case cm.Header.Level == unix.IPPROTO_IP && cm.Header.Type == unix.IP_PKTINFO,
					cm.Header.Level == unix.IPPROTO_IPV6 && cm.Header.Type == unix.IPV6_PKTINFO:
					info = true
				case cm.Header.Level == unix.SOL_UDP:
					t.Errorf("datagram %d carries its run's UDP_GRO message", got)
				}
			}
			if !ecn || !info || m.Flags&unix.MSG_CTRUNC != 0 {
				t.Errorf("datagram %d: ECT(0) %v, packet info %v, flags %#x (%d bytes of OOB)", got, ecn, info, m.Flags, m.NN)
			}
			got++
		}
	}
	if len(intercepted) != (n+2)/3 {
		t.Errorf("intercepted %d, want %d", len(intercepted), (n+2)/3)
	}
	for _, f := range intercepted {
		if f != apOf(snd.udp) {
			t.Errorf("intercepted from %v, want %v", f, apOf(snd.udp))
		}
	}
	if c.groRuns.Load() == 0 {
		t.Error("no coalesced message read")
	}
}

// TestGROTinyRuns: runs of 64 one-byte datagrams (the most a run holds)
// are handed out one byte each, none lost, none joined.
func TestGROTinyRuns(t *testing.T) {
	c, snd := groConns(t)
	const runs = 20
	var seen [256]int
	taken := 0
	c.Intercept(0x01, netip.AddrPort{}, func(b []byte, from netip.AddrPort) (int, netip.AddrPort) {
		if len(b) != 1 {
			t.Errorf("intercepted %d bytes", len(b))
		}
		taken++
		return 0, netip.AddrPort{}
	})
	for r := range runs {
		b := make([]byte, 64)
		for i := range b {
			b[i] = byte(0x40 + r)
			if i%2 == 0 {
				b[i] = 0x01
			}
		}
		if err := snd.WriteSegments(b, 1, apOf(c.udp)); err != nil {
			t.Fatal(err)
		}
	}
	ms := quicMsgs(8)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for got := 0; got < runs*32; {
		k, err := c.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d: %v", got, err)
		}
		for _, m := range ms[:k] {
			if m.N != 1 {
				t.Fatalf("a datagram of %d bytes", m.N)
			}
			seen[m.Buffers[0][0]]++
			got++
		}
	}
	for r := range runs {
		if seen[0x40+r] != 32 {
			t.Errorf("run %d: %d datagrams, want 32", r, seen[0x40+r])
		}
	}
	if taken != runs*32 {
		t.Errorf("intercepted %d, want %d", taken, runs*32)
	}
}

// TestGROInjectWhilePending: packets injected while a run is being handed
// out come through, and so does the rest of the run.
func TestGROInjectWhilePending(t *testing.T) {
	c, snd := groConns(t)
	virt, _ := c.AddPeer()
	const n, size = 40, 1000
	b := groBatchOf(0x45, n, size, size)
	if err := snd.WriteSegments(b, size, apOf(c.udp)); err != nil {
		t.Fatal(err)
	}
	ms := quicMsgs(4)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	run, inj := 0, 0
	for run < n || inj < 5 {
		if run > 0 && inj < 5 {
			c.Inject(virt, []byte{0x46, byte(inj)})
		}
		k, err := c.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("run %d injected %d: %v", run, inj, err)
		}
		for _, m := range ms[:k] {
			switch m.Buffers[0][0] {
			case 0x45:
				if !bytes.Equal(m.Buffers[0][:m.N], b[run*size:(run+1)*size]) {
					t.Fatalf("datagram %d of the run differs", run)
				}
				run++
			case 0x46:
				inj++
			}
		}
	}
}

// TestGROReadAllocatesNothing: with GRO, a read of runs (some datagrams
// intercepted, the rest for quic-go) allocates nothing once the reader's
// buffers and the source's address were made.
func TestGROReadAllocatesNothing(t *testing.T) {
	s := newReadSetup(t, "udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, "127.0.0.1")
	if !s.c.EnableGRO() {
		t.Skip("the kernel refused UDP_GRO")
	}
	snd := New(s.send)
	const n, size = 16, 1200
	b := groBatchOf(0x2c, n, size, size)
	b[(n-1)*size] = 0x40 // the last one for quic-go
	round := func() {
		if err := snd.WriteSegments(b, size, s.to); err != nil {
			t.Fatal(err)
		}
		s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := s.c.ReadBatch(s.ms, 0)
		if err != nil {
			t.Fatal(err)
		}
		if k != 1 || s.ms[0].N != size || s.ms[0].Buffers[0][0] != 0x40 {
			t.Fatalf("ReadBatch gave %d messages (first of %d bytes)", k, s.ms[0].N)
		}
	}
	round()
	allocs := testing.AllocsPerRun(100, round)
	if allocs != 0 {
		t.Errorf("%.1f allocations a round of a run of %d datagrams, want 0", allocs, n)
	}
	if s.c.groRuns.Load() == 0 {
		t.Error("no coalesced message read")
	}
}

// TestGROInterceptAppendKeepsNext: an InterceptFunc that appends to the
// datagram it was handed (scratch room past its end, which quic-go's
// buffer has without GRO) does not write over the next datagram of the
// run.
func TestGROInterceptAppendKeepsNext(t *testing.T) {
	c, snd := groConns(t)
	c.Intercept(0x2c, netip.AddrPort{}, func(b []byte, from netip.AddrPort) (int, netip.AddrPort) {
		_ = append(b, bytes.Repeat([]byte{0xee}, 64)...)
		return 0, netip.AddrPort{}
	})
	const n, size = 10, 500
	b := groBatchOf(0x2c, n, size, size)
	for i := 1; i < n; i += 2 {
		b[i*size] = 0x41
	}
	if err := snd.WriteSegments(b, size, apOf(c.udp)); err != nil {
		t.Fatal(err)
	}
	got, _ := readAll(t, c, n/2)
	if len(got) != n/2 {
		t.Fatalf("read %d datagrams, want %d", len(got), n/2)
	}
	for j, g := range got {
		i := 2*j + 1
		if g != string(b[i*size:(i+1)*size]) {
			t.Fatalf("datagram %d changed: starts %x", i, g[:4])
		}
	}
}
