package relay_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// startParkServer runs rendezvous + relay on loopback with per-source
// limits off (many links from 127.0.0.1) and TLS links parking after
// 50 ms.
func startParkServer(t testing.TB, rcfg relay.ServerConfig) (*rendezvous.RunningServer, *relay.Server) {
	t.Helper()
	rcfg.TLSPark = 50 * time.Millisecond
	rcfg.ConnRate, rcfg.MaxLinksPerIP, rcfg.MaxSessionsPerIP = -1, -1, -1
	if rcfg.Logger == nil {
		rcfg.Logger = quiet()
	}
	rl := relay.NewServer(rcfg)
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Logger:    quiet(),
		Limits:    rendezvous.LimitConfig{Disable: true},
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
	}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs, rl
}

// waitParked waits until n TLS links are parked.
func waitParked(t testing.TB, rl *relay.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for rl.Metrics().Parked != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d links parked, want %d", rl.Metrics().Parked, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pktHandler hands the packets a link receives to a channel.
type pktHandler struct{ in chan []byte }

func (h pktHandler) Packet(_ identity.PeerID, pkt []byte) {
	select {
	case h.in <- bytes.Clone(pkt):
	default:
	}
}
func (pktHandler) Notice(identity.PeerID, error) {}

func newKey(t testing.TB) *identity.Key {
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestTLSParkWakes (issue 14): a TLS link that idles is parked (no read
// loop), and what it sends then (a packet, a relayed stream's frames)
// wakes it and is forwarded intact (to a parked link: writes need no read
// loop), each time it parks again.
func TestTLSParkWakes(t *testing.T) {
	rs, rl := startParkServer(t, relay.ServerConfig{})
	sa := rs.ServerAddr()
	ka, kb := newKey(t), newKey(t)
	hb := pktHandler{in: make(chan []byte, 4)}
	a := dialTLS(t, sa, ka, "", false, pktHandler{in: make(chan []byte, 4)})
	dialTLS(t, sa, kb, "", false, hb)
	for i := range 3 {
		sendParked(t, rl, 2, i, a, kb.ID(), hb.in)
	}

	// Relayed streams: opened and carried by parked links.
	sp, sq := newStreamPeer(t, sa, false), newStreamPeer(t, sa, true)
	waitParked(t, rl, 4)
	c1, c2 := streamPair(t, sp, sq)
	defer c1.Close()
	defer c2.Close()
	for i := range 3 {
		waitParked(t, rl, 4)
		msg := make([]byte, 50000)
		rand.Read(msg)
		go c1.Write(msg)
		got := make([]byte, len(msg))
		c2.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c2, got); err != nil {
			t.Fatalf("round %d: stream read: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("round %d: stream bytes changed on the way", i)
		}
	}
}

// TestTLSParkPings: parked links whose nodes ping (at a third of
// IdleTimeout) are woken by each ping and answered, and live on past
// IdleTimeout several times over.
func TestTLSParkPings(t *testing.T) {
	rs, rl := startParkServer(t, relay.ServerConfig{IdleTimeout: 3 * time.Second})
	sa := rs.ServerAddr()
	a := dialTLS(t, sa, newKey(t), "", false, pktHandler{in: make(chan []byte, 1)})
	b := dialTLS(t, sa, newKey(t), "", false, pktHandler{in: make(chan []byte, 1)})
	waitParked(t, rl, 2)
	time.Sleep(7 * time.Second)
	for _, l := range []relay.Link{a, b} {
		if err := l.Err(); err != nil {
			t.Fatalf("a link ended: %v", err)
		}
	}
	m := rl.Metrics()
	if m.Clients["tls"] != 2 {
		t.Fatalf("%d tls links, want 2", m.Clients["tls"])
	}
	if m.Woken < 8 { // a ping each second on each link: about 14
		t.Fatalf("%d wake-ups in 7 s, want pings to wake the links", m.Woken)
	}
}

// silentLink links to the relay over TLS and then sends nothing (not
// even pings).
func silentLink(t *testing.T, sa rendezvous.ServerAddr) *tls.Conn {
	t.Helper()
	cfg, _, err := identity.ClientTLSConfig(newKey(t), sa.ID, relay.ALPN)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tls.Dial("tcp", sa.TCPHostPort(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	if _, err := tc.Write([]byte{0x01, 0, 0}); err != nil { // HELLO, no token
		t.Fatal(err)
	}
	var h [3]byte
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(tc, h[:]); err != nil || h[0] != 0x02 {
		t.Fatalf("want WELCOME: %x %v", h, err)
	}
	if _, err := io.ReadFull(tc, make([]byte, int(h[1])<<8|int(h[2]))); err != nil {
		t.Fatal(err)
	}
	return tc
}

// TestTLSParkExpires: a parked link that sends nothing is still ended
// IdleTimeout after its last frame (by the server's sweep), not before.
func TestTLSParkExpires(t *testing.T) {
	const idle = 2 * time.Second
	rs, rl := startParkServer(t, relay.ServerConfig{IdleTimeout: idle})
	tc := silentLink(t, rs.ServerAddr())
	linked := time.Now()
	waitParked(t, rl, 1)
	tc.SetReadDeadline(time.Now().Add(idle + 5*time.Second))
	_, err := io.ReadFull(tc, make([]byte, 1))
	took := time.Since(linked)
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read %v after %v, want the server to close the link", err, took)
	}
	if took < idle {
		t.Fatalf("closed after %v, before IdleTimeout (%v)", took, idle)
	}
	t.Logf("an idle parked link closed after %v (IdleTimeout %v)", took.Round(time.Millisecond), idle)
	m := rl.Metrics()
	if m.Clients["tls"] != 0 || m.Parked != 0 {
		t.Fatalf("after expiry: %d tls links, %d parked; want none", m.Clients["tls"], m.Parked)
	}
}

// TestTLSParkShutdown: the server's shutdown ends parked links with
// ERROR shutdown (ErrShutdown at the node), leaving no goroutine.
func TestTLSParkShutdown(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	rs, rl := startParkServer(t, relay.ServerConfig{})
	sa := rs.ServerAddr()
	var links []relay.Link
	for range 3 {
		links = append(links, dialTLS(t, sa, newKey(t), "", false, pktHandler{in: make(chan []byte, 1)}))
	}
	waitParked(t, rl, 3)
	rs.Close()
	for _, l := range links {
		select {
		case <-l.Done():
			if !errors.Is(l.Err(), relay.ErrShutdown) {
				t.Fatalf("link ended with %v, want ErrShutdown", l.Err())
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a parked link outlived the server")
		}
	}
	// The node hears ERROR before the server's close: give it a moment.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m := rl.Metrics()
		if m.Parked == 0 && m.Clients["tls"] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after shutdown: %d parked, %d tls links", m.Parked, m.Clients["tls"])
		}
	}
	for _, l := range links {
		l.Close()
	}
}

// countPkts counts the packets a link receives.
type countPkts struct{ n *atomic.Int64 }

func (h countPkts) Packet(identity.PeerID, []byte) { h.n.Add(1) }
func (countPkts) Notice(identity.PeerID, error)    {}

// TestTLSParkFlood: 2,000 parked links woken at once (each sends one
// packet to its partner, both ways) deliver every packet or count it as
// a named drop, park again, and leave no goroutine when they close.
func TestTLSParkFlood(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	n := 2000
	if raceEnabled {
		n = 400
	}
	rs, rl := startParkServer(t, relay.ServerConfig{})
	sa := rs.ServerAddr()
	var got atomic.Int64
	keys := make([]*identity.Key, n)
	links := make([]relay.Link, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2*runtime.GOMAXPROCS(0))
	errs := make(chan error, n)
	for i := range n {
		keys[i] = newKey(t)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l, err := relay.TLSDialer{DialTCP: (&net.Dialer{}).DialContext}.DialLink(ctx, relay.LinkParams{
				Server: sa, Key: keys[i], Handler: countPkts{&got}, Logger: quiet()})
			if err != nil {
				errs <- err
				return
			}
			links[i] = l
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	waitParked(t, rl, n)
	before := rl.Metrics()
	pkt := make([]byte, 1000)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			links[i].Send(keys[i^1].ID(), pkt) // pairs (0,1), (2,3), ...
		})
	}
	close(start)
	wg.Wait()
	var drops uint64
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := rl.Metrics()
		drops = 0
		for _, d := range m.Drops {
			drops += d
		}
		drops -= sumDrops(before)
		if got.Load()+int64(drops) >= int64(n) || time.Now().After(deadline) {
			t.Logf("%d links woken together: %d packets delivered, %d dropped (%v), %d wake-ups",
				n, got.Load(), drops, m.Drops, m.Woken-before.Woken)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got.Load()+int64(drops) != int64(n) {
		t.Fatalf("%d delivered + %d dropped, want %d packets accounted for", got.Load(), drops, n)
	}
	if got.Load() < int64(n)*9/10 {
		t.Fatalf("only %d of %d delivered", got.Load(), n)
	}
	waitParked(t, rl, n)
	for _, l := range links {
		l.Close()
	}
	deadline = time.Now().Add(10 * time.Second)
	for rl.Metrics().Clients["tls"] != 0 || rl.Metrics().Parked != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after close: %d tls links, %d parked", rl.Metrics().Clients["tls"], rl.Metrics().Parked)
		}
		time.Sleep(10 * time.Millisecond)
	}
	rs.Close()
}

func sumDrops(m relay.MetricsSnapshot) uint64 {
	var n uint64
	for _, d := range m.Drops {
		n += d
	}
	return n
}

// TestTLSParkOff: with TLSPark negative a TLS link keeps its read loop
// (it never parks) and forwards as before, a relayed stream's large
// frames too.
func TestTLSParkOff(t *testing.T) {
	rs, rl := startServer(t, relay.ServerConfig{TLSPark: -1})
	sa := rs.ServerAddr()
	kb := newKey(t)
	hb := pktHandler{in: make(chan []byte, 1)}
	a := dialTLS(t, sa, newKey(t), "", false, pktHandler{in: make(chan []byte, 1)})
	dialTLS(t, sa, kb, "", false, hb)
	time.Sleep(300 * time.Millisecond)
	if n := rl.Metrics().Parked; n != 0 {
		t.Fatalf("%d links parked with TLSPark off", n)
	}
	pkt := []byte("through a link that does not park")
	if err := a.Send(kb.ID(), pkt); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-hb.in:
		if !bytes.Equal(got, pkt) {
			t.Fatal("packet changed on the way")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the packet did not arrive")
	}
	sp, sq := newStreamPeer(t, sa, false), newStreamPeer(t, sa, true)
	c1, c2 := streamPair(t, sp, sq)
	defer c1.Close()
	defer c2.Close()
	msg := make([]byte, 200000)
	rand.Read(msg)
	go c1.Write(msg)
	got := make([]byte, len(msg))
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c2, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("stream bytes: %v (intact %v)", err, bytes.Equal(got, msg))
	}
	if n := rl.Metrics().Parked; n != 0 {
		t.Fatalf("%d links parked with TLSPark off", n)
	}
}

// sendParked waits until n links are parked, sends a 1200-byte packet
// from a to peer, and checks that in gets it intact and that a wake-up
// was counted (the sender's parked link).
func sendParked(t *testing.T, rl *relay.Server, n, round int, a relay.Link, peer identity.PeerID, in <-chan []byte) {
	t.Helper()
	waitParked(t, rl, n)
	woken := rl.Metrics().Woken
	pkt := make([]byte, 1200)
	rand.Read(pkt)
	if err := a.Send(peer, pkt); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-in:
		if !bytes.Equal(got, pkt) {
			t.Fatalf("round %d: packet changed on the way", round)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("round %d: the packet did not arrive", round)
	}
	if w := rl.Metrics().Woken; w < woken+1 {
		t.Fatalf("round %d: %d wake-ups, want the sender's link woken (%d before)", round, w, woken)
	}
}
