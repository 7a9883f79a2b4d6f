package natlab

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestUDPBlockedTCPOpen: behind the udp-blocked-tcp-open firewall, in both
// firewall variants, no UDP datagram reaches a public host on any port,
// TCP reaches it on every port (masqueraded to the router's WAN address),
// and nothing unsolicited gets in over TCP: a home router drops a SYN to
// itself (the dial times out), a linux-host router answers it with a
// reset (refused), and neither forwards it to the LAN host listening on
// that port.
func TestUDPBlockedTCPOpen(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, 2*time.Minute)
	web, err := l.AddPublicHost(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	ports := []uint16{80, 443, 4950, 8443, 40000}
	for _, p := range ports {
		ln, err := web.ListenTCP(netip.AddrPortFrom(web.Addr(), p))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				// The client reads the source address this side saw.
				io.WriteString(c, c.RemoteAddr().String())
				c.Close()
			}
		}()
	}
	udp := map[uint16]*net.UDPConn{}
	for _, p := range []uint16{53, 443, 3478, 4950, 40000} {
		c, err := web.ListenUDP(netip.AddrPortFrom(web.Addr(), p))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		udp[p] = c
	}
	for i, fw := range []Firewall{Home, LinuxHost} {
		t.Run(string(fw), func(t *testing.T) {
			name := []string{"toh", "tol"}[i]
			rt, err := l.AddRouter(ctx, RouterConfig{Name: name, NAT: UDPBlockedTCPOpen, Firewall: fw})
			if err != nil {
				t.Fatal(err)
			}
			h, err := rt.AddHost(ctx, name+"h")
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range ports {
				c, err := h.DialTCP(netip.AddrPortFrom(web.Addr(), p), 5*time.Second)
				if err != nil {
					t.Errorf("TCP to port %d: %v, want open", p, err)
					continue
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				seen, err := io.ReadAll(c)
				c.Close()
				src, perr := netip.ParseAddrPort(string(seen))
				if err != nil || perr != nil || src.Addr() != rt.WAN() {
					t.Errorf("TCP to port %d: the server saw %q (%v, %v), want the router's WAN %v", p, seen, err, perr, rt.WAN())
				}
			}
			c, err := h.ListenUDP(netip.AddrPort{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for p, srv := range udp {
				if _, err := c.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(web.Addr(), p)); err != nil {
					t.Fatal(err)
				}
				if got, from, err := Receive(srv, 300*time.Millisecond); !errors.Is(err, ErrNoPacket) {
					t.Errorf("UDP to port %d got through: %q from %v (%v)", p, got, from, err)
				}
			}
			// Unsolicited inbound TCP to the port a LAN host listens on.
			const lanPort = 4900
			ln, err := h.ListenTCP(netip.AddrPortFrom(netip.IPv4Unspecified(), lanPort))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan struct{}, 1)
			go func() {
				if c, err := ln.Accept(); err == nil {
					c.Close()
					accepted <- struct{}{}
				}
			}()
			in, err := web.DialTCP(netip.AddrPortFrom(rt.WAN(), lanPort), time.Second)
			if in != nil {
				in.Close()
			}
			var ne net.Error
			switch {
			case err == nil:
				t.Errorf("inbound TCP to the router's port %d connected", lanPort)
			case fw == Home && !(errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)):
				t.Errorf("home: inbound TCP: %v, want a timeout (the SYN dropped)", err)
			case fw == LinuxHost && !errors.Is(err, syscall.ECONNREFUSED):
				t.Errorf("linux-host: inbound TCP: %v, want refused (the router's own stack resets it)", err)
			}
			select {
			case <-accepted:
				t.Errorf("the LAN host accepted an unsolicited connection")
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}
