package relay_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
)

// TestConsentAtLinkUp: when a consenting client's Connect returns, the
// relay already enforces its consent and the peers it allowed before
// linking: with no pause, a stranger's packets are dropped (and the
// stranger told ErrNotAllowed) while the allowed peer's arrive. Over each
// link transport.
func TestConsentAtLinkUp(t *testing.T) {
	for _, transport := range []string{"udp", "tls"} {
		t.Run(transport, func(t *testing.T) {
			rs, rl := startServer(t, relay.ServerConfig{})
			sa := rs.ServerAddr()
			key := func() *identity.Key { k, _ := identity.GenerateKey(); return k }
			kr, ka, kc := key(), key(), key()
			ha, hc := newCountHandler(), newCountHandler()
			a := dialTLS(t, sa, ka, "", true, ha)
			c := dialTLS(t, sa, kc, "", true, hc)

			u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			tr := &quic.Transport{Conn: u}
			defer func() { tr.Close(); u.Close() }()
			var d relay.LinkDialer = relay.TLSDialer{}
			if transport == "udp" {
				d = relay.UDPDialer{Socket: tr}
			}
			got := make(chan identity.PeerID, 64)
			r, err := relay.NewClient(relay.ClientConfig{Key: kr, Socket: tr, Dialers: []relay.LinkDialer{d}, Consent: true,
				Logger: testLogger(t).With("side", "recipient"),
				Deliver: func(from identity.PeerID, _ []byte) {
					select {
					case got <- from:
					default:
					}
				}})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			r.Allow(ka.ID()) // before the link: sent with the consent request
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := r.Connect(ctx, sa); err != nil {
				t.Fatal(err)
			}
			c.Send(kr.ID(), []byte("stranger"))
			a.Send(kr.ID(), []byte("allowed"))
			select {
			case from := <-got:
				if from != ka.ID() {
					t.Fatalf("first packet the recipient got is from %s, want the allowed peer %s", from.Short(), ka.ID().Short())
				}
			case <-time.After(3 * time.Second):
				t.Fatalf("the allowed peer's packet did not arrive; drops %v", rl.Metrics().Drops)
			}
			select {
			case err := <-hc.notices:
				if !errors.Is(err, relay.ErrNotAllowed) {
					t.Errorf("stranger's notice %v, want ErrNotAllowed", err)
				}
			case <-time.After(3 * time.Second):
				t.Error("the stranger got no notice")
			}
			select {
			case from := <-got:
				t.Errorf("the recipient also got a packet from %s", from.Short())
			case <-time.After(100 * time.Millisecond):
			}
			if d := rl.Metrics().Drops["not_allowed"]; d != 1 {
				t.Errorf("not_allowed drops %d, want 1", d)
			}
		})
	}
}
