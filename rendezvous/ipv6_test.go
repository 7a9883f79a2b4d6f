package rendezvous

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/lab/natlab"
)

// names gives host names addresses without DNS (ClientConfig.lookupNetIP).
func names(m map[string][]netip.Addr) func(context.Context, string, string) ([]netip.Addr, error) {
	return func(_ context.Context, _, host string) ([]netip.Addr, error) {
		if ips, ok := m[host]; ok {
			return ips, nil
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			return []netip.Addr{ip}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
}

// TestResolveUDPOrder: the QUIC side dials every address of a server's
// name that suits the socket, IPv4 first on a dual-stack socket, each
// once.
func TestResolveUDPOrder(t *testing.T) {
	v4a, v4b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	v6a, v6b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	lookup := names(map[string][]netip.Addr{"srv.example": {v6a, v4a, v6b, netip.AddrFrom16(v4b.As16()), v4a}})
	sa := ServerAddr{Host: "srv.example", Port: 4950}
	ap := func(ips ...netip.Addr) []netip.AddrPort {
		var out []netip.AddrPort
		for _, ip := range ips {
			out = append(out, netip.AddrPortFrom(ip, 4950))
		}
		return out
	}
	for _, tc := range []struct {
		network, addr string
		want          []netip.AddrPort
	}{
		{"udp", ":0", ap(v4a, v4b, v6a, v6b)},
		{"udp4", "127.0.0.1:0", ap(v4a, v4b)},
		{"udp6", "[::1]:0", ap(v6a, v6b)},
	} {
		uc, err := net.ListenPacket(tc.network, tc.addr)
		if err != nil {
			t.Logf("%s %s: %v (skipped)", tc.network, tc.addr, err)
			continue
		}
		c := &Client{cfg: ClientConfig{Transport: &quic.Transport{Conn: uc}, lookupNetIP: lookup}}
		got, err := c.resolveUDP(context.Background(), sa)
		uc.Close()
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("socket %s %s: %v %v, want %v", tc.network, tc.addr, got, err, tc.want)
		}
	}
}

// TestLabIPv6OnlyRegistersOverQUIC: on an IPv6-only host (no IPv4 address
// or route), a server named by a dual-stack name (an A and an AAAA
// record) is reached over QUIC on its IPv6 address, so the server sees the
// node's UDP socket, not a TCP fallback. Before the client tried the
// name's next address, the QUIC dial to the IPv4 address failed at once
// and the node ended up registered over TCP.
func TestLabIPv6OnlyRegistersOverQUIC(t *testing.T) {
	l := natlab.NewT(t)
	ctx := testCtx(t, time.Minute)
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	site, err := l.AddSiteWith(ctx, "v6", natlab.SiteConfig{Kind: natlab.Kind(natlab.PortRestricted), IPv6Only: true})
	if err != nil {
		t.Fatal(err)
	}
	h := site.Host
	var rs *RunningServer
	if err := srv.Run(func() (err error) {
		rs, err = StartServer(ctx, ServerConfig{Logger: testLogger(t, "server")}, netip.AddrPortFrom(netip.IPv6Unspecified(), DefaultPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	lookup := names(map[string][]netip.Addr{"srv.example": {srv.Addr(), srv.Addr6()}})
	uc, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv6Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: uc}
	t.Cleanup(func() { tr.Close(); uc.Close() })
	sa := ServerAddr{ID: rs.ID(), Host: "srv.example", Port: DefaultPort}
	c := newTestClient(t, "v6only", mustKey(t), []ServerAddr{sa}, tr, func(cfg *ClientConfig) {
		cfg.lookupNetIP = lookup
		// TCP as a dual-stack dialler does it: every address of the
		// name in turn, from inside the host.
		cfg.DialTCP = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, _ := net.SplitHostPort(addr)
			ips, err := lookup(ctx, "ip", host)
			if err != nil {
				return nil, err
			}
			var conn net.Conn
			for _, ip := range ips {
				err = h.Run(func() (err error) {
					var d net.Dialer
					conn, err = d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
					return err
				})
				if err == nil {
					return conn, nil
				}
			}
			return nil, err
		}
	})
	if err := c.Start(testCtx(t, 5*time.Second)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	// QUIC gets a head start over TCP, but on a starved machine TCP may
	// register first; the QUIC attempt goes on and replaces it
	// (dialServer), which is what the node must end up with.
	want := netip.AddrPortFrom(h.Addr6(), addrPortOf(uc.LocalAddr()).Port())
	deadline := time.Now().Add(10 * time.Second)
	for c.Observed() != want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := c.Observed(); got != want {
		t.Errorf("server observed %v, want the node's UDP socket %v (registered over QUIC on IPv6)", got, want)
	}
	if got := c.Current(); got != sa {
		t.Errorf("registered with %v, want %v", got, sa)
	}
}
