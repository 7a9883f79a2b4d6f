package natlab

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestIPv6Only: a host of an IPv6-only site has an IPv6 address and no
// IPv4 at all (no address but loopback, no route: an IPv4 destination is
// unreachable at once); outbound IPv6 leaves with the host's own address
// and its replies come back, unsolicited inbound is dropped; the router
// has no IPv4 either. Its own input on the WAN side is the variant's: the
// home router drops a new connection to itself, the linux-host one
// answers it (here with a reset: nothing listens).
func TestIPv6Only(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	pub, err := l.AddPublicHost(ctx, "pub")
	if err != nil {
		t.Fatal(err)
	}
	pub6, err := l.AddPublicHost6(ctx, "pub6")
	if err != nil {
		t.Fatal(err)
	}
	if pub6.Addr().IsValid() || !pub6.Addr6().IsValid() {
		t.Fatalf("IPv6-only public host has %v and %v, want no IPv4 and an IPv6 address", pub6.Addr(), pub6.Addr6())
	}
	for _, fw := range []Firewall{Home, LinuxHost} {
		t.Run(string(fw), func(t *testing.T) {
			site, err := l.AddSiteWith(ctx, "s"+string(fw[0]), SiteConfig{Kind: Kind(PortRestricted), Firewall: fw, IPv6Only: true})
			if err != nil {
				t.Fatal(err)
			}
			h, rt := site.Host, site.Router
			if h.Addr().IsValid() || !h.Addr6().IsValid() || rt.WAN().IsValid() || rt.LANAddr().IsValid() {
				t.Fatalf("host %v %v, router %v %v: want IPv6 only", h.Addr(), h.Addr6(), rt.WAN(), rt.LANAddr())
			}
			for _, ns := range []*Host{h, &rt.Host} {
				for _, what := range [][]string{{"-4", "addr", "show", "scope", "global"}, {"-4", "route", "show"}} {
					if out, err := ns.Exec(ctx, "ip", what...); err != nil || strings.TrimSpace(out) != "" {
						t.Errorf("%s: ip %s: %q %v, want nothing", ns.Name(), strings.Join(what, " "), out, err)
					}
				}
			}
			hs, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv6Unspecified(), 5000))
			if err != nil {
				t.Fatal(err)
			}
			defer hs.Close()
			_, err = hs.WriteToUDPAddrPort([]byte("v4"), netip.AddrPortFrom(pub.Addr(), 4000))
			if !errors.Is(err, syscall.ENETUNREACH) {
				t.Errorf("sending to IPv4 %v: %v, want ENETUNREACH", pub.Addr(), err)
			}
			for _, p := range []*Host{pub, pub6} {
				ps, err := p.ListenUDP(netip.AddrPortFrom(p.Addr6(), 4000))
				if err != nil {
					t.Fatal(err)
				}
				defer ps.Close()
				if _, _, err := Probe(ps, netip.AddrPortFrom(h.Addr6(), 5000), "unsolicited", hs, 500*time.Millisecond); err == nil {
					t.Errorf("unsolicited packet from %s got through the stateful firewall", p.Name())
				}
				_, from, err := Probe(hs, netip.AddrPortFrom(p.Addr6(), 4000), "out", ps, time.Second)
				if err != nil {
					t.Fatalf("to %s: %v", p.Name(), err)
				}
				if from.Addr() != h.Addr6() {
					t.Errorf("%s saw %v, want the host's own address %v", p.Name(), from, h.Addr6())
				}
				if _, _, err := Probe(ps, from, "reply", hs, time.Second); err != nil {
					t.Errorf("reply from %s blocked: %v", p.Name(), err)
				}
			}
			_, err = pub6.DialTCP(netip.AddrPortFrom(rt.Addr6(), 4001), 700*time.Millisecond)
			var nerr net.Error
			switch {
			case fw == Home && !(errors.As(err, &nerr) && nerr.Timeout()):
				t.Errorf("TCP to the home router's WAN %v: %v, want a timeout (dropped)", rt.Addr6(), err)
			case fw == LinuxHost && !errors.Is(err, syscall.ECONNREFUSED):
				t.Errorf("TCP to the linux-host router's WAN %v: %v, want refused (it answers)", rt.Addr6(), err)
			}
		})
	}
}
