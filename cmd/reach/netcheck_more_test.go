package main

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// TestGlobalIPv6: only global unicast IPv6 addresses count, not
// link-local, unique-local (fc00::/7), loopback or IPv4.
func TestGlobalIPv6(t *testing.T) {
	got := globalIPv6([]string{"192.0.2.2/24", "fd00::2/64", "fe80::1/64", "::1/128", "2a01:4f8:c0c:1234::1/64",
		"2001:db8::5", "::ffff:192.0.2.9", "not an address"})
	if want := []string{"2a01:4f8:c0c:1234::1", "2001:db8::5"}; !slices.Equal(got, want) {
		t.Errorf("globalIPv6: %q, want %q", got, want)
	}
}

// netcheckServer runs rendezvous, STUN and the relay on addr (loopback)
// until the test ends.
func netcheckServer(t *testing.T, addr string) *rendezvous.RunningServer {
	t.Helper()
	rl := relay.NewServer(relay.ServerConfig{Logger: testLogger(t).With("part", "relay")})
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Logger:    testLogger(t).With("part", "server"),
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
	}, netip.MustParseAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs
}

// runNetcheckJSON runs reach netcheck --json --no-portmap with args and
// returns its report and exit code.
func runNetcheckJSON(t *testing.T, args ...string) (netcheckReport, string, int) {
	t.Helper()
	out, errOut, code := runReach(t, nil, append([]string{"netcheck", "--json", "--no-portmap", "--timeout", "2s"}, args...)...)
	var r netcheckReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("netcheck --json: %v\n%s", err, out)
	}
	return r, errOut, code
}

// TestCLINetcheckTCP: against a server on loopback, the TCP check of its
// TCP port passes both ways (TLS proving its key, and inside a
// WebSocket), port 443 is checked too, and the human report shows both;
// with another server ID in the connect string the TLS check fails naming
// the key (STUN, which proves nothing, still answers).
func TestCLINetcheckTCP(t *testing.T) {
	rs := netcheckServer(t, "127.0.0.1:0")
	cs := rs.ConnectString()
	r, _, code := runNetcheckJSON(t, "--server", cs)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	if len(r.TCP) != 2 {
		t.Fatalf("tcp checks %+v, want the server's TCP port and 443", r.TCP)
	}
	if c := r.TCP[0]; c.Addr != rs.TCPAddr().String() || !c.TLS || !c.WebSocket || c.RTTms <= 0 || c.Port443 {
		t.Errorf("tcp check of the server's port: %+v; want %s, tls and websocket ok", c, rs.TCPAddr())
	}
	if c := r.TCP[1]; c.Addr != "127.0.0.1:443" || !c.Port443 {
		t.Errorf("second tcp check %+v, want 127.0.0.1:443", c)
	}
	out, _, _ := runReach(t, nil, "netcheck", "--no-portmap", "--timeout", "2s", "--server", cs)
	if !strings.Contains(out, "tcp       "+rs.TCPAddr().String()) || !strings.Contains(out, "tls ok rtt") ||
		!strings.Contains(out, "websocket ok") || !strings.Contains(out, "tcp       127.0.0.1:443 ") {
		t.Errorf("human report without the TCP lines:\n%s", out)
	}

	other, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sa, _ := rendezvous.ParseServerAddr(cs)
	sa.ID = other.ID()
	r, _, _ = runNetcheckJSON(t, "--server", sa.String())
	if c := r.TCP[0]; c.TLS || c.WebSocket || !strings.Contains(c.Error, other.ID().Short()) {
		t.Errorf("tcp check with the wrong server ID: %+v; want it to fail naming the key expected", c)
	}
}

// TestCLINetcheckTCPOnly: a server whose UDP does not answer but whose
// TCP does (the connect string's UDP port is closed, its tcp= port the
// server's) gives the verdict relay only over TCP, and exit 0: a node
// connects from there; with its TCP closed too, exit 1 and "no server
// answered, over UDP or TCP".
func TestCLINetcheckTCPOnly(t *testing.T) {
	rs := netcheckServer(t, "127.0.0.1:0")
	closed, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpPort := closed.LocalAddr().(*net.UDPAddr).Port
	closed.Close() // ICMP port unreachable from now on
	sa, _ := rendezvous.ParseServerAddr(rs.ConnectString())
	sa.Port, sa.TCPPort = uint16(udpPort), rs.TCPAddr().Port()
	r, errOut, code := runNetcheckJSON(t, "--server", sa.String())
	want := "relay only: no UDP answer, but TCP to " + rs.TCPAddr().String() + " works"
	if code != 0 || !strings.HasPrefix(r.Verdict, want) || errOut != "" {
		t.Errorf("exit %d, verdict %q, stderr %q; want exit 0 and %q", code, r.Verdict, errOut, want)
	}

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sa.TCPPort = uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	r, errOut, code = runNetcheckJSON(t, "--server", sa.String())
	if code != exitError || !strings.HasPrefix(r.Verdict, "nothing connects from here") ||
		!strings.HasPrefix(errOut, "reach: "+errNoAnswer.Error()) {
		t.Errorf("exit %d, verdict %q, stderr %q; want exit 1, nothing connects, %q", code, r.Verdict, errOut, errNoAnswer)
	}
}

// TestCLINetcheckIPv6: with a server on [::1], STUN over IPv6 answers and
// names the socket's IPv6 address; with a server on 127.0.0.1 only, the
// IPv6 check says no server has an IPv6 address. Global addresses are a
// list (empty here, or this host's).
func TestCLINetcheckIPv6(t *testing.T) {
	if pc, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		pc.Close()
	}
	rs := netcheckServer(t, "[::1]:0")
	r, _, code := runNetcheckJSON(t, "--server", rs.ConnectString())
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	v6 := r.IPv6
	if v6.Server != rs.UDPAddr().String() || !v6.UDP || !strings.HasPrefix(v6.Observed, "[::1]:") || v6.Global == nil {
		t.Errorf("ipv6 %+v; want STUN to %s answered, seeing [::1]", v6, rs.UDPAddr())
	}
	if r.MappingVaries != nil {
		t.Errorf("mapping_varies_by_destination %v from IPv6 answers only; want null", *r.MappingVaries)
	}
	out, _, _ := runReach(t, nil, "netcheck", "--no-portmap", "--timeout", "2s", "--server", rs.ConnectString())
	if !strings.Contains(out, "STUN over IPv6 to "+rs.UDPAddr().String()+" ok") {
		t.Errorf("human report without the IPv6 line:\n%s", out)
	}

	rs4 := netcheckServer(t, "127.0.0.1:0")
	r, _, _ = runNetcheckJSON(t, "--server", rs4.ConnectString())
	if r.IPv6.Server != "" || r.IPv6.UDP {
		t.Errorf("ipv6 %+v with an IPv4-only server; want no server", r.IPv6)
	}
	// An IPv4 and an IPv6 server: the mapping is compared over IPv4
	// alone (an IPv6 answer is another address, not another mapping).
	r, _, _ = runNetcheckJSON(t, "--server", rs4.ConnectString(), "--server", rs.ConnectString())
	if r.MappingVaries == nil || *r.MappingVaries {
		t.Errorf("mapping_varies_by_destination %v with IPv4 and IPv6 servers on loopback; want false", r.MappingVaries)
	}
	if !strings.Contains(r.Verdict, "hole punching works") {
		t.Errorf("verdict %q", r.Verdict)
	}
}
