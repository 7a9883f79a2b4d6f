package relay_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// dialWS links k to the relay over a WebSocket.
func dialWS(t *testing.T, sa rendezvous.ServerAddr, k *identity.Key, h relay.Handler) relay.Link {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := relay.WSDialer{}.DialLink(ctx, relay.LinkParams{Server: sa, Key: k, Handler: h, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestWSParkWakes: WebSocket links park as TLS links do (the server's end
// of the WebSocket loses nothing when a read times out, and shows through
// its TCP connection whether it has something to read): two parked
// WebSocket links, and a WebSocket link and a TLS link, carry packets
// intact after each park, each one waking the sender's link; and they
// live on past IdleTimeout twice over, woken by their nodes' pings (a
// link whose pings never woke its read loop would be closed).
func TestWSParkWakes(t *testing.T) {
	rs, rl := startParkServer(t, relay.ServerConfig{IdleTimeout: 3 * time.Second})
	sa := rs.ServerAddr()
	ka, kb, kc := newKey(t), newKey(t), newKey(t)
	hb, hc := pktHandler{in: make(chan []byte, 4)}, pktHandler{in: make(chan []byte, 4)}
	a := dialWS(t, sa, ka, pktHandler{in: make(chan []byte, 4)})
	dialWS(t, sa, kb, hb)
	dialTLS(t, sa, kc, "", false, hc)
	for i := range 3 {
		sendParked(t, rl, 3, i, a, kb.ID(), hb.in)
		sendParked(t, rl, 3, i, a, kc.ID(), hc.in)
	}
	time.Sleep(7 * time.Second)
	for _, l := range []relay.Link{a} {
		select {
		case <-l.Done():
			t.Fatalf("a parked WebSocket link ended: %v", l.Err())
		default:
		}
	}
	pkt := []byte("still there")
	if err := a.Send(kb.ID(), pkt); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-hb.in:
		if !bytes.Equal(got, pkt) {
			t.Fatal("packet changed on the way")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no packet after the idle timeout")
	}
}
