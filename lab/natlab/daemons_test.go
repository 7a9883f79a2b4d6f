package natlab

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
)

// dumpOnFail logs a daemon's output if the test fails.
func dumpOnFail(t *testing.T, name string, log func() string) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- %s output ---\n%s", name, log())
		}
	})
}

// natpmpDo sends one NAT-PMP request from c and waits for the answer.
func natpmpDo(c *net.UDPConn, gw netip.AddrPort, req []byte, wait time.Duration) ([]byte, error) {
	if _, err := c.WriteToUDPAddrPort(req, gw); err != nil {
		return nil, err
	}
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, ErrNoPacket
			}
			return nil, err
		}
		if from.Addr().Unmap() != gw.Addr() || n < 8 || buf[1] != req[1]+128 {
			continue // not the answer (e.g. an address change announcement)
		}
		if rc := binary.BigEndian.Uint16(buf[2:4]); rc != 0 {
			return nil, fmt.Errorf("NAT-PMP result code %d", rc)
		}
		return buf[:n], nil
	}
}

// natpmpExternal asks for the gateway's external address (RFC 6886 3.2).
func natpmpExternal(c *net.UDPConn, gw netip.AddrPort) (netip.Addr, error) {
	b, err := natpmpDo(c, gw, []byte{0, 0}, time.Second)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(b) < 12 {
		return netip.Addr{}, fmt.Errorf("NAT-PMP answer too short: %d bytes", len(b))
	}
	return netip.AddrFrom4([4]byte(b[8:12])), nil
}

// natpmpMap asks for a UDP mapping (RFC 6886 3.3); lifetime 0 deletes it.
func natpmpMap(c *net.UDPConn, gw netip.AddrPort, internal, external uint16, lifetime time.Duration) (uint16, error) {
	req := make([]byte, 12)
	req[1] = 1 // map UDP
	binary.BigEndian.PutUint16(req[4:], internal)
	binary.BigEndian.PutUint16(req[6:], external)
	binary.BigEndian.PutUint32(req[8:], uint32(lifetime/time.Second))
	b, err := natpmpDo(c, gw, req, time.Second)
	if err != nil {
		return 0, err
	}
	if len(b) < 16 {
		return 0, fmt.Errorf("NAT-PMP answer too short: %d bytes", len(b))
	}
	return binary.BigEndian.Uint16(b[10:12]), nil
}

func hasMapping(maps []PortMapping, want PortMapping) bool {
	for _, m := range maps {
		if m == want {
			return true
		}
	}
	return false
}

// TestMiniupnpdSymmetric: behind a miniupnpd gateway that is also a
// symmetric NAT, a UPnP mapping made with upnpc lets a public host's
// datagram in to the LAN socket (and the reply leaves from the mapped
// port), a NAT-PMP mapping does the same, the router's symmetric NAT is
// unchanged for other traffic, deleting a mapping closes it, and Restart
// comes back on a new HTTP port with every mapping gone.
func TestMiniupnpdSymmetric(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, 2*time.Minute)
	a, b, c := publicTrio(t, ctx, l)
	rt, m, err := l.AddUPnPRouter(ctx, RouterConfig{Name: "gw", NAT: Symmetric}, UPnPConfig{UPnP: true, NATPMP: true})
	if err != nil {
		t.Fatal(err)
	}
	dumpOnFail(t, "miniupnpd", m.Log)
	if !UPnPWANPrefix.Contains(rt.WAN()) {
		t.Fatalf("UPnP router WAN %s not in %s", rt.WAN(), UPnPWANPrefix)
	}
	h, err := rt.AddHost(ctx, "gwh")
	if err != nil {
		t.Fatal(err)
	}
	sock, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 5000))
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	pa, err := a.ListenUDP(netip.AddrPortFrom(a.Addr(), 4000))
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Close()

	// The router's own NAT stays symmetric.
	got, err := Classify(h, a, b, c)
	if err != nil {
		t.Fatal(err)
	}
	if got.Mapping != APDM || got.Filtering != APDF || got.SeenByA.Addr() != rt.WAN() {
		t.Errorf("NAT behind miniupnpd: %s, want symmetric from %s", got, rt.WAN())
	}
	// Before any mapping nothing gets in. (From another port: the
	// conntrack entry this unanswered flow leaves, without NAT, would
	// shadow a DNAT rule added later, as on any Linux router.)
	pe, err := a.ListenUDP(netip.AddrPortFrom(a.Addr(), 4002))
	if err != nil {
		t.Fatal(err)
	}
	defer pe.Close()
	if _, _, err := Probe(pe, netip.AddrPortFrom(rt.WAN(), 6000), "early", sock, 500*time.Millisecond); err == nil {
		t.Fatal("datagram got in before any mapping")
	}

	// UPnP IGD, found by SSDP discovery.
	out, err := h.Exec(ctx, "upnpc", "-a", h.Addr().String(), "5000", "6000", "UDP")
	if err != nil || !strings.Contains(out, "is redirected to internal") {
		t.Fatalf("upnpc -a: %v\n%s", err, out)
	}
	if !strings.Contains(out, "ExternalIPAddress = "+rt.WAN().String()) {
		t.Errorf("upnpc did not report the WAN address %s:\n%s", rt.WAN(), out)
	}
	maps, err := m.Mappings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := PortMapping{Proto: "udp", External: 6000, Internal: netip.AddrPortFrom(h.Addr(), 5000)}
	if !hasMapping(maps, want) {
		t.Fatalf("mappings %v, want %v", maps, want)
	}
	msg, from, err := Probe(pa, netip.AddrPortFrom(rt.WAN(), 6000), "via-upnp", sock, time.Second)
	if err != nil || msg != "via-upnp" {
		t.Fatalf("datagram to the UPnP mapping did not arrive: %q %v", msg, err)
	}
	if from != netip.AddrPortFrom(a.Addr(), 4000) {
		t.Errorf("datagram came from %s, want the public host %s:4000", from, a.Addr())
	}
	if _, from, err := Probe(sock, from, "reply", pa, time.Second); err != nil || from != netip.AddrPortFrom(rt.WAN(), 6000) {
		t.Errorf("reply: from %s err %v, want from %s:6000", from, err, rt.WAN())
	}

	// NAT-PMP on the same gateway.
	pmp, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer pmp.Close()
	ext, err := natpmpExternal(pmp, m.NATPMPAddr())
	if err != nil || ext != rt.WAN() {
		t.Fatalf("NAT-PMP external address: %v %v, want %s", ext, err, rt.WAN())
	}
	eport, err := natpmpMap(pmp, m.NATPMPAddr(), 5000, 7000, time.Minute)
	if err != nil {
		t.Fatalf("NAT-PMP map: %v", err)
	}
	pb, err := b.ListenUDP(netip.AddrPortFrom(b.Addr(), 4000))
	if err != nil {
		t.Fatal(err)
	}
	defer pb.Close()
	if msg, _, err := Probe(pb, netip.AddrPortFrom(rt.WAN(), eport), "via-natpmp", sock, time.Second); err != nil || msg != "via-natpmp" {
		t.Fatalf("datagram to the NAT-PMP mapping (port %d) did not arrive: %q %v", eport, msg, err)
	}
	if _, err := natpmpMap(pmp, m.NATPMPAddr(), 5000, 0, 0); err != nil {
		t.Errorf("NAT-PMP delete: %v", err)
	}
	maps, _ = m.Mappings(ctx)
	for _, p := range maps {
		if p.External == eport {
			t.Errorf("NAT-PMP mapping still there after delete: %v", maps)
		}
	}

	// Deleting the UPnP mapping closes it for new flows.
	if out, err := h.Exec(ctx, "upnpc", "-u", m.RootDescURL(), "-d", "6000", "UDP"); err != nil {
		t.Fatalf("upnpc -d: %v\n%s", err, out)
	}
	if maps, _ := m.Mappings(ctx); hasMapping(maps, want) {
		t.Fatalf("mapping still listed after upnpc -d: %v", maps)
	}
	pa2, err := a.ListenUDP(netip.AddrPortFrom(a.Addr(), 4001))
	if err != nil {
		t.Fatal(err)
	}
	defer pa2.Close()
	if _, _, err := Probe(pa2, netip.AddrPortFrom(rt.WAN(), 6000), "after-delete", sock, 500*time.Millisecond); err == nil {
		t.Fatal("datagram got in after the mapping was deleted")
	}

	// Restart: new HTTP port, mappings gone, even for the flow in use.
	if out, err := h.Exec(ctx, "upnpc", "-u", m.RootDescURL(), "-a", h.Addr().String(), "5000", "6000", "UDP"); err != nil {
		t.Fatalf("upnpc -a again: %v\n%s", err, out)
	}
	if _, _, err := Probe(pa, netip.AddrPortFrom(rt.WAN(), 6000), "before-restart", sock, time.Second); err != nil {
		t.Fatalf("remapped port: %v", err)
	}
	port1 := m.HTTPPort()
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if port2 := m.HTTPPort(); port2 == port1 {
		t.Errorf("restart kept HTTP port %d", port1)
	}
	if maps, _ := m.Mappings(ctx); len(maps) != 0 {
		t.Errorf("mappings survived restart: %v", maps)
	}
	if _, _, err := Probe(pa, netip.AddrPortFrom(rt.WAN(), 6000), "after-restart", sock, 500*time.Millisecond); err == nil {
		t.Error("datagram got in through a mapping that a restart should have removed")
	}
	out, err = h.Exec(ctx, "upnpc", "-a", h.Addr().String(), "5000", "6000", "UDP")
	if err != nil || !strings.Contains(out, fmt.Sprintf(":%d/", m.HTTPPort())) {
		t.Fatalf("upnpc after restart (want discovery of port %d): %v\n%s", m.HTTPPort(), err, out)
	}
	// (from a new port: the probe above left an entry without NAT)
	pa3, err := a.ListenUDP(netip.AddrPortFrom(a.Addr(), 4003))
	if err != nil {
		t.Fatal(err)
	}
	defer pa3.Close()
	if _, _, err := Probe(pa3, netip.AddrPortFrom(rt.WAN(), 6000), "remapped", sock, time.Second); err != nil {
		t.Fatalf("mapping made after restart: %v", err)
	}
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if maps, _ := m.Mappings(ctx); len(maps) != 0 {
		t.Errorf("mappings survived Stop: %v", maps)
	}
}

// TestMiniupnpdProtocols: a gateway with only UPnP does not answer
// NAT-PMP, and one with only NAT-PMP is not found by UPnP discovery but
// maps over NAT-PMP.
func TestMiniupnpdProtocols(t *testing.T) {
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
	for _, tc := range []struct {
		name string
		cfg  UPnPConfig
	}{
		{"upnponly", UPnPConfig{UPnP: true}},
		{"pmponly", UPnPConfig{NATPMP: true}},
	} {
		rt, m, err := l.AddUPnPRouter(ctx, RouterConfig{Name: tc.name[:4], NAT: PortRestricted}, tc.cfg)
		if err != nil {
			t.Fatal(err)
		}
		dumpOnFail(t, "miniupnpd "+tc.name, m.Log)
		h, err := rt.AddHost(ctx, tc.name[:4]+"h")
		if err != nil {
			t.Fatal(err)
		}
		pmp, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
		if err != nil {
			t.Fatal(err)
		}
		defer pmp.Close()
		ext, perr := natpmpExternal(pmp, m.NATPMPAddr())
		out, uerr := h.Exec(ctx, "upnpc", "-s")
		if tc.cfg.NATPMP {
			if perr != nil || ext != rt.WAN() {
				t.Errorf("%s: NAT-PMP: %v %v, want %s", tc.name, ext, perr, rt.WAN())
			}
		} else if !errors.Is(perr, ErrNoPacket) {
			t.Errorf("%s: NAT-PMP disabled, but got %v %v", tc.name, ext, perr)
		}
		found := uerr == nil && strings.Contains(out, "Found valid IGD")
		if found != tc.cfg.UPnP {
			t.Errorf("%s: UPnP IGD found=%v, want %v (err %v)\n%s", tc.name, found, tc.cfg.UPnP, uerr, out)
		}
		// Port-restricted NAT: the mapping opens the port to anyone.
		sock, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 5000))
		if err != nil {
			t.Fatal(err)
		}
		defer sock.Close()
		eport := uint16(6000)
		if tc.cfg.NATPMP {
			if eport, err = natpmpMap(pmp, m.NATPMPAddr(), 5000, 6000, time.Minute); err != nil {
				t.Fatalf("%s: NAT-PMP map: %v", tc.name, err)
			}
		} else if out, err := h.Exec(ctx, "upnpc", "-u", m.RootDescURL(), "-a", h.Addr().String(), "5000", "6000", "UDP"); err != nil {
			t.Fatalf("%s: upnpc -a: %v\n%s", tc.name, err, out)
		}
		if _, _, err := Probe(ps, netip.AddrPortFrom(rt.WAN(), eport), "in", sock, time.Second); err != nil {
			t.Errorf("%s: datagram to mapping %s:%d: %v", tc.name, rt.WAN(), eport, err)
		}
	}
}

// stunBinding sends a STUN binding request from c to server and returns
// the reflexive address coturn saw.
func stunBinding(c *net.UDPConn, server netip.AddrPort) (netip.AddrPort, error) {
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	buf := make([]byte, 1500)
	for try := 0; try < 3; try++ {
		if _, err := c.WriteToUDPAddrPort(req.Raw, server); err != nil {
			return netip.AddrPort{}, err
		}
		c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return netip.AddrPort{}, err
		}
		return parseBinding(buf[:n], req.TransactionID)
	}
	return netip.AddrPort{}, ErrNoPacket
}

func parseBinding(b []byte, id [stun.TransactionIDSize]byte) (netip.AddrPort, error) {
	res := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := res.Decode(); err != nil {
		return netip.AddrPort{}, err
	}
	if res.TransactionID != id || res.Type != stun.BindingSuccess {
		return netip.AddrPort{}, fmt.Errorf("unexpected STUN answer %v", res)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(res); err != nil {
		return netip.AddrPort{}, err
	}
	ip, _ := netip.AddrFromSlice(xa.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)), nil
}

// TestCoturnSTUN: coturn answers a STUN binding request from behind every
// NAT type that passes UDP with that NAT's external address (for double
// NAT the carrier's), over UDP with pion/stun and with coturn's own
// turnutils_stunclient, and over TLS.
func TestCoturnSTUN(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, 2*time.Minute)
	srv, err := l.AddPublicHost(ctx, "turn")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := srv.StartCoturn(ctx, CoturnConfig{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	dumpOnFail(t, "coturn", ct.Log)
	type row struct {
		name string
		nat  NAT
		dbl  bool
	}
	for i, r := range []row{
		{"full-cone", FullCone, false},
		{"restricted-cone", RestrictedCone, false},
		{"port-restricted", PortRestricted, false},
		{"symmetric", Symmetric, false},
		{"double-nat", PortRestricted, true},
	} {
		name := fmt.Sprintf("s%d", i)
		var rt, outer *Router
		if r.dbl {
			rt, outer, err = l.AddDoubleNAT(ctx, name, r.nat, PortRestricted)
		} else {
			rt, err = l.AddRouter(ctx, RouterConfig{Name: name, NAT: r.nat})
			outer = rt
		}
		if err != nil {
			t.Fatal(err)
		}
		h, err := rt.AddHost(ctx, name+"h")
		if err != nil {
			t.Fatal(err)
		}
		c, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
		if err != nil {
			t.Fatal(err)
		}
		got, err := stunBinding(c, ct.Addr())
		c.Close()
		if err != nil {
			t.Errorf("%s: STUN: %v", r.name, err)
			continue
		}
		if got.Addr() != outer.WAN() {
			t.Errorf("%s: STUN saw %s, want the external address %s", r.name, got, outer.WAN())
		}
		t.Logf("%-16s coturn saw %s", r.name, got)
		if r.nat == Symmetric {
			out, err := h.Exec(ctx, "turnutils_stunclient", "-p", "3478", ct.Addr().Addr().String())
			if err != nil || !strings.Contains(out, outer.WAN().String()) {
				t.Errorf("turnutils_stunclient: %v, want %s in:\n%s", err, outer.WAN(), out)
			}
			// STUN over TLS, certificate checked.
			pool := x509.NewCertPool()
			pool.AddCert(ct.Certificate())
			tc, err := h.DialTCP(ct.TLSAddr(), 2*time.Second)
			if err != nil {
				t.Fatalf("TLS dial: %v", err)
			}
			conn := tls.Client(tc, &tls.Config{RootCAs: pool, ServerName: ct.TLSAddr().Addr().String(), MinVersion: tls.VersionTLS12})
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
			if _, err := conn.Write(req.Raw); err != nil {
				t.Fatalf("STUN over TLS: %v", err)
			}
			hdr := make([]byte, 20)
			if _, err := io.ReadFull(conn, hdr); err != nil {
				t.Fatalf("STUN over TLS: %v", err)
			}
			body := make([]byte, binary.BigEndian.Uint16(hdr[2:4]))
			if _, err := io.ReadFull(conn, body); err != nil {
				t.Fatalf("STUN over TLS: %v", err)
			}
			conn.Close()
			got, err := parseBinding(append(hdr, body...), req.TransactionID)
			if err != nil || got.Addr() != outer.WAN() {
				t.Errorf("STUN over TLS saw %v (%v), want %s", got, err, outer.WAN())
			}
		}
	}
}

// TestCoturnTURN: from behind a symmetric NAT, a TURN allocation with
// long-term credentials and one with REST API credentials succeed; data
// relays both ways to a public peer; coturn refuses a peer outside the
// lab's ranges and wrong passwords.
func TestCoturnTURN(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	srv, err := l.AddPublicHost(ctx, "turn")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := l.AddPublicHost(ctx, "peer")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := srv.StartCoturn(ctx, CoturnConfig{Users: map[string]string{"alice": "wonderland"}})
	if err != nil {
		t.Fatal(err)
	}
	dumpOnFail(t, "coturn", ct.Log)
	// REST API credentials need a server of their own (coturn can't mix).
	if _, err := srv.StartCoturn(ctx, CoturnConfig{Users: map[string]string{"a": "b"}, Secret: "x"}); !errors.Is(err, ErrCoturnAuthMix) {
		t.Fatalf("Users and Secret together: %v, want ErrCoturnAuthMix", err)
	}
	srvREST, err := l.AddPublicHost(ctx, "turnrest")
	if err != nil {
		t.Fatal(err)
	}
	ctREST, err := srvREST.StartCoturn(ctx, CoturnConfig{Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	dumpOnFail(t, "coturn (REST)", ctREST.Log)
	rt, err := l.AddRouter(ctx, RouterConfig{Name: "sym", NAT: Symmetric})
	if err != nil {
		t.Fatal(err)
	}
	h, err := rt.AddHost(ctx, "symh")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := peer.ListenUDP(netip.AddrPortFrom(peer.Addr(), 4000))
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()

	restUser, restPass := TURNRESTCredentials("s3cret", "bob", time.Hour)
	for _, cred := range []struct {
		name, user, pass string
		ct               *Coturn
	}{
		{"long-term", "alice", "wonderland", ct},
		{"rest-api", restUser, restPass, ctREST},
	} {
		ct, srv := cred.ct, cred.ct.Host()
		var client *turn.Client
		err := h.Run(func() error {
			conn, err := net.ListenPacket("udp4", "0.0.0.0:0")
			if err != nil {
				return err
			}
			client, err = turn.NewClient(&turn.ClientConfig{
				STUNServerAddr: ct.Addr().String(), TURNServerAddr: ct.Addr().String(),
				Conn: conn, Username: cred.user, Password: cred.pass, Realm: ct.Realm(),
			})
			if err != nil {
				conn.Close()
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		if err := client.Listen(); err != nil {
			t.Fatal(err)
		}
		relay, err := client.Allocate()
		if err != nil {
			t.Fatalf("%s: allocate: %v", cred.name, err)
		}
		defer relay.Close()
		ra := relay.LocalAddr().(*net.UDPAddr).AddrPort()
		lo, hi := ct.RelayPorts()
		if ra.Addr().Unmap() != srv.Addr() || ra.Port() < lo || ra.Port() > hi {
			t.Errorf("%s: relayed address %s, want %s:%d-%d", cred.name, ra, srv.Addr(), lo, hi)
		}
		if _, err := relay.WriteTo([]byte("out-"+cred.name), net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer.Addr(), 4000))); err != nil {
			t.Fatalf("%s: relay write: %v", cred.name, err)
		}
		msg, from, err := Receive(ps, 2*time.Second)
		if err != nil || msg != "out-"+cred.name || from.Addr() != srv.Addr() || from.Port() != ra.Port() {
			t.Fatalf("%s: peer got %q from %s (%v), want from the relayed address %s", cred.name, msg, from, err, ra)
		}
		if _, err := ps.WriteToUDPAddrPort([]byte("back"), netip.AddrPortFrom(srv.Addr(), ra.Port())); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		relay.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, pf, err := relay.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "back" {
			t.Fatalf("%s: relayed reply: %q from %v: %v", cred.name, buf[:n], pf, err)
		}
		// Not an open relay: a peer outside the lab is refused.
		if err := client.CreatePermission(&net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 9}); err == nil {
			t.Errorf("%s: coturn granted a permission for 192.0.2.1, outside the lab", cred.name)
		} else if !strings.Contains(err.Error(), "403") {
			t.Errorf("%s: permission for 192.0.2.1: %v, want 403 Forbidden", cred.name, err)
		}
	}
	// A wrong password gets no allocation.
	err = h.Run(func() error {
		conn, err := net.ListenPacket("udp4", "0.0.0.0:0")
		if err != nil {
			return err
		}
		client, err := turn.NewClient(&turn.ClientConfig{
			STUNServerAddr: ct.Addr().String(), TURNServerAddr: ct.Addr().String(),
			Conn: conn, Username: "alice", Password: "wrong", Realm: ct.Realm(), RTO: 200 * time.Millisecond,
		})
		if err != nil {
			conn.Close()
			return err
		}
		defer client.Close()
		if err := client.Listen(); err != nil {
			return err
		}
		if _, err := client.Allocate(); err == nil {
			return errors.New("allocation with a wrong password succeeded")
		} else if !strings.Contains(err.Error(), "401") {
			return fmt.Errorf("allocation with a wrong password: %v, want 401", err)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// TestSquid: on a proxy-only network, HTTP CONNECT through squid to a
// public host's port 443 tunnels bytes both ways, CONNECT to 8443 is
// refused by squid, plain HTTP to port 80 is proxied, and a direct dial
// to 443 still fails.
func TestSquid(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, time.Minute)
	web, err := l.AddPublicHost(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint16{443, 8443} {
		ln, err := web.ListenTCP(netip.AddrPortFrom(web.Addr(), p))
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
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
	}
	ln80, err := web.ListenTCP(netip.AddrPortFrom(web.Addr(), 80))
	if err != nil {
		t.Fatal(err)
	}
	defer ln80.Close()
	go http.Serve(ln80, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from web")
	}))
	rt, err := l.AddRouter(ctx, RouterConfig{Name: "corp", NAT: ProxyOnly})
	if err != nil {
		t.Fatal(err)
	}
	sq, err := rt.StartSquid(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dumpOnFail(t, "squid", func() string { return sq.Log() + "\n--- access.log ---\n" + sq.AccessLog() })
	h, err := rt.AddHost(ctx, "corph")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := h.DialTCP(netip.AddrPortFrom(web.Addr(), 443), 700*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("direct TCP to 443 works on a proxy-only network")
	}
	request := func(req string) (*http.Response, net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := h.DialTCP(sq.Addr(), 2*time.Second)
		if err != nil {
			t.Fatalf("dial squid: %v", err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			c.Close()
			t.Fatalf("squid answer: %v", err)
		}
		return resp, c, br
	}
	target := netip.AddrPortFrom(web.Addr(), 443)
	resp, c, br := request(fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target))
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT to 443: %s", resp.Status)
	}
	io.WriteString(c, "ping through squid")
	got := make([]byte, len("ping through squid"))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping through squid" {
		t.Fatalf("tunnel echo: %q %v", got, err)
	}
	c.Close()

	bad := netip.AddrPortFrom(web.Addr(), 8443)
	resp, c, _ = request(fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", bad, bad))
	c.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("CONNECT to 8443: %s, want 403", resp.Status)
	}

	resp, c, _ = request(fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", web.Addr(), web.Addr()))
	body, _ := io.ReadAll(resp.Body)
	c.Close()
	if resp.StatusCode != 200 || string(body) != "hello from web" {
		t.Errorf("plain HTTP via squid: %s %q", resp.Status, body)
	}
	if !strings.Contains(sq.AccessLog(), "TCP_TUNNEL/200") {
		t.Errorf("access log has no tunnel:\n%s", sq.AccessLog())
	}
}
