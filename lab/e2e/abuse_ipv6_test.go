package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// TestLabRelayIPv6Source: the relay counts an IPv6 source as its /64, as
// one subscriber's prefix, not as one address. In a lab host whose
// loopback has addresses in two /64s, 12 links from 12 addresses
// of one /64 (different interface IDs, as a host with privacy addresses
// or a prefix of its own has) get MaxLinksPerIP (4) links in; the others
// are refused with ErrRateLimited. A link from the other /64 still gets in.
func TestLabRelayIPv6Source(t *testing.T) {
	const perSource = 4
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := l.AddPublicHost6(ctx, "v6src")
	if err != nil {
		t.Fatal(err)
	}
	var hostile []string
	for i := range 12 {
		hostile = append(hostile, fmt.Sprintf("2001:db8:a::%x:%x", i+1, 7*i+3))
	}
	const honest = "2001:db8:b::1"
	for _, a := range append(hostile, honest) {
		if out, err := h.Exec(ctx, "ip", "-6", "addr", "add", a+"/64", "dev", "lo", "nodad"); err != nil {
			t.Fatalf("address %s: %v: %s", a, err, out)
		}
	}
	rl := relay.NewServer(relay.ServerConfig{Logger: natlab.TestLogger(t), MaxLinksPerIP: perSource, ConnRate: -1})
	var rs *rendezvous.RunningServer
	if err := h.Run(func() error {
		var err error
		rs, err = rendezvous.StartServer(ctx, rendezvous.ServerConfig{Logger: natlab.TestLogger(t),
			Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl}}, netip.MustParseAddrPort("[::1]:0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	sa := rs.ServerAddr()
	link := func(from string) error {
		var tr *quic.Transport
		if err := h.Run(func() error {
			u, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(from), 0)))
			if err != nil {
				return err
			}
			tr = &quic.Transport{Conn: u}
			t.Cleanup(func() { tr.Close(); u.Close() })
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		k, err := identity.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
		defer lcancel()
		lk, err := relay.UDPDialer{Socket: tr}.DialLink(lctx, relay.LinkParams{Server: sa, Key: k, Handler: nopHandler{}})
		if err == nil {
			t.Cleanup(func() { lk.Close() })
		}
		return err
	}
	in, refused := 0, 0
	for _, from := range hostile {
		switch err := link(from); {
		case err == nil:
			in++
		case errors.Is(err, relay.ErrRateLimited):
			refused++
		default:
			t.Fatalf("link from %s: %v, want nil or relay.ErrRateLimited", from, err)
		}
	}
	if in != perSource || refused != 12-perSource {
		t.Errorf("12 links from one /64: %d in, %d refused; want %d in", in, refused, perSource)
	}
	if err := link(honest); err != nil {
		t.Errorf("a link from another /64: %v", err)
	}
	if got := rl.Metrics().Rejected["ip_links"]; got != uint64(refused) {
		t.Errorf("rejected ip_links = %d, want %d", got, refused)
	}
}

// nopHandler drops what a test's relay link receives.
type nopHandler struct{}

func (nopHandler) Packet(identity.PeerID, []byte) {}
func (nopHandler) Notice(identity.PeerID, error)  {}
