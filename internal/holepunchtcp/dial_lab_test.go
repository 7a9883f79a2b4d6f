//go:build linux

package holepunchtcp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/reachp2p/reach/lab/natlab"
)

// TestLabPrimerOutlivesItsICMP: in the lab, a primer from a host behind
// a linux-host router behind its provider's router, 40 ms one way between
// the two, dies at the provider's router; its ICMP time-exceeded comes
// back about 80 ms later, long after connect() returned, and the primer's
// socket drops it (TCPMinTTLDrop counts it). The peer's SYN that comes
// after that still finds the primer: both sides connect (simultaneous
// open through the router's state) and bytes cross both ways. A primer
// that heard its own ICMP error died of it, and the peer's SYN met a
// reset.
func TestLabPrimerOutlivesItsICMP(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := l.AddSiteWith(ctx, "hpa", natlab.SiteConfig{Kind: natlab.Kind(natlab.UDPBlockedTCPOpen), Firewall: natlab.LinuxHost, ISP: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Router.Host.Impair(ctx, natlab.Impairment{Delay: 40 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	b, err := l.AddPublicHost(ctx, "hpb")
	if err != nil {
		t.Fatal(err)
	}
	const portA, portB = 41000, 42000
	drops := func() int {
		t.Helper()
		n, err := minTTLDrops(a.Host)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := drops()

	type result struct {
		c   net.Conn
		err error
	}
	out := make(chan result, 1)
	local := netip.AddrPortFrom(netip.IPv4Unspecified(), portA)
	go func() {
		c, err := dialFrom(ctx, a.Host.Run, local, netip.AddrPortFrom(b.Addr(), portB), 2, func() {})
		out <- result{c, err}
	}()
	// The primer's ICMP error comes back (after about 80 ms) and is
	// dropped; the primer lives on.
	for deadline := time.Now().Add(5 * time.Second); drops() == before; {
		select {
		case res := <-out:
			t.Fatalf("the primer's connect ended before the peer's SYN: %v", res.err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the primer's ICMP time-exceeded never reached its socket (TCPMinTTLDrop unchanged)")
		}
	}
	select {
	case res := <-out:
		t.Fatalf("the primer's connect ended before the peer's SYN: %v", res.err)
	case <-time.After(50 * time.Millisecond):
	}

	// The peer's SYN, from the port the primer went to, to the port its
	// router mapped.
	var cb net.Conn
	err = b.Run(func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{Port: portB}, Timeout: 3 * time.Second}
		cb, err = d.DialContext(ctx, "tcp4", netip.AddrPortFrom(a.Router.WAN(), portA).String())
		return err
	})
	if err != nil {
		t.Fatalf("the peer's connect: %v (the primer is gone, or deaf to the SYN)", err)
	}
	defer cb.Close()
	var ca net.Conn
	select {
	case res := <-out:
		if res.err != nil {
			t.Fatalf("the primer's connect: %v", res.err)
		}
		ca = res.c
	case <-time.After(5 * time.Second):
		t.Fatal("the primer's connect did not complete")
	}
	defer ca.Close()
	for _, p := range [][2]net.Conn{{ca, cb}, {cb, ca}} {
		msg := []byte(fmt.Sprintf("from %v", p[0].LocalAddr()))
		if _, err := p[0].Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		p[1].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(p[1], got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("read %q, %v; want %q", got, err, msg)
		}
	}
	// The established connection hears again.
	raw, err := ca.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var minTTL int
	var gerr error
	if err := raw.Control(func(fd uintptr) { minTTL, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MINTTL) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if minTTL != 0 {
		t.Errorf("IP_MINTTL %d on the established connection, want 0", minTTL)
	}
}

// minTTLDrops reads h's TCPMinTTLDrop counter (segments and ICMP errors
// a socket dropped for its IP_MINTTL).
func minTTLDrops(h *natlab.Host) (int, error) {
	var data []byte
	err := h.Run(func() (err error) {
		data, err = os.ReadFile("/proc/thread-self/net/netstat") // this thread's namespace
		return err
	})
	if err != nil {
		return 0, err
	}
	lines := strings.Split(string(data), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
			continue
		}
		for k, n := range names {
			if n == "TCPMinTTLDrop" {
				return strconv.Atoi(values[k])
			}
		}
	}
	return 0, fmt.Errorf("no TCPMinTTLDrop in %s's /proc/net/netstat", h.Name())
}
