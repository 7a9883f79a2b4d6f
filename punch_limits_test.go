package reach_test

// The punch cannon: a registered peer that knows a node's ID lists
// third-party addresses in its introductions, and the node's listening
// side pings them. These tests run a hostile dialler against a node on
// loopback and count what a victim socket receives.

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/holepunch"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/rendezvous"
)

// victim is a UDP socket on loopback that counts the packets it gets.
type victim struct {
	conn *net.UDPConn
	n    atomic.Int64
}

func startVictim(t *testing.T) *victim {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	v := &victim{conn: c}
	t.Cleanup(func() { c.Close() })
	go func() {
		b := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFromUDP(b); err != nil {
				return
			}
			v.n.Add(1)
		}
	}()
	return v
}

func (v *victim) addr() netip.AddrPort { return v.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// hostileDialler registers at the server like any peer (over QUIC on its
// own socket, so the server stamps its reflexive address) and asks for
// introductions with offers of its choosing.
func hostileDialler(t *testing.T, connect string) *rendezvous.Client {
	t.Helper()
	log := natlab.TestLogger(t).With("n", "hostile")
	s, err := sock.Listen(sock.Config{Addr: rbLoopback, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	sa, err := rendezvous.ParseServerAddr(connect)
	if err != nil {
		t.Fatal(err)
	}
	c, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: rbKey(t), Servers: []rendezvous.ServerAddr{sa},
		Transport: s.Transport(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// cannonOffer lists the victim first and then 31 other addresses: loopback
// ports, the unspecified, broadcast and multicast addresses.
func cannonOffer(v netip.AddrPort, attempt uint64) rendezvous.PeerInfo {
	cs := []rendezvous.Candidate{{Addr: v, Kind: rendezvous.Host}}
	junk := []string{"0.0.0.0:53", "255.255.255.255:9", "224.0.0.251:5353", "169.254.169.254:80"}
	for _, j := range junk {
		cs = append(cs, rendezvous.Candidate{Addr: netip.MustParseAddrPort(j), Kind: rendezvous.Host})
	}
	for i := len(cs); i < 32; i++ {
		cs = append(cs, rendezvous.Candidate{Addr: netip.AddrPortFrom(v.Addr(), uint16(40000+i)), Kind: rendezvous.Host})
	}
	return rendezvous.PeerInfo{Candidates: cs, PunchKey: holepunch.NewKey(), Attempt: attempt}
}

// cannonBound is the most one victim address can get from one dialler in
// a minute: PerPeer attempts, each pinging an address that never answers
// for the early phase only, at most every 40 ms.
const cannonBound = holepunch.DefaultPerPeer * (int(holepunch.EarlyPhase/(40*time.Millisecond)) + 1)

// TestPunchCannon: a hostile dialler sends 20 introductions of 32
// addresses each, the victim's among them. Before the limits, 5 such
// introductions made a node send 9,760 packets within 5 s; now the victim
// gets at most cannonBound (10 attempts × 51 pings) in 5 s, the node
// still answers every introduction, and the dialler's later ones are
// not punched. (The node runs on loopback with a loopback server, a
// one-machine setup where loopback addresses are allowed: the bound
// comes from the counts, not from the filter.)
func TestPunchCannon(t *testing.T) {
	rs := rbServer(t)
	node := rbNode(t, "target", rs.ConnectString())
	v := startVictim(t)
	h := hostileDialler(t, rs.ConnectString())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	for i := range 20 {
		if _, err := h.Connect(ctx, node.ID(), cannonOffer(v.addr(), uint64(2*i+1))); err != nil {
			t.Fatalf("introduction %d: %v", i, err)
		}
	}
	time.Sleep(5*time.Second - time.Since(start))
	got := v.n.Load()
	t.Logf("victim got %d packets in 5 s from 20 introductions (bound %d)", got, cannonBound)
	if got > int64(cannonBound) {
		t.Fatalf("victim got %d packets in 5 s, bound %d", got, cannonBound)
	}
	if got == 0 {
		t.Fatal("victim got nothing: the one-machine setup should still punch loopback (is the test measuring anything?)")
	}
}

// TestAcceptRefuses: a node whose Config.Accept turns a peer down refuses
// its introductions: the dialler gets rendezvous.ErrRejected, and no rung
// acts (the victim listed in a hostile offer gets no packet). Another
// peer still gets through.
func TestAcceptRefuses(t *testing.T) {
	rs := rbServer(t)
	cs := rs.ConnectString()
	a := rbNode(t, "a", cs)
	friend := rbNode(t, "friend", cs)
	h := hostileDialler(t, cs)
	var asked atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := reach.New(ctx, reach.Config{Servers: []string{cs}, ListenAddr: rbLoopback,
		Logger: natlab.TestLogger(t).With("n", "b"),
		Accept: func(p identity.PeerID) bool { asked.Add(1); return p == friend.ID() }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := a.DialSession(ctx, b.ID()); !errors.Is(err, rendezvous.ErrRejected) {
		t.Fatalf("refused dialler: %v, want rendezvous.ErrRejected", err)
	}
	v := startVictim(t)
	if _, err := h.Connect(ctx, b.ID(), cannonOffer(v.addr(), 7)); !errors.Is(err, rendezvous.ErrRejected) {
		t.Fatalf("refused hostile dialler: %v, want rendezvous.ErrRejected", err)
	}
	time.Sleep(time.Second)
	if got := v.n.Load(); got != 0 {
		t.Fatalf("victim got %d packets after a refused introduction", got)
	}
	if _, err := friend.DialSession(ctx, b.ID()); err != nil {
		t.Fatalf("accepted peer: %v", err)
	}
	if asked.Load() != 3 {
		t.Fatalf("Accept asked %d times, want 3", asked.Load())
	}
}
