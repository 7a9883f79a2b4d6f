package fleet

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/redistest"
	"github.com/reachp2p/reach/rendezvous"
)

// threeServers starts a fleet of three servers on one Redis.
func threeServers(t *testing.T, rs *redistest.Server, fcfg Config, scfg rendezvous.ServerConfig) []*fleetServer {
	t.Helper()
	var out []*fleetServer
	for _, name := range []string{"s1", "s2", "s3"} {
		out = append(out, startFleetServer(t, name, rs.URL(), fcfg, scfg))
	}
	return out
}

func connect(t *testing.T, c *rendezvous.Client, peer identity.PeerID, offer rendezvous.PeerInfo, d time.Duration) (rendezvous.PeerInfo, error, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	ans, err := c.Connect(ctx, peer, offer)
	return ans, err, time.Since(start)
}

// TestFleetCrossServerIntroduction: peer A registered with server 1 and
// peer B with server 3 of a fleet on one Redis: A's offer reaches B intact
// and B's answer comes back intact, through Redis.
func TestFleetCrossServerIntroduction(t *testing.T) {
	rs := redistest.Start(t)
	srv := threeServers(t, rs, Config{}, rendezvous.ServerConfig{})
	keyA, keyB := mustKey(t), mustKey(t)
	a := startClient(t, "A", keyA, srv[0])
	b := startClient(t, "B", keyB, srv[2])
	bAddr := netip.MustParseAddrPort("192.0.2.2:4000")
	offers := answerAll(t, b, rendezvous.Candidate{Addr: bAddr, Kind: rendezvous.Host})
	registered(t, srv[2], keyB.ID(), 5*time.Second)

	aAddr := netip.MustParseAddrPort("192.0.2.1:3000")
	punch := bytes.Repeat([]byte{0xa5}, 32)
	// A relays through its server: server 1 names its relay (key,
	// address, TCP port) in place of what A wrote, a forged key included.
	forged := rendezvous.Candidate{Addr: netip.MustParseAddrPort("198.51.100.9:1"), Kind: rendezvous.Relay, Peer: keyA.ID(), TCPPort: 9}
	ans, err, took := connect(t, a, keyB.ID(), rendezvous.PeerInfo{
		Candidates: []rendezvous.Candidate{{Addr: aAddr, Kind: rendezvous.Host}, forged},
		PunchKey:   punch, Attempt: 7,
	}, 5*time.Second)
	if err != nil {
		t.Fatalf("A dials B across servers: %v", err)
	}
	t.Logf("cross-server introduction took %v", took)
	if ans.Peer != keyB.ID() || !hasCandidate(ans, bAddr) {
		t.Fatalf("answer = %+v, want B's with %v", ans, bAddr)
	}
	if ans.Flight {
		t.Fatal("a cross-server answer claims a first flight")
	}
	select {
	case off := <-offers:
		if off.Peer != keyA.ID() || !hasCandidate(off, aAddr) || !bytes.Equal(off.PunchKey, punch) || off.Attempt != 7 {
			t.Fatalf("B got offer %+v, want A's intact", off)
		}
		if !off.Observed.IsValid() {
			t.Fatal("the offer lost A's observed address on the way")
		}
		s1 := srv[0].rs.ServerAddr()
		want := rendezvous.Candidate{Addr: netip.AddrPortFrom(netip.MustParseAddr(s1.Host), s1.Port), Kind: rendezvous.Relay, Peer: s1.ID, TCPPort: s1.TCPPort}
		var relays []rendezvous.Candidate
		for _, c := range off.Candidates {
			if c.Kind == rendezvous.Relay {
				relays = append(relays, c)
			}
		}
		if len(relays) != 1 || relays[0] != want {
			t.Fatalf("relay candidates in B's offer %+v, want only server 1's relay %+v", relays, want)
		}
	default:
		t.Fatal("B saw no offer")
	}
	if n := srv[0].rs.Stats().FleetIntrosSent; n != 1 {
		t.Errorf("server 1 FleetIntrosSent = %d, want 1", n)
	}
	if n := srv[2].rs.Stats().FleetIntrosServed; n != 1 {
		t.Errorf("server 3 FleetIntrosServed = %d, want 1", n)
	}

	// An unknown peer is unknown fleet-wide, not unavailable.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := a.Connect(ctx, mustKey(t).ID(), rendezvous.PeerInfo{}); !errors.Is(err, rendezvous.ErrUnknownPeer) {
		t.Fatalf("dial to a peer no server knows: %v, want ErrUnknownPeer", err)
	}

	// The fleet lists its three servers.
	servers, err := srv[1].reg.Servers(ctx)
	if err != nil || len(servers) != 3 {
		t.Fatalf("Servers = %v, %v; want 3", servers, err)
	}
}

// TestFleetRedisOutage: with Redis stopped, a server keeps introducing its
// own peers, and a cross-server dial fails within 1s with
// ErrRegistryUnavailable; once Redis is back (empty), the servers
// repopulate it within one TTL and cross-server dials work again, nothing
// restarted.
func TestFleetRedisOutage(t *testing.T) {
	rs := redistest.Start(t)
	const ttl = 3 * time.Second
	srv := threeServers(t, rs, Config{TTL: ttl}, rendezvous.ServerConfig{})
	keyA, keyB, keyC := mustKey(t), mustKey(t), mustKey(t)
	a := startClient(t, "A", keyA, srv[0])
	b := startClient(t, "B", keyB, srv[2])
	c := startClient(t, "C", keyC, srv[0])
	answerAll(t, b, rendezvous.Candidate{Addr: netip.MustParseAddrPort("192.0.2.2:4000"), Kind: rendezvous.Host})
	answerAll(t, c, rendezvous.Candidate{Addr: netip.MustParseAddrPort("192.0.2.3:4000"), Kind: rendezvous.Host})
	registered(t, srv[2], keyB.ID(), 5*time.Second)
	if _, err, _ := connect(t, a, keyB.ID(), rendezvous.PeerInfo{}, 5*time.Second); err != nil {
		t.Fatalf("cross-server dial before the outage: %v", err)
	}

	rs.Stop()
	if _, err, took := connect(t, a, keyC.ID(), rendezvous.PeerInfo{}, 5*time.Second); err != nil {
		t.Fatalf("local dial with Redis down: %v (after %v)", err, took)
	}
	for i := range 3 {
		_, err, took := connect(t, a, keyB.ID(), rendezvous.PeerInfo{}, 5*time.Second)
		if !errors.Is(err, rendezvous.ErrRegistryUnavailable) {
			t.Fatalf("cross-server dial %d with Redis down: %v, want ErrRegistryUnavailable", i, err)
		}
		if took > time.Second {
			t.Fatalf("cross-server dial %d with Redis down failed after %v, want within 1s", i, took)
		}
		t.Logf("cross-server dial %d with Redis down: failed after %v: %v", i, took, err)
	}
	if n := srv[0].rs.Stats().RegistryErrors; n < 3 {
		t.Errorf("server 1 RegistryErrors = %d, want ≥ 3", n)
	}

	// Redis comes back empty: within one TTL the registrations are back
	// and a cross-server dial works again.
	rs.Start()
	back := time.Now()
	registered(t, srv[2], keyB.ID(), ttl)
	t.Logf("B's registration back in Redis %v after Redis restarted", time.Since(back))
	waitFor(t, ttl, "a cross-server dial after Redis came back", func() bool {
		_, err, _ := connect(t, a, keyB.ID(), rendezvous.PeerInfo{}, 2*time.Second)
		if err != nil {
			t.Logf("cross-server dial: %v", err)
		}
		return err == nil
	})
	t.Logf("cross-server dials work %v after Redis restarted", time.Since(back))
}

func hasCandidate(pi rendezvous.PeerInfo, a netip.AddrPort) bool {
	for _, c := range pi.Candidates {
		if c.Addr == a {
			return true
		}
	}
	return false
}

// TestFleetCluster: the same fleet on a three-node Redis Cluster started
// by the test (--registry HOST:PORT,HOST:PORT,HOST:PORT): registrations
// land in every node's slots, and introductions cross servers through
// sharded pub/sub whichever node serves each server's channel.
func TestFleetCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	var srv []*fleetServer
	for _, name := range []string{"s1", "s2", "s3"} {
		srv = append(srv, startFleetServer(t, name, cl.Seeds(), Config{}, rendezvous.ServerConfig{}))
	}
	var keys []*identity.Key
	var clients []*rendezvous.Client
	for i := range 9 { // three peers per server
		k := mustKey(t)
		c := startClient(t, "p"+strconv.Itoa(i), k, srv[i%3])
		answerAll(t, c, rendezvous.Candidate{Addr: netip.MustParseAddrPort("192.0.2.9:4000"), Kind: rendezvous.Host})
		keys, clients = append(keys, k), append(clients, c)
	}
	for i, k := range keys {
		registered(t, srv[i%3], k.ID(), 5*time.Second)
	}
	// Every node holds some of the registrations.
	for i, n := range cl.Nodes {
		ks, err := n.Client(t).Keys(context.Background(), "reach:peer:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("node %d holds %d registrations", i, len(ks))
	}
	// Each peer dials the peer of the next server.
	for i, c := range clients {
		to := keys[(i+1)%len(keys)].ID()
		if _, err, took := connect(t, c, to, rendezvous.PeerInfo{}, 5*time.Second); err != nil {
			t.Fatalf("p%d (server %d) dials p%d (server %d): %v after %v", i, i%3+1, (i+1)%len(keys), (i+1)%3+1, err, took)
		}
	}
	servers, err := srv[0].reg.Servers(context.Background())
	if err != nil || len(servers) != 3 {
		t.Fatalf("Servers on the Cluster = %v, %v; want 3", servers, err)
	}
}
