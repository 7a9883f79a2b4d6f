package rendezvous

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// listingRegistry is a Registry of one server whose fleet's other live
// servers are whatever the test sets.
type listingRegistry struct {
	mu   sync.Mutex
	list []string
}

func (r *listingRegistry) Run(ctx context.Context, _ string, _ FleetHandler) error {
	<-ctx.Done()
	return nil
}
func (*listingRegistry) Register(identity.PeerID)   {}
func (*listingRegistry) Unregister(identity.PeerID) {}
func (*listingRegistry) Lookup(context.Context, identity.PeerID) (string, error) {
	return "", ErrUnknownPeer
}
func (*listingRegistry) Introduce(context.Context, string, FleetIntro) (FleetResult, error) {
	return FleetResult{}, ErrPeerOffline
}
func (r *listingRegistry) LiveServers(context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.list), nil
}
func (r *listingRegistry) set(list []string) {
	r.mu.Lock()
	r.list = list
	r.mu.Unlock()
}

// TestClientLearnsFleet: a client configured with one server of a fleet
// learns the fleet's other live servers from REGISTERED and, when they
// change, from the next PONG: after its configured server, without a
// string that does not parse, at most MaxFleetServers; knowing more than
// one server, it pings each DefaultFleetLiveness/3.
func TestClientLearnsFleet(t *testing.T) {
	fleetServersEvery = 100 * time.Millisecond
	defer func() { fleetServersEvery = FleetServersEvery }()
	other := func(i int) ServerAddr {
		return ServerAddr{ID: mustKey(t).ID(), Host: "192.0.2.1", Port: uint16(5000 + i)}
	}
	o1, o2 := other(1), other(2)
	reg := &listingRegistry{list: []string{o1.String(), "reach://not-a-server"}}
	rs := startTestServer(t, ServerConfig{Logger: testLogger(t, "srv"), Registry: reg})
	time.Sleep(300 * time.Millisecond) // the server has read the list
	c := startClient(t, "A", mustKey(t), []ServerAddr{rs.ServerAddr()}, newTransport(t))
	if got, want := c.Servers(), []ServerAddr{rs.ServerAddr(), o1}; !slices.Equal(got, want) {
		t.Fatalf("after REGISTERED the client knows %v, want %v", got, want)
	}
	c.mu.Lock()
	cc := c.conn
	c.mu.Unlock()
	if got := cc.silentFor(); got != DefaultFleetLiveness {
		t.Errorf("a client that knows two servers takes %v of silence for death, want %v", got, DefaultFleetLiveness)
	}

	// The fleet changes: o1 is gone, o2 and many more are there.
	list := []string{o2.String()}
	for i := range 2 * MaxFleetServers {
		list = append(list, other(10+i).String())
	}
	reg.set(list)
	waitFor(t, "the client to learn the new list from a PONG", func() bool {
		got := c.Servers()
		return len(got) == 1+MaxFleetServers && got[1] == o2 && !slices.Contains(got, o1)
	})
	if got := c.Current(); got != rs.ServerAddr() {
		t.Errorf("the client moved to %v", got)
	}
}

// TestClientLearnsFleetLater: a client whose server named no other when
// it registered learns them from a PONG, pings faster from then on (not
// taking the old interval's silence for a dead server), and forgets them
// when the server says its fleet is down to itself.
func TestClientLearnsFleetLater(t *testing.T) {
	fleetServersEvery = 100 * time.Millisecond
	defer func() { fleetServersEvery = FleetServersEvery }()
	reg := &listingRegistry{}
	// A keepalive of 3 s: the client's pings come that far apart until it
	// knows a second server.
	rs := startTestServer(t, ServerConfig{Logger: testLogger(t, "srv"), Registry: reg, IdleTimeout: 9 * time.Second})
	time.Sleep(300 * time.Millisecond)
	c := startClient(t, "A", mustKey(t), []ServerAddr{rs.ServerAddr()}, newTransport(t))
	if got := c.Servers(); len(got) != 1 {
		t.Fatalf("the client knows %v, want its one server", got)
	}
	other := ServerAddr{ID: mustKey(t).ID(), Host: "192.0.2.1", Port: 5001}
	reg.set([]string{other.String()})
	deadline := time.Now().Add(6 * time.Second)
	for len(c.Servers()) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the client did not learn the fleet from a PONG: %v", c.Servers())
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.mu.Lock()
	cc := c.conn
	c.mu.Unlock()
	time.Sleep(DefaultFleetLiveness + time.Second)
	c.mu.Lock()
	same := c.conn == cc
	c.mu.Unlock()
	if !same {
		t.Fatalf("the client left its live server after learning a second one")
	}
	reg.set(nil)
	deadline = time.Now().Add(5 * time.Second)
	for len(c.Servers()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the client still knows %v after the fleet shrank to its server", c.Servers())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
