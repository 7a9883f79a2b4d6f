package e2e_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// relayPayload is what TestLabRelaySymmetric moves each way, as the issue
// asks: 100 MiB each way at once took 6.4 s on this machine's two shared
// cores (131 Mbit/s each way).
const relayPayload = 100 << 20

// startRelayServer runs what `reach server` runs on h: rendezvous, STUN and
// the relay, on UDP and TCP 4950 and TLS on TCP 443.
func startRelayServer(t testing.TB, h *natlab.Host, rcfg relay.ServerConfig) (*rendezvous.RunningServer, *relay.Server) {
	t.Helper()
	if rcfg.Logger == nil {
		rcfg.Logger = natlab.TestLogger(t).With("relay", h.Name())
	}
	rl := relay.NewServer(rcfg)
	var rs *rendezvous.RunningServer
	err := h.Run(func() error {
		var err error
		rs, err = rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
			Logger:    natlab.TestLogger(t).With("server", h.Name()),
			Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
			TLSPort:   443,
		}, netip.AddrPortFrom(h.Addr(), rendezvous.DefaultPort))
		return err
	})
	if err != nil {
		t.Fatalf("server on %s: %v", h.Name(), err)
	}
	t.Cleanup(func() { rs.Close() })
	if !rs.TLSAddr().IsValid() || rs.ServerAddr().TCPPort != 443 {
		t.Fatalf("server did not bind TLS on 443: %v %s", rs.TLSAddr(), rs.ConnectString())
	}
	return rs, rl
}

// events collects a node's path events.
type events struct {
	mu  sync.Mutex
	all []reach.PathEvent
	ch  chan reach.PathEvent
}

func newEvents() *events { return &events{ch: make(chan reach.PathEvent, 64)} }

func (e *events) add(ev reach.PathEvent) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
	select {
	case e.ch <- ev:
	default:
	}
}

// wait returns the first event of kind within d.
func (e *events) wait(t *testing.T, kind reach.PathEventKind, d time.Duration) reach.PathEvent {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev := <-e.ch:
			t.Logf("path event %s strategy=%q err=%v", ev.Kind, ev.Strategy, ev.Err)
			if ev.Kind == kind {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event within %v", kind, d)
		}
	}
}

// TestLabRelaySymmetric: two peers behind symmetric NATs (no UPnP) with the
// full ladder end up on the relay, over UDP; data moves intact both ways,
// and keeps moving while the node tries the better rungs in the background,
// which it reports (upgrade-attempt, then upgrade-failed: symmetric to
// symmetric has no direct path).
func TestLabRelaySymmetric(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	rs, rl := startRelayServer(t, srv, relay.ServerConfig{})
	sa, err := l.AddSite(ctx, "syma", natlab.Kind(natlab.Symmetric))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := l.AddSite(ctx, "symb", natlab.Kind(natlab.Symmetric))
	if err != nil {
		t.Fatal(err)
	}
	ev := newEvents()
	cfg := reach.Config{Servers: []string{rs.ConnectString()}, DisablePortMapping: true}
	cfgA := cfg
	cfgA.OnPathEvent = ev.add
	na := reachlab.NewNode(t, sa.Host, cfgA)
	nb := reachlab.NewNode(t, sb.Host, cfg)
	echoed := echoOnce(nb)
	start := time.Now()
	sess, err := na.DialSession(ctx, nb.ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("symmetric <-> symmetric: %s after %v, relay link over %s", sess.Strategy(), time.Since(start), na.Status().RelayTransport)
	if sess.Strategy() != reach.StrategyRelay || na.Status().RelayTransport != "udp" || nb.Status().RelayTransport != "udp" {
		t.Fatalf("strategy %q, links %q/%q; want relay over udp", sess.Strategy(), na.Status().RelayTransport, nb.Status().RelayTransport)
	}
	ev.wait(t, reach.PathRelayed, time.Second)
	ev.wait(t, reach.PathUpgradeAttempt, 5*time.Second)
	c, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start = time.Now()
	if err := roundTrip(c, relayPayload); err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d MiB each way through the relay in %v (%.0f Mbit/s each way)", relayPayload>>20, el, float64(relayPayload)*8/el.Seconds()/1e6)
	// The background attempt gives up (holepunch's 10 s check timeout);
	// the relayed session still works afterwards.
	ev.wait(t, reach.PathUpgradeFailed, 30*time.Second)
	if _, err := sess.Ping(ctx); err != nil {
		t.Fatalf("relayed session after the background attempt: %v", err)
	}
	if s, _ := na.DialSession(ctx, nb.ID()); s != sess {
		t.Error("a new dial did not reuse the relayed session")
	}
	st := rl.Stats()
	t.Logf("relay: %+v", st)
	if st.Bytes < 2*relayPayload {
		t.Errorf("relay forwarded %d bytes, want at least %d", st.Bytes, 2*relayPayload)
	}
}

// TestLabRelayUDPBlocked: a peer in a network that lets only TCP 80/443
// out and a peer behind a symmetric NAT connect, both ways round; the
// blocked peer's relay link is TLS on 443 and its signalling went over TCP.
func TestLabRelayUDPBlocked(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := startRelayServer(t, srv, relay.ServerConfig{})
	corp, err := l.AddSite(ctx, "corp", natlab.Kind(natlab.UDPBlocked))
	if err != nil {
		t.Fatal(err)
	}
	sym, err := l.AddSite(ctx, "sym", natlab.Kind(natlab.Symmetric))
	if err != nil {
		t.Fatal(err)
	}
	cfg := reach.Config{Servers: []string{rs.ConnectString()}, DisablePortMapping: true}
	nc := reachlab.NewNode(t, corp.Host, cfg)
	ns := reachlab.NewNode(t, sym.Host, cfg)
	if nc.Observed().IsValid() {
		t.Fatalf("blocked node registered over UDP (observed %v)", nc.Observed())
	}
	if !ns.Observed().IsValid() {
		t.Fatal("symmetric node did not register over UDP")
	}
	for _, dir := range []struct {
		name     string
		from, to *reach.Node
	}{{"blocked->symmetric", nc, ns}, {"symmetric->blocked", ns, nc}} {
		t.Run(dir.name, func(t *testing.T) {
			echoed := echoOnce(dir.to)
			start := time.Now()
			sess, err := dir.from.DialSession(ctx, dir.to.ID())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %s after %v", dir.name, sess.Strategy(), time.Since(start))
			if sess.Strategy() != reach.StrategyRelay {
				t.Fatalf("strategy %q, want relay", sess.Strategy())
			}
			c, err := sess.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := roundTrip(c, 4<<20); err != nil {
				t.Fatal(err)
			}
			if err := <-echoed; err != nil {
				t.Fatal(err)
			}
			// End the session on both sides, so the other direction
			// dials afresh instead of reusing it.
			closeAndWaitGone(t, sess, dir.to, dir.from)
		})
	}
	if nc.Status().RelayTransport != "tls" || ns.Status().RelayTransport != "udp" {
		t.Errorf("relay links: blocked %q, symmetric %q; want tls and udp", nc.Status().RelayTransport, ns.Status().RelayTransport)
	}
	if p := rs.ServerAddr().TCPPort; p != 443 {
		t.Errorf("TLS port %d, want 443 (the only TCP port besides 80 the firewall lets out)", p)
	}
}

// closeAndWaitGone closes sess and waits (5s at most) until none of nodes
// has a session left, so that the next dial starts afresh instead of
// reusing it.
func closeAndWaitGone(t *testing.T, sess *stream.Session, nodes ...*reach.Node) {
	t.Helper()
	sess.CloseWithError(0, "done")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		open := 0
		for _, n := range nodes {
			open += len(n.Sessions())
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("relayed session still open 5s after close")
		}
	}
}
