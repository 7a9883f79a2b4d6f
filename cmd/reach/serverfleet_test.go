package main

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/quic-go/quic-go"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/redistest"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/rendezvous/fleet"
)

// TestServerFleet: three `reach server --registry` processes on one
// Redis. Peer A, registered with server 1 (given only that one: it learns
// servers 2 and 3 from it), and peer B, with server 3, are introduced
// across servers. Server 1 is
// killed (SIGKILL): within 5s A re-registers with server 2 and B reaches
// it again; meanwhile no dial waits for the dead server (peer_offline at
// once, not at the registration's TTL). Server 1 restarts and rejoins.
// Twice: the clients' signalling over TCP (the kernel closes a killed
// server's connections at once), and over QUIC (nothing tells: the client
// pings each second and takes a server silent for
// rendezvous.DefaultFleetLiveness, 3 s, for dead).
func TestServerFleet(t *testing.T) {
	for _, proto := range []string{"tcp", "quic"} {
		t.Run(proto, func(t *testing.T) { testServerFleet(t, proto == "quic") })
	}
}

func testServerFleet(t *testing.T, overQUIC bool) {
	bin := reachBinary(t)
	rds := redistest.Start(t)
	var srv []rendezvous.ServerAddr
	var kill1 func()
	state1 := t.TempDir()
	for i := range 3 {
		state := state1
		if i > 0 {
			state = t.TempDir()
		}
		sa, cmd := runServerEnv(t, bin, nil, tLogWriter{t}, "--listen", "127.0.0.1:0", "--state", state,
			"--tls-port", "0", "--registry", rds.URL(), "--registry-ttl", "3s", "-v")
		srv = append(srv, sa)
		if i == 0 {
			kill1 = func() { cmd.Process.Signal(syscall.SIGKILL); cmd.Wait() }
		}
	}
	reg, err := fleet.New(rds.URL(), fleet.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	keyA, keyB := mustGenerate(t), mustGenerate(t)
	// A is given server 1 only and learns the others from it: wait until
	// server 1 lists both (it reads the list each 5 s, rendezvous.
	// FleetServersEvery: two reads, with room for a loaded machine).
	deadline := time.Now().Add(2*rendezvous.FleetServersEvery + 3*time.Second)
	for {
		p := fleetClient(t, "probe", mustGenerate(t), overQUIC, srv[0])
		known := len(p.Servers())
		p.Close()
		if known == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server 1 names %d servers, want 3 (itself and the two others)", known)
		}
		time.Sleep(500 * time.Millisecond)
	}
	a := fleetClient(t, "A", keyA, overQUIC, srv[0])
	b := fleetClient(t, "B", keyB, overQUIC, srv[2])
	if got := a.Servers(); len(got) != 3 || got[0] != srv[0] || !slices.Contains(got, srv[1]) || !slices.Contains(got, srv[2]) {
		t.Fatalf("A knows %v, want server 1 and the two it learned", got)
	}
	if overQUIC && (!a.ServerUDP().IsValid() || !b.ServerUDP().IsValid()) {
		t.Fatalf("not registered over QUIC: A at %v, B at %v", a.ServerUDP(), b.ServerUDP())
	}
	answer := func(c *rendezvous.Client) {
		var wg sync.WaitGroup
		wg.Go(func() {
			for in := range c.Incoming() {
				in.Accept(rendezvous.PeerInfo{Candidates: []rendezvous.Candidate{{Addr: netip.MustParseAddrPort("192.0.2.1:1000"), Kind: rendezvous.Host}}})
			}
		})
		t.Cleanup(func() { c.Close(); wg.Wait() })
	}
	answer(a)
	answer(b)
	dial := func(from *rendezvous.Client, to identity.PeerID) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		_, err := from.Connect(ctx, to, rendezvous.PeerInfo{})
		return time.Since(start), err
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		_, err := dial(b, keyA.ID())
		if err == nil {
			break
		}
		if !errors.Is(err, rendezvous.ErrUnknownPeer) || time.Now().After(deadline) {
			t.Fatalf("B (server 3) dials A (server 1): %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := dial(a, keyB.ID()); err != nil {
		t.Fatalf("A (server 1) dials B (server 3): %v", err)
	}

	kill1()
	killed := time.Now()
	var last error
	for {
		took, err := dial(b, keyA.ID())
		if err == nil {
			break
		}
		if took > 2*time.Second {
			t.Errorf("a dial to A while its server was dead took %v: %v", took, err)
		}
		last = err
		if time.Since(killed) > 5*time.Second {
			t.Fatalf("A not dialable %v after its server was killed: %v", time.Since(killed), last)
		}
		time.Sleep(250 * time.Millisecond) // under B's introduction rate limit
	}
	t.Logf("A dialable again %v after server 1 was killed (now at %v); the last failure: %v",
		time.Since(killed).Round(time.Millisecond), a.Current().UDPHostPort(), last)
	if cur := a.Current(); cur != srv[1] && cur != srv[2] {
		t.Errorf("A is registered with %v, want server 2 or 3 (learned from server 1)", cur)
	}
	if overQUIC && !a.ServerUDP().IsValid() {
		t.Errorf("A is registered over TCP, not QUIC")
	}

	// Server 1 comes back (a new instance, same key): it rejoins the
	// fleet, and its new peers are reached from the others.
	sa1, _ := runServerEnv(t, bin, nil, tLogWriter{t}, "--listen", "127.0.0.1:0", "--state", state1,
		"--tls-port", "0", "--registry", rds.URL(), "--registry-ttl", "3s", "-v")
	if sa1.ID != srv[0].ID {
		t.Errorf("server 1 came back as %s, was %s", sa1.ID, srv[0].ID)
	}
	keyC := mustGenerate(t)
	answer(fleetClient(t, "C", keyC, overQUIC, sa1))
	deadline = time.Now().Add(5 * time.Second)
	for {
		_, err := dial(b, keyC.ID())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B (server 3) dials C (restarted server 1): %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	servers, err := reg.Servers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("live servers in Redis: %d", len(servers))
}

func mustGenerate(t *testing.T) *identity.Key {
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fleetClient(t *testing.T, name string, key *identity.Key, overQUIC bool, servers ...rendezvous.ServerAddr) *rendezvous.Client {
	t.Helper()
	cfg := rendezvous.ClientConfig{Key: key, Servers: servers, Logger: testLogger(t).With("peer", name),
		DialTimeout: 2 * time.Second}
	if overQUIC {
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		tr := &quic.Transport{Conn: pc}
		t.Cleanup(func() { tr.Close() })
		cfg.Transport = tr
	}
	c, err := rendezvous.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return c
}

// TestServerFleetMetrics: with a fleet registry, /metrics has the
// reach_fleet_* series, which pass promlint and follow Redis's health.
func TestServerFleetMetrics(t *testing.T) {
	rds := redistest.Start(t)
	reg, err := fleet.New(rds.URL(), fleet.Config{TTL: 3 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{Logger: testLogger(t), Registry: reg},
		netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close(); reg.Close() })
	preg, err := serverRegistry(rs.Server, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string) float64 {
		mfs, err := preg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				m := mf.GetMetric()[0]
				if m.GetCounter() != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	latency := func(op string) *dto.Histogram {
		t.Helper()
		mfs, err := preg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "reach_fleet_redis_operation_duration_seconds" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if l := m.GetLabel(); len(l) == 1 && l[0].GetValue() == op {
					return m.GetHistogram()
				}
			}
		}
		t.Fatalf("no reach_fleet_redis_operation_duration_seconds{op=%q}", op)
		return nil
	}
	problems, err := testutil.GatherAndLint(preg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "reach_fleet") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A dial to a peer nobody knows asks Redis (timed).
	c := fleetClient(t, "A", mustGenerate(t), false, rs.ServerAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, mustGenerate(t).ID(), rendezvous.PeerInfo{}); !errors.Is(err, rendezvous.ErrUnknownPeer) {
		t.Fatalf("dial to an unknown peer: %v", err)
	}
	if value("reach_fleet_redis_up") != 1 {
		t.Errorf("with Redis up: reach_fleet_redis_up %v", value("reach_fleet_redis_up"))
	}
	// The lookup that dial made, in the latency histogram (seconds, with
	// Prometheus's default-like buckets up to 1 s), beside the others.
	lookups := latency("lookup")
	if lookups.GetSampleCount() != 1 || lookups.GetSampleSum() <= 0 || lookups.GetSampleSum() > 0.5 {
		t.Errorf("lookup latency: %d samples, sum %vs; want 1, within OpTimeout", lookups.GetSampleCount(), lookups.GetSampleSum())
	}
	if b := lookups.GetBucket(); len(b) == 0 || b[len(b)-1].GetUpperBound() != 1 || b[len(b)-1].GetCumulativeCount() != 1 {
		t.Errorf("lookup latency buckets: %v", b)
	}
	for _, op := range []string{"publish", "write", "refresh", "servers"} {
		latency(op) // present from the start
	}
	rds.Stop()
	if _, err := c.Connect(ctx, mustGenerate(t).ID(), rendezvous.PeerInfo{}); !errors.Is(err, rendezvous.ErrRegistryUnavailable) {
		t.Fatalf("dial with Redis down: %v", err)
	}
	waitUntil("reach_fleet_redis_up 0", func() bool { return value("reach_fleet_redis_up") == 0 })
	if value("reach_fleet_redis_errors_total") < 1 || value("reach_rendezvous_registry_unavailable_total") != 1 {
		t.Errorf("with Redis down: errors %v, registry_unavailable %v", value("reach_fleet_redis_errors_total"),
			value("reach_rendezvous_registry_unavailable_total"))
	}
	rds.Start()
	waitUntil("reach_fleet_redis_up 1 again", func() bool { return value("reach_fleet_redis_up") == 1 })
}
