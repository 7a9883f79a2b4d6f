package holepunch

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/internal/sock"
)

func loopSock(t *testing.T) *sock.Socket {
	t.Helper()
	s, err := sock.Listen(sock.Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func waitValidated(t *testing.T, a *Attempt, want netip.AddrPort) {
	t.Helper()
	select {
	case got := <-a.Validated():
		if got != want {
			t.Fatalf("validated %s, want %s", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("nothing validated, want %s", want)
	}
}

func TestPunchBothWays(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	sa, sb := loopSock(t), loopSock(t)
	ma, mb := NewManager(sa, nil), NewManager(sb, nil)
	defer ma.Close()
	defer mb.Close()
	key := NewKey()
	// The dialler knows a dead candidate and the real one; the listener
	// knows only a wrong port, so it must learn the dialler's real address
	// from its pings (peer-reflexive).
	dead := netip.MustParseAddrPort("127.0.0.1:9")
	aa, err := ma.Start(Params{Attempt: 7, Key: key, Role: RoleDialer, Remote: []netip.AddrPort{dead, sb.LocalAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer aa.Close()
	ab, err := mb.Start(Params{Attempt: 7, Key: key, Role: RoleListener, Remote: []netip.AddrPort{netip.AddrPortFrom(sa.LocalAddr().Addr(), 1)}})
	if err != nil {
		t.Fatal(err)
	}
	defer ab.Close()
	waitValidated(t, aa, sb.LocalAddr())
	waitValidated(t, ab, sa.LocalAddr())
	if l := ab.Learned(); len(l) != 1 || l[0] != sa.LocalAddr() {
		t.Errorf("listener learned %v, want [%s]", l, sa.LocalAddr())
	}
	if aa.Observed() != sa.LocalAddr() {
		t.Errorf("dialler's observed address %s, want %s", aa.Observed(), sa.LocalAddr())
	}
	if _, err := ma.Start(Params{Attempt: 7, Key: key, Role: RoleDialer}); err != ErrAttemptInUse {
		t.Errorf("duplicate attempt: %v", err)
	}
}

// A third party without the key cannot validate an address, and packets
// reflected back or with the wrong key are dropped and counted.
func TestPunchForgery(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	sa := loopSock(t)
	ma := NewManager(sa, nil)
	defer ma.Close()
	key := NewKey()
	attacker, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	victim := netip.MustParseAddrPort("127.0.0.1:9")
	a, err := ma.Start(Params{Attempt: 1, Key: key, Role: RoleDialer, Remote: []netip.AddrPort{victim}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	to := net.UDPAddrFromAddrPort(sa.LocalAddr())
	bad := [][]byte{
		// a pong under the wrong key
		(&packet{typ: typePong, role: RoleListener, attempt: 1, txid: a.txid(attacker.LocalAddr().(*net.UDPAddr).AddrPort())}).marshal(NewKey()),
		// our own role reflected back, with the right key
		(&packet{typ: typePong, role: RoleDialer, attempt: 1, txid: a.txid(attacker.LocalAddr().(*net.UDPAddr).AddrPort())}).marshal(key),
		// a genuine-looking pong for a ping that was sent elsewhere (the victim)
		(&packet{typ: typePong, role: RoleListener, attempt: 1, txid: a.txid(victim)}).marshal(key),
		// garbage, a short packet, a wrong version, an unknown attempt
		bytes.Repeat([]byte{Magic}, PacketLen),
		{Magic, 1, 2},
		append([]byte{Magic, 9}, make([]byte, PacketLen-2)...),
		(&packet{typ: typePing, role: RoleListener, attempt: 99}).marshal(key),
	}
	for _, b := range bad {
		attacker.WriteToUDP(b, to)
	}
	deadline := time.Now().Add(3 * time.Second)
	for ma.Dropped() < uint64(len(bad)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ma.Dropped() < uint64(len(bad)) {
		t.Errorf("dropped %d of %d bad packets", ma.Dropped(), len(bad))
	}
	select {
	case v := <-a.Validated():
		t.Fatalf("forged packet validated %s", v)
	case <-time.After(200 * time.Millisecond):
	}
	if l := a.Learned(); len(l) != 0 {
		t.Fatalf("learned %v from forged packets", l)
	}
}

func TestMaxRemotes(t *testing.T) {
	sa := loopSock(t)
	m := NewManager(sa, nil)
	defer m.Close()
	var many []netip.AddrPort
	for i := 0; i < 100; i++ {
		many = append(many, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(20000+i)))
	}
	a, err := m.Start(Params{Attempt: 2, Key: NewKey(), Role: RoleDialer, Remote: many})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.mu.Lock()
	n := len(a.remotes)
	a.mu.Unlock()
	if n != MaxRemotes {
		t.Fatalf("%d remotes, want the cap %d", n, MaxRemotes)
	}
	if _, err := m.Start(Params{Attempt: 3, Key: []byte("short"), Role: RoleDialer}); err != ErrBadKey {
		t.Fatalf("short key: %v", err)
	}
}
