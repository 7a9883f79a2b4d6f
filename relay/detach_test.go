package relay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
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
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pathsock.New(u)}
	t.Cleanup(func() { tr.Close(); u.Close() })
	got := make(chan []byte, 256)
	c, err := NewClient(ClientConfig{Key: k, Socket: tr, Dialers: []LinkDialer{UDPDialer{Socket: tr}}, Consent: true,
		Logger:  dataLogger(t).With("side", name),
		Deliver: func(_ identity.PeerID, pkt []byte) { got <- append([]byte(nil), pkt...) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := c.Connect(ctx, sa)
	if err != nil {
		t.Fatal(err)
	}
	return dataEnd{id: k.ID(), c: c, l: l.(*link), got: got, sock: u}
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
	old := pingRetries
	pingRetries = []time.Duration{200 * time.Millisecond, 400 * time.Millisecond}
	defer func() { pingRetries = old }()
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
	case <-time.After(5 * time.Second):
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
	evil.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := evil.ReadFromUDPAddrPort(make([]byte, 2048)); !errors.Is(err, errTimeout(err)) || n > 0 {
		t.Errorf("the relay answered a forged control frame (%d bytes)", n)
	}
	for deadline := time.Now().Add(5 * time.Second); rl.Metrics().Drops["unknown_link"] != flood; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("drops %v, want %d unknown_link", rl.Metrics().Drops, flood)
		}
	}
	if c := rl.Stats().Clients; c != 2 || a.l.Err() != nil {
		t.Fatalf("after the flood: %d links, a's link error %v", c, a.l.Err())
	}
	a.l.Send(b.id, pattern(900, 2))
	b.expect(t, pattern(900, 2))
	// Unmatched fragments from b (each its own id): a keeps at most
	// maxPending halves, and a whole packet after them still arrives.
	for i := range 1000 {
		f := appendFrag(nil, uint16(i), 0, pattern(1452, 1))
		b.l.Send(a.id, f)
	}
	big := pattern(MaxPayload, 6)
	b.l.Send(a.id, big)
	a.expect(t, big)
	a.l.frags.mu.Lock()
	n := len(a.l.frags.pending)
	a.l.frags.mu.Unlock()
	if n > maxPending {
		t.Errorf("a holds %d unmatched fragments, want at most %d", n, maxPending)
	}
}
