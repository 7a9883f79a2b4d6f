package e2e_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/internal/holepunch"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// TestLabSignallingOverTCP: behind a corporate firewall that blocks UDP
// (only TCP 80/443 out), a node still registers with a server listening on
// 443, over TCP+TLS, and a peer on the open internet gets introduced to it.
// The direct paths cannot work there (that is the relay's job), so the
// dial must fail in the strategy race, not in signalling.
func TestLabSignallingOverTCP(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	var rs *rendezvous.RunningServer
	if err := srv.Run(func() error {
		var err error
		rs, err = rendezvous.StartServer(ctx, rendezvous.ServerConfig{Logger: natlab.TestLogger(t)}, netip.AddrPortFrom(srv.Addr(), 443))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	corp, err := l.AddSite(ctx, "corp", natlab.Kind(natlab.UDPBlocked))
	if err != nil {
		t.Fatal(err)
	}
	open, err := l.AddPublicHost(ctx, "open")
	if err != nil {
		t.Fatal(err)
	}
	cfg := reach.Config{Servers: []string{rs.ConnectString()}, Session: fastFail()}
	start := time.Now()
	nc := reachlab.NewNode(t, corp.Host, cfg)
	t.Logf("registered from behind the UDP-blocking firewall in %v", time.Since(start))
	if nc.Observed().IsValid() {
		t.Errorf("observed UDP address %s although UDP is blocked", nc.Observed())
	}
	no := reachlab.NewNode(t, open, cfg)
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	start = time.Now()
	_, err = no.DialSession(dctx, nc.ID())
	var re *rung.RaceError
	if !errors.As(err, &re) {
		t.Fatalf("dial: %v; want the introduction to succeed and the race to fail", err)
	}
	for _, e := range []error{rendezvous.ErrUnknownPeer, rendezvous.ErrPeerOffline, rendezvous.ErrNoServer} {
		if errors.Is(err, e) {
			t.Fatalf("signalling failed: %v", err)
		}
	}
	if !errors.Is(err, holepunch.ErrNoPath) {
		t.Errorf("holepunch did not give up on its own: %v", err)
	}
	if el := time.Since(start); el > 20*time.Second {
		t.Errorf("the failing dial took %v; the strategies must give up on their own, well before the caller's 30s", el)
	}
	t.Logf("as expected without a relay: %v", err)
}

// fastFail makes handshakes to unreachable addresses give up quickly.
func fastFail() stream.Config {
	return stream.Config{HandshakeTimeout: 3 * time.Second}
}
