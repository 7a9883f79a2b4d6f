package natlab

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// publicTrio adds the three public hosts Classify needs.
func publicTrio(t *testing.T, ctx context.Context, l *Lab) (a, b, c *Host) {
	t.Helper()
	var err error
	if a, err = l.AddPublicHost(ctx, "pubA"); err != nil {
		t.Fatal(err)
	}
	if b, err = l.AddPublicHost(ctx, "pubB"); err != nil {
		t.Fatal(err)
	}
	if c, err = l.AddPublicHost(ctx, "pubC"); err != nil {
		t.Fatal(err)
	}
	return a, b, c
}

// TestClassification builds every UDP-passing router type and checks that
// the mapping and filtering observed are what RFC 4787 defines for it. The
// printed table is the proof that the lab is what it claims.
func TestClassification(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, 2*time.Minute)
	a, b, c := publicTrio(t, ctx, l)
	type row struct {
		name      string
		build     func(name string) (*Router, error)
		mapping   Mapping
		filtering Filtering
	}
	simple := func(n NAT) func(string) (*Router, error) {
		return func(name string) (*Router, error) {
			return l.AddRouter(ctx, RouterConfig{Name: name, NAT: n})
		}
	}
	rows := []row{
		{"full-cone", simple(FullCone), EIM, EIF},
		{"restricted-cone", simple(RestrictedCone), EIM, ADF},
		{"port-restricted", simple(PortRestricted), EIM, APDF},
		{"symmetric", simple(Symmetric), APDM, APDF},
		{"symmetric-seq", simple(SymmetricSeq), APDM, APDF},
		{"double-nat", func(name string) (*Router, error) {
			h, _, err := l.AddDoubleNAT(ctx, name, PortRestricted, PortRestricted)
			return h, err
		}, EIM, APDF},
		{"double-nat-fullcone-cgnat", func(name string) (*Router, error) {
			h, _, err := l.AddDoubleNAT(ctx, name, FullCone, FullCone)
			return h, err
		}, EIM, EIF},
		{"udp-blocked", simple(UDPBlocked), NoUDP, ""},
		{"proxy-only", simple(ProxyOnly), NoUDP, ""},
	}
	var table strings.Builder
	fmt.Fprintf(&table, "\n%-26s %s\n", "router", "observed")
	for i, r := range rows {
		name := fmt.Sprintf("r%d", i)
		rt, err := r.build(name)
		if err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		h, err := rt.AddHost(ctx, name+"h")
		if err != nil {
			t.Fatal(err)
		}
		got, err := Classify(h, a, b, c)
		if err != nil {
			t.Errorf("%s: classify: %v", r.name, err)
			continue
		}
		fmt.Fprintf(&table, "%-26s %s\n", r.name, got)
		if got.Mapping != r.mapping || got.Filtering != r.filtering {
			t.Errorf("%s: got mapping %q filtering %q, want %q %q", r.name, got.Mapping, got.Filtering, r.mapping, r.filtering)
		}
		if got.Mapping != NoUDP && got.SeenByA.Addr() != rt.Config().WANAddr && r.name[:6] != "double" {
			t.Errorf("%s: external address %s is not the router's WAN %s", r.name, got.SeenByA.Addr(), rt.WAN())
		}
	}
	t.Log(table.String())
}

// TestCorporateTCP: the UDP-blocked firewall passes TCP to 443 and 80 only;
// the proxy-only network passes nothing directly.
func TestCorporateTCP(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	srv, err := l.AddPublicHost(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint16{443, 80, 8443} {
		ln, err := srv.ListenTCP(netip.AddrPortFrom(srv.Addr(), p))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	for _, tc := range []struct {
		nat  NAT
		open map[uint16]bool
	}{
		{UDPBlocked, map[uint16]bool{443: true, 80: true, 8443: false}},
		{ProxyOnly, map[uint16]bool{443: false, 80: false, 8443: false}},
		{PortRestricted, map[uint16]bool{443: true, 80: true, 8443: true}},
	} {
		rt, err := l.AddRouter(ctx, RouterConfig{Name: string(tc.nat)[:5], NAT: tc.nat})
		if err != nil {
			t.Fatal(err)
		}
		h, err := rt.AddHost(ctx, string(tc.nat)[:5]+"h")
		if err != nil {
			t.Fatal(err)
		}
		for port, want := range tc.open {
			// A port that must be open gets time for a loaded machine; one
			// that must be closed gets a short wait (a longer one only
			// slows the test).
			wait := 700 * time.Millisecond
			if want {
				wait = 5 * time.Second
			}
			c, err := h.DialTCP(netip.AddrPortFrom(srv.Addr(), port), wait)
			if c != nil {
				c.Close()
			}
			if (err == nil) != want {
				t.Errorf("%s: TCP to port %d: err=%v, want open=%v", tc.nat, port, err, want)
			}
		}
	}
}

// TestHairpin: with hairpinning on, a LAN host reaches another LAN host's
// mapping through the router's external address; with it off, it does not.
func TestHairpin(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	pub, err := l.AddPublicHost(ctx, "pub")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := pub.ListenUDP(netip.AddrPortFrom(pub.Addr(), 4000))
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	for _, hp := range []bool{true, false} {
		name := fmt.Sprintf("hp%v", hp)[:4]
		rt, err := l.AddRouter(ctx, RouterConfig{Name: name, NAT: FullCone, Hairpin: hp})
		if err != nil {
			t.Fatal(err)
		}
		h1, _ := rt.AddHost(ctx, name+"a")
		h2, err := rt.AddHost(ctx, name+"b")
		if err != nil {
			t.Fatal(err)
		}
		s1, _ := h1.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 5001))
		s2, _ := h2.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 5002))
		defer s1.Close()
		defer s2.Close()
		_, m2, err := Probe(s2, netip.AddrPortFrom(pub.Addr(), 4000), "map", ps, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// Hairpin on must get through: time for a loaded machine; off must
		// not: a short wait is enough.
		wait := 700 * time.Millisecond
		if hp {
			wait = 5 * time.Second
		}
		_, from, err := Probe(s1, m2, "hairpin", s2, wait)
		if hp && err != nil {
			t.Errorf("hairpin on: %v", err)
		}
		if hp && err == nil && from.Addr() != rt.WAN() {
			t.Errorf("hairpinned packet came from %s, want the router's WAN address %s", from, rt.WAN())
		}
		if !hp && err == nil {
			t.Errorf("hairpin off, but the packet got through (from %s)", from)
		}
	}
}

// TestUDPTimeout: a mapping dies after the configured timeout without
// traffic, and lives while traffic refreshes it.
func TestUDPTimeout(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	pub, _ := l.AddPublicHost(ctx, "pub")
	rt, err := l.AddRouter(ctx, RouterConfig{Name: "to", NAT: PortRestricted, UDPTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := rt.AddHost(ctx, "toh")
	ps, _ := pub.ListenUDP(netip.AddrPortFrom(pub.Addr(), 4000))
	hs, _ := h.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 5000))
	defer ps.Close()
	defer hs.Close()
	_, m, err := Probe(hs, netip.AddrPortFrom(pub.Addr(), 4000), "out", ps, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Kept alive: outbound every second for 3s, then a reply gets in.
	for i := 0; i < 3; i++ {
		time.Sleep(time.Second) // the keepalive spacing under test

		Probe(hs, netip.AddrPortFrom(pub.Addr(), 4000), "keepalive", ps, time.Second)
	}
	if _, _, err := Probe(ps, m, "still-open", hs, time.Second); err != nil {
		t.Fatalf("mapping died although kept alive: %v", err)
	}
	time.Sleep(3500 * time.Millisecond) // outlive the 2s UDP timeout
	if _, _, err := Probe(ps, m, "after-timeout", hs, 700*time.Millisecond); err == nil {
		t.Fatalf("mapping still open 3.5s after the last packet with a 2s timeout")
	}
}

// TestIPv6Firewall: a LAN host behind an IPv6 router keeps its own global
// address; unsolicited inbound is dropped, replies pass.
func TestIPv6Firewall(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	pub, _ := l.AddPublicHost(ctx, "pub6")
	rt, err := l.AddRouter(ctx, RouterConfig{Name: "v6", NAT: PortRestricted, IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	h, err := rt.AddHost(ctx, "v6h")
	if err != nil {
		t.Fatal(err)
	}
	if !h.Addr6().IsValid() || !pub.Addr6().IsValid() {
		t.Fatalf("no IPv6 addresses: %v %v", h.Addr6(), pub.Addr6())
	}
	ps, err := pub.ListenUDP(netip.AddrPortFrom(pub.Addr6(), 4000))
	if err != nil {
		t.Fatal(err)
	}
	hs, err := h.ListenUDP(netip.AddrPortFrom(h.Addr6(), 5000))
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	defer hs.Close()
	if _, _, err := Probe(ps, netip.AddrPortFrom(h.Addr6(), 5000), "unsolicited", hs, 700*time.Millisecond); err == nil {
		t.Fatal("unsolicited IPv6 packet got through the stateful firewall")
	}
	_, from, err := Probe(hs, netip.AddrPortFrom(pub.Addr6(), 4000), "out", ps, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if from.Addr() != h.Addr6() {
		t.Errorf("public host saw %s, want the LAN host's own address %s (no NAT on IPv6)", from, h.Addr6())
	}
	if _, _, err := Probe(ps, from, "reply", hs, time.Second); err != nil {
		t.Errorf("reply blocked: %v", err)
	}
}

// TestISPHop: a host behind an ISP hop is reached from the internet on
// the first datagram, at once: the ISP answers ARP for its segment without
// Linux's default proxy ARP delay (a random wait of up to 0.8 s meant to
// let a real owner answer first), which a routed provider does not have
// and which made a site's first packets from every new neighbour wait.
// A datagram with TTL 1 dies at the ISP's router, one with TTL 2 arrives:
// the provider is a hop.
func TestISPHop(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	pub, err := l.AddPublicHost(ctx, "pubi")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := pub.ListenUDP(netip.AddrPortFrom(pub.Addr(), 4000))
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	setTTL := func(ttl int) {
		rc, err := ps.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL, ttl) }); err != nil || serr != nil {
			t.Fatal(err, serr)
		}
	}
	for i := range 3 {
		site, err := l.AddSiteWith(ctx, fmt.Sprintf("isph%d", i), SiteConfig{Kind: Open, ISP: true})
		if err != nil {
			t.Fatal(err)
		}
		hs, err := site.Host.ListenUDP(netip.AddrPortFrom(site.Host.Addr(), 5000))
		if err != nil {
			t.Fatal(err)
		}
		defer hs.Close()
		dst := netip.AddrPortFrom(site.Host.Addr(), 5000)
		setTTL(1)
		if _, _, err := Probe(ps, dst, "ttl1", hs, 300*time.Millisecond); err == nil {
			t.Errorf("%s: a datagram with TTL 1 crossed the ISP's router", site.Host.Name())
		}
		// The TTL-1 datagram resolved nothing (it died at the router,
		// which had no need for ARP on its segment); flush the public
		// host's neighbour cache so the next one asks afresh.
		if err := run(ctx, "ip", "-n", pub.Namespace(), "neigh", "flush", "all"); err != nil {
			t.Fatal(err)
		}
		setTTL(2)
		start := time.Now()
		if _, _, err := Probe(ps, dst, "ttl2", hs, 2*time.Second); err != nil {
			t.Fatalf("%s: a datagram with TTL 2: %v", site.Host.Name(), err)
		}
		if el := time.Since(start); el > 100*time.Millisecond {
			t.Errorf("%s: the first datagram took %v to arrive (ARP through the ISP's proxy ARP), want well under 100ms", site.Host.Name(), el)
		}
	}
}

// TestCleanup: a lab whose process is gone is removed by the next New, a
// live one is left alone, and Close leaves no namespace behind.
func TestCleanup(t *testing.T) {
	Require(t)
	ctx := ctxT(t, time.Minute)
	// A fake leftover of a crashed run: a namespace with our prefix whose
	// registry entry names a dead PID.
	stale := Prefix + "dead-x"
	if err := run(ctx, "ip", "netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	defer run(context.Background(), "ip", "netns", "del", stale)
	l, err := New(ctx, Config{Logger: TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddPublicHost(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if nsExists(t, stale) {
		t.Errorf("stale namespace %s survived New", stale)
	}
	// a second lab's cleanup must not touch the live one
	if _, err := Cleanup(ctx, false); err != nil {
		t.Fatal(err)
	}
	if !nsExists(t, l.nsName("x")) {
		t.Fatalf("Cleanup removed a live lab's namespace")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	out, _ := output(ctx, "ip", "netns", "list")
	if strings.Contains(out, Prefix+l.ID()+"-") {
		t.Fatalf("namespaces left after Close:\n%s", out)
	}
}

func nsExists(t *testing.T, ns string) bool {
	out, err := output(context.Background(), "ip", "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == ns {
			return true
		}
	}
	return false
}
