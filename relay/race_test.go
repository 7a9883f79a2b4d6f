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

// loopbackTransport is a quic.Transport on a fresh loopback UDP socket,
// closed with the test.
func loopbackTransport(t *testing.T) *quic.Transport {
	t.Helper()
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: u}
	t.Cleanup(func() { tr.Close(); u.Close() })
	return tr
}

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
		tr := loopbackTransport(t)
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

// slowDialer starts its transport's attempt after delay (a lost handshake
// packet and its retransmission); a negative delay never starts it (UDP
// blocked): the attempt waits for the race to end.
type slowDialer struct {
	relay.LinkDialer
	delay time.Duration
}

func (d slowDialer) DialLink(ctx context.Context, p relay.LinkParams) (relay.Link, error) {
	if d.delay < 0 {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	t := time.NewTimer(d.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return d.LinkDialer.DialLink(ctx, p)
}

// TestRaceUDPGrace: a client whose UDP attempt is late (a lost packet of
// its QUIC handshake: here it starts 250 ms late) still links over UDP
// when TLS, started after its 100 ms head start, is ready first: TLS waits
// up to two more head starts at the HELLO for UDP. Where UDP never answers,
// TLS links after that wait; where the client prefers TLS (its UDP looks
// blocked), TLS goes first and links within its own head start (2 s
// here, so that a loaded machine does not start UDP), waiting for
// nothing. The relay ends with one link per client.
func TestRaceUDPGrace(t *testing.T) {
	rs, rl := startServer(t, relay.ServerConfig{ConnRate: -1})
	var clients []*relay.Client
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	for _, c := range []struct {
		name     string
		head     time.Duration
		udpDelay time.Duration
		prefer   string
		want     string
		atLeast  time.Duration // the link takes at least this long
	}{
		{"udp-late", 100 * time.Millisecond, 250 * time.Millisecond, "", "udp", 250 * time.Millisecond},
		{"udp-silent", 100 * time.Millisecond, -1, "", "tls", 300 * time.Millisecond},
		{"prefer-tls", 2 * time.Second, -1, "tls", "tls", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := loopbackTransport(t)
			k, _ := identity.GenerateKey()
			cl, err := relay.NewClient(relay.ClientConfig{Key: k, HeadStart: c.head,
				Prefer:  func() string { return c.prefer },
				Dialers: []relay.LinkDialer{slowDialer{relay.UDPDialer{Socket: tr}, c.udpDelay}, relay.TLSDialer{}}})
			if err != nil {
				t.Fatal(err)
			}
			clients = append(clients, cl) // closed at the end: the relay's count is of all three
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			l, err := cl.Connect(ctx, rs.ServerAddr())
			took := time.Since(start)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			if l.Transport() != c.want {
				t.Fatalf("linked over %s after %v, want %s", l.Transport(), took, c.want)
			}
			if took < c.atLeast || c.prefer != "" && took >= c.head {
				t.Errorf("linked after %v, want at least %v (and for prefer, within the head start %v)", took, c.atLeast, c.head)
			}
			time.Sleep(100 * time.Millisecond) // a replaced link's ERROR would arrive
			if l.Transport() != cl.Transport() {
				t.Errorf("the client's link is over %q, the one Connect returned over %q", cl.Transport(), l.Transport())
			}
			select {
			case <-l.Done():
				t.Fatalf("the link ended: %v", l.Err())
			default:
			}
			t.Logf("linked over %s after %v", l.Transport(), took.Round(time.Millisecond))
		})
	}
	if got := rl.Stats().Clients; got != 3 {
		t.Errorf("%d clients linked at the relay, want 3", got)
	}
	if m := rl.Metrics(); m.Connections["udp"] != 1 || m.Connections["tls"] != 2 {
		t.Errorf("links at the relay: %d udp, %d tls; want 1 and 2 (one per client, none left of a lost race)", m.Connections["udp"], m.Connections["tls"])
	}
}
