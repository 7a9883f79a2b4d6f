package reach_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/internal/redistest"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/rendezvous/fleet"
)

// fleetServer starts a rendezvous server with a relay on loopback, in the
// fleet that shares the Redis at url, until the test ends.
func fleetServer(t *testing.T, name, url string) *rendezvous.RunningServer {
	t.Helper()
	rs, _ := fleetServerRelay(t, name, url)
	return rs
}

// fleetServerRelay is fleetServer that also returns the server's relay.
func fleetServerRelay(t *testing.T, name, url string) (*rendezvous.RunningServer, *relay.Server) {
	t.Helper()
	reg, err := fleet.New(url, fleet.Config{TTL: 3 * time.Second, Logger: natlab.TestLogger(t).With("fleet", name)})
	if err != nil {
		t.Fatal(err)
	}
	rl := relay.NewServer(relay.ServerConfig{Logger: natlab.TestLogger(t).With("relay", name)})
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Logger:    natlab.TestLogger(t).With("server", name),
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
		Registry:  reg,
	}, rbLoopback)
	if err != nil {
		reg.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close(); reg.Close() })
	return rs, rl
}

// TestFleetDial: three servers on one Redis; node A registered with server
// 1, node B with server 3. A dials B and gets its best path on loopback
// (direct), 256 KiB intact both ways. With Redis stopped, A still reaches
// C on its own server, and a dial to B fails within 1s with
// rendezvous.ErrRegistryUnavailable; once Redis is back, A reaches B
// again without anything restarted.
func TestFleetDial(t *testing.T) {
	rds := redistest.Start(t)
	s1 := fleetServer(t, "s1", rds.URL())
	fleetServer(t, "s2", rds.URL())
	s3 := fleetServer(t, "s3", rds.URL())
	a := rbNode(t, "a", s1.ConnectString())
	b := rbNode(t, "b", s3.ConnectString())
	c := rbNode(t, "c", s1.ConnectString())
	reachlab.Echo(t, b)
	reachlab.Echo(t, c)

	dial := func(to *reach.Node) (*reach.Session, time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		sess, err := reachlab.CheckEcho(t, ctx, a, to, 256<<10)
		return sess, time.Since(start), err
	}
	// B's registration reaches Redis in the background: the first dial may
	// come before it.
	var sess *reach.Session
	var err error
	for range 20 {
		if sess, _, err = dial(b); !errors.Is(err, rendezvous.ErrUnknownPeer) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("A (server 1) dials B (server 3): %v", err)
	}
	if got := sess.Strategy(); got != reach.StrategyDirect {
		t.Errorf("A -> B across servers won by %s, want %s on loopback", got, reach.StrategyDirect)
	}
	sess.Close()
	if n := s1.Stats().FleetIntrosSent; n < 1 {
		t.Errorf("server 1 handed %d introductions to the fleet, want ≥ 1", n)
	}

	rds.Stop()
	if _, _, err := dial(c); err != nil {
		t.Fatalf("A dials C on its own server with Redis down: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err = a.DialSession(ctx, b.ID())
	took := time.Since(start)
	t.Logf("A -> B with Redis down: after %v: %v", took, err)
	if !errors.Is(err, rendezvous.ErrRegistryUnavailable) {
		t.Fatalf("A -> B with Redis down: %v, want rendezvous.ErrRegistryUnavailable", err)
	}
	if took > time.Second {
		t.Fatalf("A -> B with Redis down failed after %v, want within 1s", took)
	}

	rds.Start()
	back := time.Now()
	deadline := back.Add(3 * time.Second) // one TTL
	for {
		sess, _, err := dial(b)
		if err == nil {
			sess.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A -> B %v after Redis came back: %v", time.Since(back), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("A -> B works again %v after Redis came back", time.Since(back).Round(time.Millisecond))
}

// fleetRelayNode is a node on server that dials through the relay only.
func fleetRelayNode(t *testing.T, name, server string) *reach.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := reach.New(ctx, reach.Config{Servers: []string{server}, ListenAddr: rbLoopback,
		Strategies: []string{reach.StrategyRelay}, Logger: natlab.TestLogger(t).With("n", name)})
	if err != nil {
		t.Fatalf("node %s: %v", name, err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestFleetRelay: relayed sessions across servers. A is registered with
// server 1 and B with server 3, both dial through the relay only. A dials
// B: B links to the relay A's offer names (server 1's), and 256 KiB come
// back intact through it; then C, also on server 3, dials A through
// server 3's relay. Each relay carried the bytes of the dial its own peer
// made.
func TestFleetRelay(t *testing.T) {
	rds := redistest.Start(t)
	s1, rl1 := fleetServerRelay(t, "s1", rds.URL())
	s3, rl3 := fleetServerRelay(t, "s3", rds.URL())
	a := fleetRelayNode(t, "a", s1.ConnectString())
	b := fleetRelayNode(t, "b", s3.ConnectString())
	c := fleetRelayNode(t, "c", s3.ConnectString())
	reachlab.Echo(t, a)
	reachlab.Echo(t, b)

	dial := func(from, to *reach.Node) (*reach.Session, error) {
		var sess *reach.Session
		var err error
		// A registration reaches Redis in the background: the first dial
		// may come before it.
		for range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			sess, err = reachlab.CheckEcho(t, ctx, from, to, 256<<10)
			cancel()
			if !errors.Is(err, rendezvous.ErrUnknownPeer) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		return sess, err
	}
	sess, err := dial(a, b)
	if err != nil {
		t.Fatalf("A (server 1) dials B (server 3) through the relay: %v", err)
	}
	if got := sess.Strategy(); got != reach.StrategyRelay {
		t.Errorf("A -> B won by %s, want %s", got, reach.StrategyRelay)
	}
	sess.Close()
	if n := rl1.Metrics().Bytes; n < 2*256<<10 {
		t.Errorf("server 1's relay forwarded %d bytes for A -> B, want ≥ %d", n, 2*256<<10)
	}
	before3 := rl3.Metrics().Bytes

	sess, err = dial(c, a)
	if err != nil {
		t.Fatalf("C (server 3) dials A (server 1) through the relay: %v", err)
	}
	if got := sess.Strategy(); got != reach.StrategyRelay {
		t.Errorf("C -> A won by %s, want %s", got, reach.StrategyRelay)
	}
	sess.Close()
	if n := rl3.Metrics().Bytes - before3; n < 2*256<<10 {
		t.Errorf("server 3's relay forwarded %d bytes for C -> A, want ≥ %d", n, 2*256<<10)
	}
}
