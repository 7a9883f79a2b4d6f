package candidate

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/reachp2p/reach/identity"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func info(cs ...Candidate) PeerInfo { return PeerInfo{Candidates: cs} }

// TestPunchable: both sides punch only the peer's own, reflexive and
// mapped addresses: never the relay server, a TURN server or a volunteer
// (the listener used to ping the relay's address for 15 s per
// introduction).
func TestPunchable(t *testing.T) {
	vol, _ := identity.GenerateKey()
	p := info(
		Candidate{Addr: ap("192.168.1.2:4000"), Kind: Host},
		Candidate{Addr: ap("203.0.113.7:4000"), Kind: Reflexive},
		Candidate{Addr: ap("203.0.113.1:5000"), Kind: Mapped},
		Candidate{Addr: ap("198.51.100.9:4950"), Kind: Relay},
		Candidate{Addr: ap("198.51.100.10:3478"), Kind: TURN},
		Candidate{Addr: ap("198.51.100.11:4000"), Kind: Supernode, Peer: vol.ID(), Token: "t"},
		Candidate{Addr: ap("192.168.1.2:4000"), Kind: Host}, // duplicate
		Candidate{Addr: ap("192.168.1.3:0"), Kind: Host},    // no port
		Candidate{Kind: Reflexive},                          // invalid
	)
	got := p.Punchable()
	want := []netip.AddrPort{ap("192.168.1.2:4000"), ap("203.0.113.7:4000"), ap("203.0.113.1:5000")}
	if !slices.Equal(got, want) {
		t.Fatalf("Punchable = %v, want %v", got, want)
	}
	if v := p.Volunteers(); len(v) != 1 || v[0].Peer != vol.ID() {
		t.Errorf("Volunteers = %v", v)
	}
	if !p.HasUDP() {
		t.Error("HasUDP = false with a reflexive candidate")
	}
	if info(Candidate{Addr: ap("192.168.1.2:4000"), Kind: Host}).HasUDP() {
		t.Error("HasUDP = true without a reflexive candidate")
	}
	if got := p.First(TURN); got != ap("198.51.100.10:3478") {
		t.Errorf("First(TURN) = %v", got)
	}
	if got := p.First(Mapped); got != ap("203.0.113.1:5000") {
		t.Errorf("First(Mapped) = %v", got)
	}
	// A supernode candidate without the volunteer's key is unusable.
	if v := info(Candidate{Addr: ap("198.51.100.11:4000"), Kind: Supernode}).Volunteers(); len(v) != 0 {
		t.Errorf("Volunteers without a key = %v", v)
	}
}

type addr string

func (a addr) Network() string { return "ip+net" }
func (a addr) String() string  { return string(a) }

func TestHostAddrs(t *testing.T) {
	addrs := []net.Addr{
		addr("127.0.0.1/8"), addr("10.0.0.5/24"), addr("10.0.0.5/24"), addr("fe80::1/64"),
		addr("2001:db8::5/64"), addr("224.0.0.1/4"), addr("0.0.0.0/0"), addr("garbage"),
	}
	kinds := func(cs []Candidate) []string {
		var out []string
		for _, c := range cs {
			if c.Kind != Host || c.Addr.Port() != 4000 {
				t.Errorf("candidate %v", c)
			}
			out = append(out, c.Addr.Addr().String())
		}
		return out
	}
	if got := kinds(HostAddrs(addrs, 4000, false, true)); !slices.Equal(got, []string{"10.0.0.5", "2001:db8::5"}) {
		t.Errorf("HostAddrs(no loopback, v6) = %v", got)
	}
	if got := kinds(HostAddrs(addrs, 4000, true, false)); !slices.Equal(got, []string{"127.0.0.1", "10.0.0.5"}) {
		t.Errorf("HostAddrs(loopback, no v6) = %v", got)
	}
}

func TestDirectPlausible(t *testing.T) {
	local := Prefixes([]net.Addr{addr("192.168.1.10/24"), addr("garbage")})
	if want := []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}; !slices.Equal(local, want) {
		t.Fatalf("Prefixes = %v", local)
	}
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"192.168.1.20:4000", true},  // same LAN
		{"192.168.2.20:4000", false}, // another private network
		{"100.64.3.4:4000", false},   // behind a carrier NAT
		{"203.0.113.7:4000", true},   // public
		{"[2001:db8::1]:4000", true}, // global IPv6
	} {
		p := info(Candidate{Addr: ap(tc.host), Kind: Host}, Candidate{Addr: ap("203.0.113.99:1"), Kind: Reflexive})
		if got := p.DirectPlausible(local); got != tc.want {
			t.Errorf("DirectPlausible(%s) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

// TestPunchableFromRefusesSpecial: loopback, unspecified, multicast,
// link-local and broadcast addresses are never punched, and an own-LAN
// address only for a peer a server saw on that LAN.
func TestPunchableFromRefusesSpecial(t *testing.T) {
	lan := []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("fd00:1::/64")}
	scope := PunchScope{LAN: lan, Observed: ap("203.0.113.7:4000")}
	hostile := info(
		Candidate{Addr: ap("198.51.100.50:6000"), Kind: Reflexive}, // its own, stamped by the server
		Candidate{Addr: ap("127.0.0.1:22"), Kind: Host},
		Candidate{Addr: ap("[::1]:22"), Kind: Host},
		Candidate{Addr: ap("0.0.0.0:22"), Kind: Host},
		Candidate{Addr: ap("224.0.0.251:5353"), Kind: Host},
		Candidate{Addr: ap("[ff02::1]:5353"), Kind: Host},
		Candidate{Addr: ap("169.254.1.1:80"), Kind: Host},
		Candidate{Addr: ap("[fe80::1]:80"), Kind: Host},
		Candidate{Addr: ap("255.255.255.255:9"), Kind: Host},
		Candidate{Addr: ap("192.168.1.1:53"), Kind: Mapped}, // our gateway
		Candidate{Addr: ap("192.168.1.255:9"), Kind: Host},
		Candidate{Addr: ap("[fd00:1::5]:80"), Kind: Host},
		Candidate{Addr: ap("[::ffff:127.0.0.1]:22"), Kind: Host},
		Candidate{Addr: ap("10.9.9.9:4000"), Kind: Host}, // someone's LAN, not ours: harmless to try
	)
	got := hostile.PunchableFrom(scope)
	want := []netip.AddrPort{ap("198.51.100.50:6000"), ap("10.9.9.9:4000")}
	if !slices.Equal(got, want) {
		t.Fatalf("hostile peer: punch %v, want %v", got, want)
	}
	if hostile.SameLAN(scope) {
		t.Fatal("a peer behind another public address is not on our LAN")
	}
	// Loopback is allowed only when everything runs on one machine.
	local := scope
	local.Loopback = true
	if got := hostile.PunchableFrom(local); !slices.Contains(got, ap("127.0.0.1:22")) || slices.Contains(got, ap("0.0.0.0:22")) {
		t.Fatalf("local setup: punch %v, want loopback in and unspecified out", got)
	}
}

// TestPunchableFromGenuineLANPeer: a peer behind the same public address
// (or seen by the server from inside our network) is punched on its LAN
// address, though never on the LAN's broadcast address.
func TestPunchableFromGenuineLANPeer(t *testing.T) {
	lan := []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}
	for name, refl := range map[string]string{"same NAT": "203.0.113.7:4100", "server on the LAN": "192.168.1.9:4000"} {
		peer := info(
			Candidate{Addr: ap("192.168.1.9:4000"), Kind: Host},
			Candidate{Addr: ap("192.168.1.255:4000"), Kind: Host},
			Candidate{Addr: ap(refl), Kind: Reflexive},
		)
		got := peer.PunchableFrom(PunchScope{LAN: lan, Observed: ap("203.0.113.7:4000")})
		if !slices.Contains(got, ap("192.168.1.9:4000")) || slices.Contains(got, ap("192.168.1.255:4000")) {
			t.Fatalf("%s: punch %v, want the LAN address and not the broadcast", name, got)
		}
	}
	// Host candidates in our network do not by themselves make a LAN peer.
	liar := info(Candidate{Addr: ap("192.168.1.9:4000"), Kind: Host}, Candidate{Addr: ap("198.51.100.50:6000"), Kind: Reflexive})
	if got := liar.PunchableFrom(PunchScope{LAN: lan, Observed: ap("203.0.113.7:4000")}); slices.Contains(got, ap("192.168.1.9:4000")) {
		t.Fatalf("peer elsewhere listing our LAN: punch %v", got)
	}
}

// TestPunchableFromCap: at most MaxPunchAddrs (or Max) addresses, the
// reflexive and mapped ones kept ahead of host addresses.
func TestPunchableFromCap(t *testing.T) {
	var cs []Candidate
	for i := range 32 {
		cs = append(cs, Candidate{Addr: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(1000+i)), Kind: Host})
	}
	cs = append(cs, Candidate{Addr: ap("203.0.113.9:4000"), Kind: Mapped}, Candidate{Addr: ap("203.0.113.8:4000"), Kind: Reflexive})
	got := info(cs...).PunchableFrom(PunchScope{})
	if len(got) != MaxPunchAddrs || got[0] != ap("203.0.113.8:4000") || got[1] != ap("203.0.113.9:4000") {
		t.Fatalf("punch %v: want %d addresses, reflexive then mapped first", got, MaxPunchAddrs)
	}
	if got := info(cs...).PunchableFrom(PunchScope{Max: 3}); len(got) != 3 {
		t.Fatalf("Max 3: punch %v", got)
	}
}

// TestTCPPunchAddr: the predicted public TCP address is the IP the server
// saw the peer's TCP connection come from (else its UDP one) with the
// port of its TCP listener; without a listener or a public IPv4 address
// there is none.
func TestTCPPunchAddr(t *testing.T) {
	host := Candidate{Addr: ap("10.0.0.2:4900"), Kind: TCPHost}
	for _, tc := range []struct {
		name string
		p    PeerInfo
		want string
	}{
		{"tcp-srflx", info(host, Candidate{Addr: ap("198.51.100.7:51000"), Kind: TCPReflexive}), "198.51.100.7:4900"},
		{"srflx", info(host, Candidate{Addr: ap("198.51.100.8:4900"), Kind: Reflexive}), "198.51.100.8:4900"},
		{"both: tcp-srflx first", info(Candidate{Addr: ap("198.51.100.8:4900"), Kind: Reflexive}, host, Candidate{Addr: ap("198.51.100.7:51000"), Kind: TCPReflexive}), "198.51.100.7:4900"},
		{"no listener", info(Candidate{Addr: ap("198.51.100.7:51000"), Kind: TCPReflexive}), ""},
		{"no public address", info(host), ""},
		{"IPv6 only", info(host, Candidate{Addr: ap("[2001:db8::1]:4900"), Kind: Reflexive}), ""},
	} {
		got := tc.p.TCPPunchAddr()
		if s := map[bool]string{true: got.String(), false: ""}[got.IsValid()]; s != tc.want {
			t.Errorf("%s: %v, want %q", tc.name, got, tc.want)
		}
	}
}
