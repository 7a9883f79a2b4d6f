package upnp_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/upnp"
)

// hooks fills cfg's socket hooks so that every socket the mapper opens is
// created inside h's namespace, and counts the sockets opened.
func hooks(h *natlab.Host, cfg upnp.Config, opened *atomic.Int32) upnp.Config {
	cfg.ListenPacket = func(network, addr string) (net.PacketConn, error) {
		opened.Add(1)
		var c net.PacketConn
		err := h.Run(func() (err error) { c, err = net.ListenPacket(network, addr); return })
		return c, err
	}
	cfg.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		opened.Add(1)
		var c net.Conn
		err := h.Run(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return
		})
		return c, err
	}
	cfg.InterfaceAddrs = func() ([]net.Addr, error) {
		var a []net.Addr
		err := h.Run(func() (err error) { a, err = net.InterfaceAddrs(); return })
		return a, err
	}
	return cfg
}

// mapperOn starts a mapper on h for a UDP socket it opens there, and waits
// for its first outcome.
func mapperOn(t *testing.T, h *natlab.Host, cfg upnp.Config) (*upnp.Mapper, *net.UDPConn, upnp.Status, time.Duration) {
	t.Helper()
	var conn *net.UDPConn
	if err := h.Run(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{})
		return
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var opened atomic.Int32
	cfg = hooks(h, cfg, &opened)
	cfg.Port = uint16(conn.LocalAddr().(*net.UDPAddr).Port)
	cfg.Logger = natlab.TestLogger(t).With("host", h.Name())
	start := time.Now()
	m, err := upnp.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := m.Wait(ctx)
	if err != nil {
		t.Fatalf("mapper on %s: no outcome: %v", h.Name(), err)
	}
	el := time.Since(start)
	if opened.Load() == 0 {
		t.Errorf("the mapper opened no socket through the hooks")
	}
	return m, conn, st, el
}

// reachable checks that a datagram from pub to ext arrives at conn, and
// that the answer comes back from ext.
func reachable(t *testing.T, pub *natlab.Host, ext netip.AddrPort, conn *net.UDPConn) {
	t.Helper()
	var pc *net.UDPConn
	if err := pub.Run(func() (err error) {
		pc, err = net.ListenUDP("udp4", &net.UDPAddr{})
		return
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.WriteToUDPAddrPort([]byte("ping"), ext)
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("datagram to mapped %s did not arrive: %v", ext, err)
	}
	conn.WriteToUDPAddrPort([]byte("pong"), from)
	pc.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, back, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("answer from %s did not come back: %v", ext, err)
	}
	if back != ext {
		t.Errorf("answer came from %s, want the mapped %s", back, ext)
	}
}

func findMapping(ctx context.Context, t *testing.T, m *natlab.Miniupnpd, ext uint16) bool {
	t.Helper()
	maps, err := m.Mappings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range maps {
		if p.Proto == "udp" && p.External == ext {
			return true
		}
	}
	return false
}

// TestLabMapper: against real miniupnpd on a symmetric NAT, each protocol
// maps the socket's port (the same external port), a public host's
// datagram reaches the socket through it, and Close removes it on
// miniupnpd's side. Every socket is made through the hooks, inside the
// host's namespace (the root namespace has no route to the lab's LANs, so
// nothing would work otherwise).
func TestLabMapper(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the lab's cleanup
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	pub, err := l.AddPublicHost(ctx, "pub")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		gw     natlab.UPnPConfig
		protos []upnp.Protocol
		want   upnp.Protocol
	}{
		{"all", natlab.UPnPConfig{UPnP: true, NATPMP: true}, nil, upnp.PCP},
		{"natpmp-only", natlab.UPnPConfig{NATPMP: true}, []upnp.Protocol{upnp.NATPMP}, upnp.NATPMP},
		{"pcp", natlab.UPnPConfig{NATPMP: true}, []upnp.Protocol{upnp.PCP}, upnp.PCP},
		{"upnp-only", natlab.UPnPConfig{UPnP: true}, nil, upnp.UPnP},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt, mu, err := l.AddUPnPRouter(ctx, natlab.RouterConfig{Name: "gw" + string(rune('a'+i)), NAT: natlab.Symmetric}, tc.gw)
			if err != nil {
				t.Fatal(err)
			}
			h, err := rt.AddHost(ctx, "h"+string(rune('a'+i)))
			if err != nil {
				t.Fatal(err)
			}
			m, conn, st, el := mapperOn(t, h, upnp.Config{Protocols: tc.protos})
			t.Logf("%s: %s mapped %s -> %s in %v (lease %v, permanent %v)", tc.name, st.Protocol, st.External, st.Internal, el.Round(time.Millisecond), st.Lease, st.Permanent)
			if st.Err != nil || !st.External.IsValid() {
				t.Fatalf("no mapping: %+v", st)
			}
			if st.Protocol != tc.want {
				t.Errorf("protocol %s, want %s", st.Protocol, tc.want)
			}
			if st.External.Addr() != rt.WAN() || st.External.Port() != uint16(conn.LocalAddr().(*net.UDPAddr).Port) {
				t.Errorf("external %s, want %s:<local port %d>", st.External, rt.WAN(), conn.LocalAddr().(*net.UDPAddr).Port)
			}
			if st.Internal.Addr() != h.Addr() {
				t.Errorf("internal %s, want %s", st.Internal, h.Addr())
			}
			if !findMapping(ctx, t, mu, st.External.Port()) {
				t.Errorf("miniupnpd has no mapping for %d", st.External.Port())
			}
			reachable(t, pub, st.External, conn)
			m.Close()
			if findMapping(ctx, t, mu, st.External.Port()) {
				t.Errorf("mapping %d still on the gateway after Close", st.External.Port())
			}
			if _, ok := m.External(); ok {
				t.Errorf("Close left an external address in the status")
			}
		})
	}
}

// TestLabMapperRestart: miniupnpd restarts (new SOAP port, every mapping
// lost); the mapper notices at its next check and maps again.
func TestLabMapperRestart(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	pub, _ := l.AddPublicHost(ctx, "pub")
	for _, tc := range []struct {
		name string
		gw   natlab.UPnPConfig
	}{{"upnp", natlab.UPnPConfig{UPnP: true}}, {"pcp", natlab.UPnPConfig{NATPMP: true}}} {
		t.Run(tc.name, func(t *testing.T) {
			rt, mu, err := l.AddUPnPRouter(ctx, natlab.RouterConfig{Name: "gw" + tc.name, NAT: natlab.Symmetric}, tc.gw)
			if err != nil {
				t.Fatal(err)
			}
			h, _ := rt.AddHost(ctx, "h"+tc.name)
			const check = time.Second
			m, conn, st, _ := mapperOn(t, h, upnp.Config{CheckInterval: check})
			if !st.External.IsValid() {
				t.Fatalf("no mapping: %+v", st)
			}
			oldPort := mu.HTTPPort()
			changed := m.Changed()
			restarted := time.Now()
			if err := mu.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			if mu.HTTPPort() == oldPort && tc.name == "upnp" {
				t.Errorf("HTTP port unchanged by restart")
			}
			// Wait for the mapping to be on the gateway again.
			deadline := time.Now().Add(15 * time.Second)
			for !findMapping(ctx, t, mu, m.Status().External.Port()) {
				if time.Now().After(deadline) {
					t.Fatalf("not mapped again 15s after the restart; status %+v", m.Status())
				}
				select {
				case <-changed:
					changed = m.Changed()
				case <-time.After(100 * time.Millisecond):
				}
			}
			el := time.Since(restarted)
			st2 := m.Status()
			t.Logf("%s: mapped again %v after the restart (check interval %v): %s, maps %d", tc.name, el.Round(time.Millisecond), check, st2.External, st2.Maps)
			if el > check+5*time.Second {
				t.Errorf("re-mapping took %v, bound is check interval + 5s", el)
			}
			reachable(t, pub, st2.External, conn)
		})
	}
}

// TestLabMapperNone: a gateway without port mapping and a double NAT
// whose home router runs miniupnpd: no mapping is advertised, and the
// first outcome is known within the discovery timeout.
func TestLabMapperNone(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	plain, err := l.AddRouter(ctx, natlab.RouterConfig{Name: "plain", NAT: natlab.Symmetric})
	if err != nil {
		t.Fatal(err)
	}
	hp, _ := plain.AddHost(ctx, "hplain")
	home, _, err := l.AddDoubleNAT(ctx, "dbl", natlab.PortRestricted, natlab.PortRestricted)
	if err != nil {
		t.Fatal(err)
	}
	mu, err := home.StartMiniupnpd(ctx, natlab.UPnPConfig{UPnP: true, NATPMP: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = mu
	hd, _ := home.AddHost(ctx, "hdbl")
	const discover = 2 * time.Second
	t.Run("no-gateway", func(t *testing.T) {
		_, _, st, el := mapperOn(t, hp, upnp.Config{DiscoverTimeout: discover})
		t.Logf("no gateway: %v after %v", st.Err, el.Round(time.Millisecond))
		if st.External.IsValid() || !errors.Is(st.Err, upnp.ErrNoGateway) {
			t.Errorf("status %+v, want ErrNoGateway and no external address", st)
		}
		if el > discover+time.Second {
			t.Errorf("outcome after %v, bound %v", el, discover+time.Second)
		}
	})
	// miniupnpd on a private WAN address maps nothing: it answers PCP MAP
	// with NO_RESOURCES and NAT-PMP with NETWORK_FAILURE. Whichever
	// protocol is asked first (pcp: the one that answered first), the
	// mapper must find out why.
	for _, tc := range []struct {
		name   string
		protos []upnp.Protocol
	}{{"double-nat", nil}, {"double-nat-pcp", []upnp.Protocol{upnp.PCP}}} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, st, el := mapperOn(t, hd, upnp.Config{DiscoverTimeout: discover, Protocols: tc.protos})
			t.Logf("double NAT: %s %v (gateway external %s) after %v", st.Protocol, st.Err, st.GatewayExternal, el.Round(time.Millisecond))
			if st.External.IsValid() || !errors.Is(st.Err, upnp.ErrPrivateExternal) {
				t.Errorf("status %+v, want ErrPrivateExternal and no external address", st)
			}
			if el > discover+time.Second {
				t.Errorf("outcome after %v, bound %v", el, discover+time.Second)
			}
			maps, _ := mu.Mappings(ctx)
			if len(maps) != 0 {
				t.Errorf("mappings left on the double-NAT gateway: %v", maps)
			}
		})
	}
}

// TestLabMapperNoResources: a PCP-only gateway (written here) that is out
// of resources at first answers MAP with NO_RESOURCES and a lifetime: the
// mapper reports ErrNoResources, advertises nothing, asks again no sooner
// than that lifetime, and maps once the gateway can.
func TestLabMapperNoResources(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt, err := l.AddRouter(ctx, natlab.RouterConfig{Name: "nores", NAT: natlab.PortRestricted})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := rt.AddHost(ctx, "hnores")
	var srv net.PacketConn
	if err := rt.Run(func() (err error) {
		srv, err = net.ListenPacket("udp4", netip.AddrPortFrom(rt.LANAddr(), 5351).String())
		return
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const hint = 2 // seconds, the NO_RESOURCES lifetime
	public := netip.MustParseAddr("5.5.5.77")
	var mu sync.Mutex
	var maps []time.Time // MAP requests that asked for a mapping
	go func() {
		buf := make([]byte, 1100)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			req := buf[:n]
			if n >= 2 && req[0] == 0 { // NAT-PMP: not spoken here
				srv.WriteTo([]byte{0, 128 + req[1], 0, 1, 0, 0, 0, 0}, from)
				continue
			}
			if n < 24 || req[0] != 2 {
				continue
			}
			resp := make([]byte, n)
			copy(resp, req)
			resp[1] |= 0x80
			resp[2], resp[3] = 0, 0
			if req[1] == 1 && n >= 60 && req[4]|req[5]|req[6]|req[7] != 0 {
				mu.Lock()
				maps = append(maps, time.Now())
				first := len(maps) == 1
				mu.Unlock()
				if first {
					resp[3] = 8 // NO_RESOURCES
					binary.BigEndian.PutUint32(resp[4:], hint)
				} else {
					resp[24+18], resp[24+19] = req[24+16], req[24+17]
					a := public.As16()
					copy(resp[24+20:], a[:])
				}
			}
			clear(resp[8:24]) // epoch and reserved
			srv.WriteTo(resp, from)
		}
	}()
	m, _, st, _ := mapperOn(t, h, upnp.Config{Protocols: []upnp.Protocol{upnp.PCP}})
	t.Logf("first outcome: %s %v", st.Protocol, st.Err)
	var ge *upnp.GatewayError
	if st.External.IsValid() || !errors.Is(st.Err, upnp.ErrNoResources) || !errors.As(st.Err, &ge) || ge.RetryAfter != hint*time.Second {
		t.Fatalf("status %+v, want ErrNoResources with RetryAfter %ds and nothing advertised", st, hint)
	}
	deadline := time.After(15 * time.Second)
	for {
		changed := m.Changed()
		if st := m.Status(); st.External.IsValid() {
			if st.Err != nil || st.External.Addr() != public {
				t.Errorf("status %+v, want %s mapped", st, public)
			}
			break
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("not mapped once the gateway had resources: %+v", m.Status())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(maps) < 2 {
		t.Fatalf("%d MAP requests", len(maps))
	}
	if d := maps[1].Sub(maps[0]); d < hint*time.Second {
		t.Errorf("asked again after %v, before the gateway's %ds", d.Round(time.Millisecond), hint)
	}
}

// TestLabMapperCGNAT: a gateway (a PCP server written here, on a plain
// router's LAN address) that grants mappings on a carrier-grade NAT
// address: the mapper sees the private external address, deletes the
// mapping it got, and reports ErrPrivateExternal instead of advertising.
func TestLabMapperCGNAT(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt, err := l.AddRouter(ctx, natlab.RouterConfig{Name: "cgn", NAT: natlab.PortRestricted})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := rt.AddHost(ctx, "hcgn")
	var srv net.PacketConn
	if err := rt.Run(func() (err error) {
		srv, err = net.ListenPacket("udp4", netip.AddrPortFrom(rt.LANAddr(), 5351).String())
		return
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cgnat := netip.MustParseAddr("100.64.7.7")
	var deletes atomic.Int32
	go func() {
		buf := make([]byte, 1100)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			req := buf[:n]
			if n < 24 || req[0] != 2 {
				continue
			}
			resp := make([]byte, n)
			copy(resp, req)
			resp[1] |= 0x80
			resp[2], resp[3] = 0, 0     // result SUCCESS
			if req[1] == 1 && n >= 60 { // MAP: grant the suggested port on the CGNAT address
				if req[4]|req[5]|req[6]|req[7] == 0 {
					deletes.Add(1)
				}
				resp[24+18], resp[24+19] = req[24+16], req[24+17]
				a := cgnat.As16()
				copy(resp[24+20:], a[:])
			}
			clear(resp[8:24]) // epoch and reserved
			srv.WriteTo(resp, from)
		}
	}()
	_, _, st, el := mapperOn(t, h, upnp.Config{Protocols: []upnp.Protocol{upnp.PCP}})
	t.Logf("CGNAT gateway: %s %v (gateway external %s) after %v", st.Protocol, st.Err, st.GatewayExternal, el.Round(time.Millisecond))
	if st.External.IsValid() || !errors.Is(st.Err, upnp.ErrPrivateExternal) || st.GatewayExternal != cgnat {
		t.Errorf("status %+v, want ErrPrivateExternal, external %s and nothing advertised", st, cgnat)
	}
	if deletes.Load() == 0 {
		t.Errorf("the useless mapping was not deleted")
	}
}
