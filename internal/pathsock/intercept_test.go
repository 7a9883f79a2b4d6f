package pathsock

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

func udpLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

func apOf(u *net.UDPConn) netip.AddrPort { return u.LocalAddr().(*net.UDPAddr).AddrPort() }

// readAll reads batches from c until want messages came or a second
// passed, and returns them as (payload, source) pairs.
func readAll(t *testing.T, c *Conn, want int) (got []string, from []netip.AddrPort) {
	t.Helper()
	ms := make([]ipv4.Message, 8)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 2048)}
		ms[i].OOB = make([]byte, 64)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	for len(got) < want {
		n, err := c.ReadBatch(ms, 0)
		if err != nil {
			break
		}
		for _, m := range ms[:n] {
			got = append(got, string(m.Buffers[0][:m.N]))
			from = append(from, addrPortOf(m.Addr))
		}
	}
	return got, from
}

// TestIntercept: a func for a first byte and a source takes what that
// source sends with that byte (rewriting it in place, as from a peer's
// virtual address, or consuming it); a func for any source takes the rest
// with that byte; everything else reaches the reader unchanged and in
// order, and after remove nothing is taken.
func TestIntercept(t *testing.T) {
	c := New(udpLoopback(t))
	defer c.Close()
	relay, other := udpLoopback(t), udpLoopback(t)
	virt, err := c.AddPeer()
	if err != nil {
		t.Fatal(err)
	}
	var anyCalls int
	removeFrom := c.Intercept(0x2d, apOf(relay), func(b []byte, from netip.AddrPort) (int, netip.AddrPort) {
		if from != apOf(relay) {
			t.Errorf("func for %v called for %v", apOf(relay), from)
		}
		if b[1] == 'x' {
			return 0, netip.AddrPort{} // consumed
		}
		return copy(b, b[2:]), virt // strip a 2-byte header
	})
	removeAny := c.Intercept(0x2d, netip.AddrPort{}, func(b []byte, _ netip.AddrPort) (int, netip.AddrPort) {
		anyCalls++
		return 0, netip.AddrPort{}
	})
	to := apOf(c.udp)
	send := func(u *net.UDPConn, s string) {
		if _, err := u.WriteToUDPAddrPort([]byte(s), to); err != nil {
			t.Fatal(err)
		}
	}
	send(relay, "\x2dxdropped")
	send(relay, "\x2d_@quic-from-peer")
	send(other, "\x2dtaken by any")
	send(other, "@quic")
	send(relay, "\x3astun-like")
	got, from := readAll(t, c, 3)
	want := []string{"@quic-from-peer", "@quic", "\x3astun-like"}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("read %q, want %q", got, want)
	}
	if from[0] != virt || from[1] != apOf(other) || from[2] != apOf(relay) {
		t.Errorf("sources %v, want %v, %v, %v", from, virt, apOf(other), apOf(relay))
	}
	if anyCalls != 1 {
		t.Errorf("the any-source func took %d datagrams, want 1", anyCalls)
	}
	removeFrom()
	removeAny()
	removeAny() // twice is fine
	send(relay, "\x2dxkept")
	if got, _ := readAll(t, c, 1); len(got) != 1 || got[0] != "\x2dxkept" {
		t.Errorf("after remove read %q", got)
	}
	if c.icpt.firsts.Load() != 0 {
		t.Error("first-byte bits left after every func was removed")
	}
}

// TestWriteSegments: a segmented send arrives as its datagrams, in order.
func TestWriteSegments(t *testing.T) {
	c := New(udpLoopback(t))
	defer c.Close()
	dst := udpLoopback(t)
	var b []byte
	for i := range 100 { // more than one GSO send's worth of 1000-byte segments
		b = append(b, bytes.Repeat([]byte{byte(i)}, 1000)...)
	}
	b = append(b, "tail"...)
	if err := c.WriteSegments(b, 1000, apOf(dst)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	dst.SetReadDeadline(time.Now().Add(2 * time.Second))
	for i := range 101 {
		n, err := dst.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		want := b[i*1000 : min((i+1)*1000, len(b))]
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("datagram %d: %d bytes, want %d", i, n, len(want))
		}
	}
}
