package relay_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
)

// TestRaceOneHello: when two transports of a client's race both reach
// the relay (here two UDP links started together), only one says HELLO,
// and the client stays linked. Before, both did: the second replaced the
// first at the relay (ERROR replaced) while the client could keep the
// first and close the second, so the node was linked to nothing, for good
// (a replaced link does not reconnect), or its Connect failed with
// "replaced". The load test of issue 15 found it: 100 nodes starting at
// once on two cores made the UDP link slower than its 300 ms head start,
// and the TLS link raced it.
func TestRaceOneHello(t *testing.T) {
	rs, rl := startServer(t, relay.ServerConfig{ConnRate: -1})
	const clients = 20
	for range clients {
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		tr := &quic.Transport{Conn: u}
		t.Cleanup(func() { tr.Close(); u.Close() })
		k, _ := identity.GenerateKey()
		c, err := relay.NewClient(relay.ClientConfig{Key: k, HeadStart: time.Nanosecond,
			Dialers: []relay.LinkDialer{relay.UDPDialer{Socket: tr}, relay.UDPDialer{Socket: tr}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.Connect(ctx, rs.ServerAddr())
		cancel()
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
	}
	time.Sleep(300 * time.Millisecond) // a replaced link's ERROR arrives
	m := rl.Metrics()
	if got := m.Connections["udp"]; got != clients {
		t.Errorf("%d links registered for %d clients, want one each", got, clients)
	}
	if got := rl.Stats().Clients; got != clients {
		t.Errorf("%d clients linked at the relay, want %d", got, clients)
	}
}
