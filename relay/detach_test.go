package relay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reachp2p/reach/rendezvous"
)

// detached waits until every link of rl has detached (n of them) and
// the nodes' links say so too.
func detached(t *testing.T, rl *Server, n int, ends ...dataEnd) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		all := rl.Metrics().Detached == n
		for _, e := range ends {
			all = all && e.l.isDetached.Load()
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("links not detached: relay says %d of %d", rl.Metrics().Detached, n)
		}
	}
	rl.mu.RLock()
	defer rl.mu.RUnlock()
	for _, p := range rl.peers {
		if p.q.Load() != nil {
			t.Errorf("the relay still holds %s's QUIC connection", p.id.Short())
		}
	}
}

// onlyChallenges reads what the relay sent to c within wait: nothing but
// CHALLENGEs (for a token it saw from c's address), at most max of them.
func onlyChallenges(t *testing.T, c *net.UDPConn, wait time.Duration, max int) {
	t.Helper()
	n := 0
	buf := make([]byte, 2048)
	for deadline := time.Now().Add(wait); ; {
		c.SetReadDeadline(deadline)
		k, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		b := buf[:k]
		if k != dataHeader+frameHeader+8 || b[0] != dataFromRelay || b[dataHeader] != frameChallenge {
			t.Fatalf("the relay answered a forged packet with %d bytes (%#x...)", k, b[:min(k, 4)])
		}
		n++
	}
	if n > max {
		t.Errorf("the relay sent %d challenges, want at most %d", n, max)
	}
}

// TestDetachedLink: UDP links detach once their data packets work (the
// relay then holds no QUIC connection for them), and carry everything
// after: packets both ways, one by one and in GSO batches, packets too
// large for a data packet (as two fragments), keepalives over several
// idle timeouts; a node that closes its link is forgotten at once.
func TestDetachedLink(t *testing.T) {
	rl, sa, _ := dataServerConfig(t, ServerConfig{IdleTimeout: 3 * time.Second}, nil)
	a, b := dataLinked(t, sa, "a"), dataLinked(t, sa, "b")
	detached(t, rl, 2, a, b)
	before := rl.Stats()
	for i := range 20 {
		p := pattern(1200, byte(i))
		a.l.Send(b.id, p)
		b.expect(t, p)
		b.l.Send(a.id, p)
		a.expect(t, p)
	}
	batch := append(bytes.Repeat(pattern(1100, 3), 9), pattern(300, 4)...)
	if err := a.c.Path(b.id).SendSegments(batch, 1100); err != nil {
		t.Fatal(err)
	}
	for range 9 {
		b.expect(t, pattern(1100, 3))
	}
	b.expect(t, pattern(300, 4))
	for _, n := range []int{maxDataPayload + 1, MaxPayload} {
		big := pattern(n, 5)
		a.l.Send(b.id, big)
		b.expect(t, big)
		b.l.Send(a.id, big)
		a.expect(t, big)
	}
	st := rl.Stats()
	// 40 + 10 packets, 2 × 2 large ones as 2 fragments each.
	if in := st.DataIn - before.DataIn; in != 58 {
		t.Errorf("%d packets came as data packets, want 58 (all)", in)
	}
	// Idle for more than two idle timeouts: the keepalives hold the links.
	time.Sleep(7 * time.Second)
	if c := rl.Stats().Clients; c != 2 {
		t.Fatalf("after 7 s idle the relay holds %d links, want 2", c)
	}
	a.l.Send(b.id, pattern(600, 7))
	b.expect(t, pattern(600, 7))
	if err := a.l.Err(); err != nil {
		t.Fatalf("a's link ended: %v", err)
	}
	// A node that closes tells the relay, which forgets its link at once.
	a.c.Close()
	for deadline := time.Now().Add(2 * time.Second); rl.Stats().Clients != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the relay still holds %d links after a node closed", rl.Stats().Clients)
		}
	}
	if d := rl.Metrics().Detached; d != 1 {
		t.Errorf("Detached = %d after one of two links closed, want 1", d)
	}
}

// consentEnd links a node that asks for consent (as a node's relay rung
// does).
func consentEnd(t *testing.T, sa rendezvous.ServerAddr, name string) dataEnd {
	t.Helper()
	return linkEnd(t, sa, name, true)
}

// TestDetachedConsent: a detached link's consent travels as data packets:
// a stranger's packets are dropped (and it hears why, ErrNotAllowed,
// from a NOTICE in a data packet) until the node allows it.
func TestDetachedConsent(t *testing.T) {
	rl, sa, _ := dataServer(t, nil)
	b := consentEnd(t, sa, "b")
	c := dataLinked(t, sa, "c")
	detached(t, rl, 2, b, c)
	notices, stop := c.c.watch(b.id)
	defer stop()
	c.l.Send(b.id, pattern(500, 1))
	select {
	case err := <-notices:
		if !errors.Is(err, ErrNotAllowed) {
			t.Fatalf("notice %v, want ErrNotAllowed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no notice for a packet to a peer that did not consent")
	}
	select {
	case <-b.got:
		t.Fatal("a packet from a peer b never allowed arrived")
	default:
	}
	if err := b.c.Allow(c.id); err != nil {
		t.Fatal(err)
	}
	// The ALLOW is resent until the relay echoes it: the next packets pass.
	for deadline := time.Now().Add(5 * time.Second); ; {
		c.l.Send(b.id, pattern(500, 2))
		select {
		case got := <-b.got:
			if !bytes.Equal(got, pattern(500, 2)) {
				t.Fatal("wrong packet")
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("packets from an allowed peer never arrived")
		}
	}
}

// TestDetachedLinkLost: a detached link whose relay forgot it (a relay
// that restarted) or stopped: the node notices (ErrLinkLost, ErrShutdown)
// and the client links again.
func TestDetachedLinkLost(t *testing.T) {
	old := pingRetries.Load()
	// Short, but not so short that a loaded machine (-race, two shared
	// cores) loses a link that is only slow: 600 ms in all did, once.
	pingRetries.Store(&[]time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second})
	defer pingRetries.Store(old)
	rl, sa, _ := dataServerConfig(t, ServerConfig{IdleTimeout: 3 * time.Second}, nil)
	a := dataLinked(t, sa, "a")
	detached(t, rl, 1, a)
	rl.mu.RLock()
	p := rl.peers[a.id]
	rl.mu.RUnlock()
	rl.unregister(p) // silently, as a relay that restarted
	select {
	case <-a.l.Done():
		if !errors.Is(a.l.Err(), ErrLinkLost) {
			t.Fatalf("link ended with %v, want ErrLinkLost", a.l.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the node did not notice its relay forgot the link")
	}
	// The client links again (after its one-second backoff).
	for deadline := time.Now().Add(10 * time.Second); rl.Stats().Clients != 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not link again")
		}
	}
	l := a.c.current().(*link)
	a.l = l
	detached(t, rl, 1, a)
	// The relay stops: the node hears ERROR shutdown in a data packet.
	for _, p := range rl.detachedLinks() {
		p.fail(codeShutdown, "server shutting down")
	}
	select {
	case <-l.Done():
		if !errors.Is(l.Err(), ErrShutdown) {
			t.Fatalf("link ended with %v, want ErrShutdown", l.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the node did not hear the relay stop")
	}
}

// TestDetachedForged: control frames in data packets with a detached
// link's token but from another address (an ERROR that would end it, an
// ALLOW, PINGs) are dropped unanswered and the link lives on; a node's
// reassembler holds at most maxPending halves however many unmatched
// fragments come.
func TestDetachedForged(t *testing.T) {
	rl, sa, server := dataServer(t, nil)
	a, b := dataLinked(t, sa, "a"), dataLinked(t, sa, "b")
	detached(t, rl, 2, a, b)
	da := a.l.data.Load()
	evil, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Close()
	ctl := func(frame []byte) []byte {
		p := append([]byte{dataToRelay}, binary.BigEndian.AppendUint64(nil, da.token)...)
		return append(append(p, make([]byte, identityLen)...), frame...)
	}
	const flood = 3000
	for i := range flood {
		switch i % 3 {
		case 0:
			evil.WriteToUDPAddrPort(ctl(appendFrame(nil, frameError, []byte{0})), server)
		case 1:
			evil.WriteToUDPAddrPort(ctl(appendFrame(nil, frameAllow, b.id[:])), server)
		default:
			evil.WriteToUDPAddrPort(ctl(appendFrame(nil, framePing, make([]byte, 8))), server)
		}
	}
	// A detached link's token from a new address gets a challenge (the
	// link might have moved), at most one a second; no other answer.
	onlyChallenges(t, evil, 300*time.Millisecond, 2)
	for deadline := time.Now().Add(5 * time.Second); rl.Metrics().Drops["unknown_link"] < flood; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("drops %v, want %d unknown_link", rl.Metrics().Drops, flood)
		}
	}
	// An attacker that knows the token gets the challenge at its own
	// address, but cannot answer it without the link key.
	time.Sleep(challengeEvery)
	evil.WriteToUDPAddrPort(ctl(appendFrame(nil, framePing, make([]byte, 8))), server)
	evil.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := evil.ReadFromUDPAddrPort(buf)
	if err != nil || n != dataHeader+frameHeader+8 || buf[dataHeader] != frameChallenge {
		t.Fatalf("no challenge for a packet from a new address (%d bytes, %v)", n, err)
	}
	nonce := buf[dataHeader+frameHeader : n]
	evil.WriteToUDPAddrPort(ctl(appendFrame(nil, frameResponse, nonce, make([]byte, macLen))), server)
	evil.WriteToUDPAddrPort(ctl(appendFrame(nil, frameResponse, nonce, moveMAC(make([]byte, linkKeyLen), da.token, nonce))), server)
	time.Sleep(100 * time.Millisecond)
	if c := rl.Stats().Clients; c != 2 || a.l.Err() != nil || rl.Metrics().Moved != 0 {
		t.Fatalf("after the flood: %d links, a's link error %v, %d moved", c, a.l.Err(), rl.Metrics().Moved)
	}
	a.l.Send(b.id, pattern(900, 2))
	b.expect(t, pattern(900, 2))
	// Unmatched fragments from b (each its own id): a keeps at most
	// maxPending halves, and a whole packet after them still arrives.
	for i := range 1000 {
		f := appendFrag(nil, uint16(i), 0, pattern(1452, 1))
		b.l.Send(a.id, f)
	}
	// The flood may have filled the relay's queue for a (packets dropped,
	// queue_full): the packet is sent again until it arrives, as QUIC
	// would resend it.
	big := pattern(MaxPayload, 6)
	for deadline := time.Now().Add(10 * time.Second); ; {
		b.l.Send(a.id, big)
		select {
		case got := <-a.got:
			if !bytes.Equal(got, big) {
				t.Fatalf("got a %d-byte packet, want the %d-byte one intact", len(got), len(big))
			}
		case <-time.After(200 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("a whole packet never arrived after the fragments")
			}
			continue
		}
		break
	}
	a.l.frags.mu.Lock()
	n = len(a.l.frags.pending)
	a.l.frags.mu.Unlock()
	if n > maxPending {
		t.Errorf("a holds %d unmatched fragments, want at most %d", n, maxPending)
	}
}

// rebinder forwards UDP between one client and a server from an upstream
// socket it can replace, as a NAT that rebinds the client's mapping to a
// new port does.
type rebinder struct {
	ln     *net.UDPConn
	server netip.AddrPort
	up     atomic.Pointer[net.UDPConn]
	client atomic.Pointer[netip.AddrPort]
}

func newRebinder(t *testing.T, server netip.AddrPort) *rebinder {
	t.Helper()
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &rebinder{ln: ln, server: server}
	r.rebind(t)
	t.Cleanup(func() {
		ln.Close()
		r.up.Load().Close()
	})
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := ln.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.client.Store(&from)
			r.up.Load().WriteToUDPAddrPort(buf[:n], server)
		}
	}()
	return r
}

// rebind moves the client's traffic to a new upstream port; what comes
// to the old one is dropped, as by a NAT that forgot the mapping.
func (r *rebinder) rebind(t *testing.T) {
	t.Helper()
	up, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if old := r.up.Swap(up); old != nil {
		old.Close()
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := up.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if c := r.client.Load(); c != nil {
				r.ln.WriteToUDPAddrPort(buf[:n], *c)
			}
		}
	}()
}

// TestDetachedRebind: a detached link whose node's NAT mapping moves to a
// new port follows it after a challenge (no new link, no wait for its
// pings to fail), and packets flow both ways again at once.
func TestDetachedRebind(t *testing.T) {
	rl, sa, server := dataServer(t, nil)
	rb := newRebinder(t, server)
	via := sa
	via.Port = uint16(rb.ln.LocalAddr().(*net.UDPAddr).Port)
	a, b := dataLinked(t, via, "a"), dataLinked(t, sa, "b")
	detached(t, rl, 2, a, b)
	a.l.Send(b.id, pattern(700, 1))
	b.expect(t, pattern(700, 1))
	before := rl.Metrics()
	rb.rebind(t)
	// a's next packets come from the new port: the first one causes a
	// challenge, a answers, and the link moves. Packets sent meanwhile
	// may be lost (as on a real rebinding); QUIC resends.
	start := time.Now()
	for deadline := start.Add(5 * time.Second); rl.Metrics().Moved == before.Moved; time.Sleep(20 * time.Millisecond) {
		a.l.Send(b.id, pattern(600, 2))
		if time.Now().After(deadline) {
			t.Fatal("the link did not move to the node's new address")
		}
	}
	t.Logf("moved %v after the rebinding", time.Since(start).Round(time.Millisecond))
	for len(b.got) > 0 {
		<-b.got
	}
	a.l.Send(b.id, pattern(900, 3))
	b.expect(t, pattern(900, 3))
	b.l.Send(a.id, pattern(800, 4))
	a.expect(t, pattern(800, 4))
	if m := rl.Metrics(); m.Connections["udp"] != before.Connections["udp"] || a.l.Err() != nil {
		t.Errorf("a linked again (%d links, was %d; link error %v): the move should have kept the link",
			m.Connections["udp"], before.Connections["udp"], a.l.Err())
	}
}
