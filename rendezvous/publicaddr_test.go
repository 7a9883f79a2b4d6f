package rendezvous

import (
	"net"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
)

// TestPublicAddrs: a server given public addresses advertises those, in
// order, with the bound port where none is given, and names the public
// IPv4 address in OTHER-ADDRESS; it still listens where it was told.
func TestPublicAddrs(t *testing.T) {
	rs := startTestServer(t, ServerConfig{PublicAddrs: []netip.AddrPort{
		netip.MustParseAddrPort("203.0.113.7:0"),
		netip.MustParseAddrPort("[2001:db8::1]:5000"),
	}})
	port := rs.UDPAddr().Port()
	if !rs.UDPAddr().Addr().IsLoopback() {
		t.Errorf("bound %v, want loopback", rs.UDPAddr())
	}
	got := rs.ConnectStrings()
	if len(got) != 2 {
		t.Fatalf("connect strings %q, want 2", got)
	}
	sa, err := ParseServerAddr(got[0])
	if err != nil || sa.Host != "203.0.113.7" || sa.Port != port || got[0] != rs.ConnectString() {
		t.Errorf("first connect string %q (%v), want host 203.0.113.7 port %d", got[0], err, port)
	}
	if sa6, err := ParseServerAddr(got[1]); err != nil || sa6.Host != "2001:db8::1" || sa6.Port != 5000 {
		t.Errorf("second connect string %q (%v)", got[1], err)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var other stun.OtherAddress
	if err := other.GetFrom(bind(t, c, rs.UDPAddr())); err != nil || !other.IP.Equal(net.ParseIP("203.0.113.7")) {
		t.Errorf("OTHER-ADDRESS %v (%v), want 203.0.113.7", other, err)
	}
}
