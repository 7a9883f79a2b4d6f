package relay_test

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
)

// TestOversizedPacketsOnUDPLink: a packet too large for a QUIC datagram on
// the link (a session that fell back to the relay from a direct path with
// larger packets sends up to relay.MaxPayload bytes) still arrives, both
// ways, carried on the link's control stream; small ones keep going as
// datagrams.
func TestOversizedPacketsOnUDPLink(t *testing.T) {
	rs, _ := startServer(t, relay.ServerConfig{})
	sa := rs.ServerAddr()
	type end struct {
		c   *relay.Client
		id  identity.PeerID
		got chan []byte
	}
	mk := func(name string) end {
		k, err := identity.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		tr := &quic.Transport{Conn: u}
		t.Cleanup(func() { tr.Close(); u.Close() })
		got := make(chan []byte, 16)
		c, err := relay.NewClient(relay.ClientConfig{Key: k, Socket: tr, Dialers: []relay.LinkDialer{relay.UDPDialer{Socket: tr}},
			Logger:  testLogger(t).With("side", name),
			Deliver: func(_ identity.PeerID, pkt []byte) { got <- append([]byte(nil), pkt...) }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Connect(ctx, sa); err != nil {
			t.Fatal(err)
		}
		if c.Transport() != "udp" {
			t.Fatalf("link over %q, want udp", c.Transport())
		}
		return end{c, k.ID(), got}
	}
	a, b := mk("a"), mk("b")
	for _, dir := range []struct {
		from, to end
	}{{a, b}, {b, a}} {
		for _, size := range []int{100, relay.MaxPayload} {
			pkt := bytes.Repeat([]byte{byte(size)}, size)
			pkt[0] = 0x40 // a QUIC short-header first byte
			deadline := time.After(5 * time.Second)
		wait:
			for {
				dir.from.c.Path(dir.to.id).Send(pkt)
				select {
				case got := <-dir.to.got:
					if !bytes.Equal(got, pkt) {
						t.Fatalf("%d-byte packet arrived as %d bytes, differing", size, len(got))
					}
					break wait
				case <-time.After(200 * time.Millisecond):
					// the peer's link may not be registered yet: again
				case <-deadline:
					t.Fatalf("%d-byte packet never arrived", size)
				}
			}
		}
	}
}
