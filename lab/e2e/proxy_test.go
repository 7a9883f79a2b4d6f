package e2e_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/relay"
)

// TestLabRelayProxyOnly: a peer in a network whose only way out is squid
// (CONNECT to 443 only, with proxy authentication) reaches the server
// through the proxy (signalling over TLS, the relay link over TLS or
// WebSocket, both tunnelled) and connects to a peer behind a
// port-restricted NAT through the relay; data moves intact both ways and
// squid's log shows the tunnels. A wrong proxy password is ErrProxyAuth.
func TestLabRelayProxyOnly(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	corp := s.Site(t, "corp", natlab.Kind(natlab.ProxyOnly))
	sq, err := corp.Router.StartSquidAuth(ctx, "alice", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("squid log:\n%s\naccess.log:\n%s", sq.Log(), sq.AccessLog())
		}
	})
	pr := s.Site(t, "pr", natlab.Kind(natlab.PortRestricted))
	proxyURL := func(pw string) *url.URL {
		return &url.URL{Scheme: "http", User: url.UserPassword("alice", pw), Host: sq.Addr().String()}
	}
	cfg := reach.Config{Servers: []string{s.ConnectString()}, DisablePortMapping: true, UpgradeInterval: -1}

	t.Run("wrong-password", func(t *testing.T) {
		bad := cfg
		bad.Proxy = proxyURL("wrong")
		bad.ForceTCPSignalling = true // UDP would only time out here
		bad.Logger = natlab.TestLogger(t)
		bad = reachlab.HostConfig(corp.Host, bad)
		err := corp.Host.Run(func() error {
			nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			n, err := reach.New(nctx, bad)
			if err == nil {
				n.Close()
			}
			return err
		})
		t.Logf("wrong proxy password: %v", err)
		if !errors.Is(err, reach.ErrProxyAuth) {
			t.Fatalf("got %v, want ErrProxyAuth", err)
		}
	})

	good := cfg
	good.Proxy = proxyURL("s3cret")
	nc := s.Node(t, corp.Host, good)
	np := s.Node(t, pr.Host, cfg)
	if nc.Observed().IsValid() {
		t.Fatalf("proxy-only node registered over UDP (observed %v)", nc.Observed())
	}
	for _, dir := range []struct {
		name     string
		from, to *reach.Node
	}{{"proxied->port-restricted", nc, np}, {"port-restricted->proxied", np, nc}} {
		t.Run(dir.name, func(t *testing.T) {
			reachlab.Echo(t, dir.to)
			sess := checkEcho(t, ctx, dir.from, dir.to, 2<<20)
			t.Logf("%s: %s; proxied node's relay link: %s", dir.name, sess.Strategy(), nc.Status().RelayTransport)
			if sess.Strategy() != reach.StrategyRelay {
				t.Fatalf("strategy %q, want relay", sess.Strategy())
			}
			closeAndWaitGone(t, sess, dir.to, dir.from)
		})
	}
	if tr := nc.Status().RelayTransport; tr != "tls" && tr != "ws" {
		t.Errorf("proxied node's relay link %q, want tls or ws", tr)
	}
	// A proxy that would pass only HTTP: signalling and the relay link in
	// WebSockets (wss://server:443/rdv and /relay), through the same proxy.
	t.Run("websocket", func(t *testing.T) {
		ws := good
		ws.WebSocketSignalling = true
		ws.ForceTCPSignalling = true
		ws.RelayDialers = []relay.LinkDialer{relay.WSDialer{}}
		nw := s.Node(t, corp.Host, ws)
		reachlab.Echo(t, np)
		sess := checkEcho(t, ctx, nw, np, 2<<20)
		t.Logf("websocket node: %s, relay link %s", sess.Strategy(), nw.Status().RelayTransport)
		if sess.Strategy() != reach.StrategyRelay || nw.Status().RelayTransport != "ws" {
			t.Fatalf("strategy %q over %q, want relay over ws", sess.Strategy(), nw.Status().RelayTransport)
		}
		nw.Close()
	})

	// squid logs a tunnel when it ends.
	nc.Close()
	target := s.Server.ServerAddr().TCPHostPort()
	var log string
	tunnels := 0
	reachlab.WaitFor(5*time.Second, func() bool {
		log, tunnels = sq.AccessLog(), 0
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "TCP_TUNNEL/200") && strings.Contains(line, "CONNECT "+target) && strings.Contains(line, " alice ") {
				tunnels++
			}
		}
		return tunnels >= 2
	})
	t.Logf("squid access.log:\n%s", log)
	// One for signalling, one for the relay link at least.
	if tunnels < 2 {
		t.Errorf("%d authenticated tunnels to %s in squid's log, want signalling and relay", tunnels, target)
	}
	if !strings.Contains(log, "TCP_DENIED/407") {
		t.Error("the wrong password left no TCP_DENIED/407 in squid's log")
	}
	t.Logf("relay: %+v", s.Relay.Stats())
}
