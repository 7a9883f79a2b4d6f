package pathsock

import (
	"bytes"
	"context"
	"errors"
	"net"

	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestNamedKeysAliasesAndFallback: a named peer keeps one virtual
// address; aliases count as its sources without moving its sends; a
// direct path falls back to the forwarded one and Expire removes only idle
// peers nobody keeps.
func TestNamedKeysAliasesAndFallback(t *testing.T) {
	p := newPair(t)
	k1, err := p.a.Key("peer-b")
	if err != nil {
		t.Fatal(err)
	}
	if k2, _ := p.a.Key("peer-b"); k2 != k1 {
		t.Fatalf("second Key %v, first %v", k2, k1)
	}
	if k, ok := p.a.Lookup("peer-b"); !ok || k != k1 || p.a.Name(k1) != "peer-b" {
		t.Fatalf("Lookup %v %v, Name %q", k, ok, p.a.Name(k1))
	}
	fwd := &memPath{to: p.b, as: p.bPeer}
	if err := p.a.SetFallback(k1, fwd); err != nil {
		t.Fatal(err)
	}
	if d, f, _ := p.a.Current(k1); d.IsValid() || f != fwd {
		t.Fatalf("after SetFallback: direct %v fwd %v", d, f)
	}
	alias := netip.MustParseAddrPort("192.0.2.7:4000")
	p.a.AddAlias(k1, alias)
	if d, _, _ := p.a.Current(k1); d.IsValid() {
		t.Fatal("an alias became the direct path")
	}
	p.a.SetDirect(k1, p.bReal)
	if d, _, _ := p.a.Current(k1); d != p.bReal {
		t.Fatalf("direct %v", d)
	}
	if !p.a.Fallback(k1) {
		t.Fatal("Fallback refused")
	}
	if d, f, _ := p.a.Current(k1); d.IsValid() || f != fwd {
		t.Fatalf("after Fallback: direct %v fwd %v", d, f)
	}
	if p.a.Fallback(k1) {
		t.Fatal("Fallback without a direct path")
	}
	for i := range 2 * maxAliases {
		p.a.AddAlias(k1, netip.AddrPortFrom(alias.Addr(), uint16(5000+i)))
	}
	p.a.mu.RLock()
	n := len(p.a.byVirt[k1].aliases)
	p.a.mu.RUnlock()
	if n != maxAliases {
		t.Fatalf("%d aliases, want the bound %d", n, maxAliases)
	}
	time.Sleep(20 * time.Millisecond)
	if got := p.a.Expire(10*time.Millisecond, func(v netip.AddrPort) bool { return v == k1 }); got != 1 {
		t.Fatalf("expired %d, want 1 (the anonymous peer)", got)
	}
	if _, ok := p.a.Lookup("peer-b"); !ok {
		t.Fatal("a kept peer expired")
	}
	p.a.Expire(10*time.Millisecond, nil)
	if _, ok := p.a.Lookup("peer-b"); ok {
		t.Fatal("Expire kept an idle peer")
	}
}

// TestAdoptedSessionMoves: a session dialled to a real address (born on a
// direct path) whose address both sides adopt moves to a forwarded path
// and back, every byte intact; a second adoption for the same peer fails
// with ErrNamed; non-QUIC packets to an adopted address stay direct.
func TestAdoptedSessionMoves(t *testing.T) {
	p := newPair(t)
	ta, tb := &quic.Transport{Conn: p.a}, &quic.Transport{Conn: p.b}
	client, server := session(t, ta, tb, p.bReal)
	ka, err := p.a.Adopt(p.bReal, "b")
	if err != nil || ka != p.bReal {
		t.Fatalf("Adopt: %v %v", ka, err)
	}
	kb, err := p.b.Adopt(server.RemoteAddr().(*net.UDPAddr).AddrPort(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.a.Adopt(p.aReal, "b"); !errors.Is(err, ErrNamed) {
		t.Fatalf("second Adopt for the peer: %v", err)
	}
	echo(t, client, server, []byte("direct, adopted"))
	ab := &memPath{to: p.b, as: kb}
	ba := &memPath{to: p.a, as: ka}
	p.a.SetPath(ka, ab)
	p.b.SetPath(kb, ba)
	echo(t, client, server, bytes.Repeat([]byte("forwarded "), 100000))
	if ab.n.Load() == 0 || ba.n.Load() == 0 {
		t.Fatalf("forwarded path carried %d/%d packets", ab.n.Load(), ba.n.Load())
	}
	// A punch check (first byte below 0x40) to the adopted address goes
	// out directly, not on the forwarded path.
	// quic-go queues non-QUIC packets only after a first call.
	dead, stop := context.WithCancel(context.Background())
	stop()
	tb.ReadNonQUICPacket(dead, nil)
	if _, err := p.a.WriteTo([]byte{0x3a, 1, 2, 3}, net.UDPAddrFromAddrPort(p.bReal)); err != nil {
		t.Fatal(err)
	}
	if ab.nonQUIC.Load() != 0 {
		t.Fatal("a non-QUIC packet took the forwarded path")
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	buf := make([]byte, 64)
	n, from, err := tb.ReadNonQUICPacket(rctx, buf)
	if err != nil || n != 4 || buf[0] != 0x3a || from.(*net.UDPAddr).AddrPort() != p.aReal {
		t.Fatalf("the check arrived as %x from %v (%v), want it straight from %v", buf[:n], from, err, p.aReal)
	}
	p.a.SetDirect(ka, p.bReal)
	p.b.SetDirect(kb, p.aReal)
	echo(t, client, server, []byte("direct again"))
}

// TestSendStamps: what a node sent on a peer's direct path and what came
// back tell an idle path from a dead one: Sent and Unanswered follow the
// sends, a packet heard from the peer answers them, and a packet by the
// forwarded path shows in Seen, not Heard.
func TestSendStamps(t *testing.T) {
	p := newPair(t)
	p.direct(t)
	quicPkt := func(b byte) []byte { return append([]byte{0x40 | b}, make([]byte, 32)...) }
	if !p.a.Sent(p.aPeer).IsZero() || !p.a.Unanswered(p.aPeer).IsZero() {
		t.Fatal("stamps before any send")
	}
	if _, err := p.a.WriteTo(quicPkt(1), net.UDPAddrFromAddrPort(p.aPeer)); err != nil {
		t.Fatal(err)
	}
	first := p.a.Unanswered(p.aPeer)
	if first.IsZero() || p.a.Sent(p.aPeer).Before(first) {
		t.Fatalf("after a send: unanswered %v, sent %v", first, p.a.Sent(p.aPeer))
	}
	time.Sleep(2 * time.Millisecond)
	p.a.WriteTo(quicPkt(2), net.UDPAddrFromAddrPort(p.aPeer))
	if u := p.a.Unanswered(p.aPeer); !u.Equal(first) {
		t.Fatalf("a second send moved the first unanswered one: %v, was %v", u, first)
	}
	if !p.a.Sent(p.aPeer).After(first) {
		t.Fatal("Sent did not follow the second send")
	}
	// b answers on the direct path: a reads it, and nothing is unanswered.
	p.b.WriteTo(quicPkt(3), net.UDPAddrFromAddrPort(p.bPeer))
	buf := make([]byte, 1500)
	p.a.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, _, err := p.a.ReadFrom(buf); err != nil {
		t.Fatal(err)
	}
	if u := p.a.Unanswered(p.aPeer); !u.IsZero() {
		t.Fatalf("unanswered %v after the peer's packet", u)
	}
	heard := p.a.Heard(p.aPeer)
	// A packet by the forwarded path: seen, not heard.
	time.Sleep(2 * time.Millisecond)
	if err := p.a.Inject(p.aPeer, quicPkt(4)); err != nil {
		t.Fatal(err)
	}
	if !p.a.Heard(p.aPeer).Equal(heard) || !p.a.Seen(p.aPeer).After(heard) {
		t.Fatalf("after a forwarded packet: heard %v (was %v), seen %v", p.a.Heard(p.aPeer), heard, p.a.Seen(p.aPeer))
	}
}
