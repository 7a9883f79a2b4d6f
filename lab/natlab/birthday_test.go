package natlab

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// setTTL sets c's default IPv4 TTL.
func setTTL(c *net.UDPConn, ttl int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL, ttl) }); err != nil {
		return err
	}
	return serr
}

// birthdayTrial is one birthday punch at the packet level between a host
// behind a random symmetric NAT (sym, router symR) and one behind a
// port-restricted cone (pr): sym opens k mappings towards pr's public
// address (k sockets, one TTL-2 primer each: it crosses sym's NAT and
// expires at its provider's router, so pr's router keeps no state for
// it), then pr sends m probes to random ports of symR's WAN address; a
// probe that hits one of the k mappings gets in, and the socket that
// received it answers from there, which pr's NAT lets in (pr sent to
// exactly that address). It returns whether pr heard an answer, and when
// (from its first probe).
func birthdayTrial(t *testing.T, sym, pr, srv *Host, symR *Router, k, m int, pace time.Duration) (bool, time.Duration) {
	t.Helper()
	// pr's public address, as a server sees it.
	pc, err := pr.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	sc, err := srv.ListenUDP(netip.AddrPortFrom(srv.Addr(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	_, prPub, err := Probe(pc, netip.MustParseAddrPort(sc.LocalAddr().String()), "who", sc, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// sym's k mappings, and their readers: a probe is answered at once.
	var hits atomic.Int32
	socks := make([]*net.UDPConn, 0, k)
	defer func() {
		for _, c := range socks {
			c.Close()
		}
	}()
	for range k {
		c, err := sym.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
		if err != nil {
			t.Fatal(err)
		}
		socks = append(socks, c)
		if err := setTTL(c, 2); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteToUDPAddrPort([]byte("primer"), prPub); err != nil {
			t.Fatal(err)
		}
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				if string(buf[:n]) == "probe" {
					hits.Add(1)
					setTTL(c, 64)
					c.WriteToUDPAddrPort([]byte("hit"), from)
				}
			}
		}()
	}
	// pr's probes: m distinct random ports in the range masquerade random
	// allocates from (1024-65535).
	start := time.Now()
	got := make(chan time.Duration, 1)
	go func() {
		buf := make([]byte, 64)
		pc.SetReadDeadline(time.Now().Add(time.Duration(m)*pace + 700*time.Millisecond))
		for {
			n, _, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				close(got)
				return
			}
			if string(buf[:n]) == "hit" {
				got <- time.Since(start)
				return
			}
		}
	}()
	tried := map[uint16]bool{}
	for len(tried) < m {
		p := uint16(1024 + rand.IntN(65536-1024))
		if tried[p] {
			continue
		}
		tried[p] = true
		pc.WriteToUDPAddrPort([]byte("probe"), netip.AddrPortFrom(symR.WAN(), p))
		time.Sleep(pace)
	}
	d, ok := <-got
	return ok, d
}

// TestBirthdayPunch measures the birthday attack on a random symmetric NAT
// at the packet level, before any of it is in the product: k mappings on
// the symmetric side (k sockets: file descriptors), m probes from a
// port-restricted peer (packets only), 1 ms apart,
// both sites behind ISP hops, in both firewall variants. The chance of a
// hit is 1 - exp(-k*m/64512); the test asserts the observed rate is not
// far below it (binomial, 4 sigma) and logs the figures.
func TestBirthdayPunch(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, 5*time.Minute)
	srv, err := l.AddPublicHost(ctx, "bsrv")
	if err != nil {
		t.Fatal(err)
	}
	const trials = 12
	for _, fw := range []Firewall{Home, LinuxHost} {
		symS, err := l.AddSiteWith(ctx, "bs"+string(fw[:1]), SiteConfig{Kind: Kind(Symmetric), Firewall: fw, ISP: true})
		if err != nil {
			t.Fatal(err)
		}
		prS, err := l.AddSiteWith(ctx, "bp"+string(fw[:1]), SiteConfig{Kind: Kind(PortRestricted), Firewall: fw, ISP: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, km := range [][2]int{{256, 256}, {256, 768}} {
			k, m := km[0], km[1]
			hit := 0
			var slowest time.Duration
			for range trials {
				ok, d := birthdayTrial(t, symS.Host, prS.Host, srv, symS.Router, k, m, time.Millisecond)
				if ok {
					hit++
					slowest = max(slowest, d)
				}
			}
			p := 1 - math.Exp(-float64(k*m)/64512)
			sigma := math.Sqrt(trials * p * (1 - p))
			line := fmt.Sprintf("%s: %d mappings x %d probes: %d/%d hits (expected %.0f%%), slowest hit %v",
				fw, k, m, hit, trials, 100*p, slowest.Round(time.Millisecond))
			t.Log(line)
			if float64(hit) < trials*p-4*sigma {
				t.Errorf("%s: far below the birthday bound", line)
			}
		}
	}
}
