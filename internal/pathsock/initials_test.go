package pathsock

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

// TestResendInitials: the Initials of a handshake to an address that did
// not answer (no listener yet, like a NAT not yet open) are kept and sent
// again on request, and the handshake completes; the kept flights are
// bounded.
func TestResendInitials(t *testing.T) {
	p := newPair(t)
	ta, tb := &quic.Transport{Conn: p.a}, &quic.Transport{Conn: p.b}
	defer ta.Close()
	defer tb.Close()
	ck, _ := identity.GenerateKey()
	sk, _ := identity.GenerateKey()
	stls, _ := identity.ServerTLSConfig(sk, "test")
	ctls, _, _ := identity.ClientTLSConfig(ck, sk.ID(), "test")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialed := make(chan error, 1)
	go func() {
		c, err := ta.Dial(ctx, net.UDPAddrFromAddrPort(p.bReal), ctls, &quic.Config{})
		if err == nil {
			c.CloseWithError(0, "")
		}
		dialed <- err
	}()
	time.Sleep(50 * time.Millisecond) // the first flight went to nobody
	ln, err := tb.Listen(stls, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if n := p.a.ResendInitials(p.bReal); n < 1 {
		t.Fatalf("resent %d packets, want the first flight", n)
	}
	// (A second call resends only Initials sent since, such as the
	// client's acknowledgement of the server's Initial: nothing to
	// assert about it.)
	if err := <-dialed; err != nil {
		t.Fatal(err)
	}

	for i := range 3 * maxFlights {
		p.a.flights.note(netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+i)), []byte{0xc0, 0, 0, 0, 1})
	}
	p.a.flights.mu.Lock()
	n := len(p.a.flights.m)
	p.a.flights.mu.Unlock()
	if n > maxFlights {
		t.Fatalf("%d flights kept, bound %d", n, maxFlights)
	}
}
