package relay

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/rendezvous"
)

// TestForeignRelaysBounded: diallers name the relay their offer goes
// through, so a flood of introductions naming distinct relays makes a node
// hold at most maxForeignRelays links to other relays; a relay named again
// is reused; one unused for foreignKeep makes room; the peers remembered
// for ForwardPath are bounded too.
func TestForeignRelaysBounded(t *testing.T) {
	k, _ := identity.GenerateKey()
	r := &Rung{h: &rung.Host{Logger: slog.New(slog.DiscardHandler)}}
	made := 0
	r.newForeign = func() (*Client, error) {
		made++
		return NewClient(ClientConfig{Key: k})
	}
	defer r.closeForeign()
	relayAt := func(i int) rendezvous.ServerAddr {
		return rendezvous.ServerAddr{ID: k.ID(), Host: "192.0.2.1", Port: uint16(1000 + i)}
	}
	for i := range 100 {
		c := r.foreignClient(relayAt(i))
		if i < maxForeignRelays && c == nil {
			t.Fatalf("relay %d refused below the cap", i)
		}
		if i >= maxForeignRelays && c != nil {
			t.Fatalf("relay %d linked beyond the cap of %d, all of them in use", i, maxForeignRelays)
		}
	}
	if made != maxForeignRelays || len(r.foreign) != maxForeignRelays {
		t.Fatalf("%d clients made, %d kept; want %d", made, len(r.foreign), maxForeignRelays)
	}
	if c := r.foreignClient(relayAt(0)); c == nil || made != maxForeignRelays {
		t.Fatalf("relay 0 named again: client %v, %d made; want the same client", c, made)
	}
	// Relay 1 goes unused: it makes room for a new one.
	r.fmu.Lock()
	old := r.foreign[relayAt(1)]
	old.used = time.Now().Add(-2 * foreignKeep)
	r.fmu.Unlock()
	if c := r.foreignClient(relayAt(200)); c == nil {
		t.Fatal("a new relay refused though relay 1 was unused")
	}
	r.fmu.Lock()
	_, kept := r.foreign[relayAt(1)]
	n := len(r.foreign)
	r.fmu.Unlock()
	if kept || n != maxForeignRelays {
		t.Fatalf("after making room: relay 1 kept %v, %d relays; want it gone, %d", kept, n, maxForeignRelays)
	}
	select {
	case <-old.client.ctx.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("the evicted relay's client was not closed")
	}

	// Peers remembered as reached through a foreign relay.
	var last identity.PeerID
	for range 3 * maxForeignPeers {
		p, _ := identity.GenerateKey()
		r.remember(p.ID(), relayAt(0))
		last = p.ID()
	}
	r.fmu.Lock()
	n = len(r.via)
	r.fmu.Unlock()
	if n > maxForeignPeers {
		t.Fatalf("%d peers remembered, want ≤ %d", n, maxForeignPeers)
	}
	if c, sa := r.viaForeign(last); c == nil || sa != relayAt(0) {
		t.Fatalf("the last peer remembered: via %v, want relay 0", sa)
	}
}

// TestRelayOfOffer: the relay an offer names, with the key needed to link
// to it; none for an offer whose relay candidate has no key (older nodes).
func TestRelayOfOffer(t *testing.T) {
	k, _ := identity.GenerateKey()
	addr := netip.MustParseAddrPort("198.51.100.7:7777")
	sa, ok := relayOf(candidate.PeerInfo{Candidates: []candidate.Candidate{
		{Addr: netip.MustParseAddrPort("10.0.0.1:1"), Kind: candidate.Host},
		{Addr: addr, Kind: candidate.Relay, Peer: k.ID()},
	}})
	if !ok || sa.ID != k.ID() || sa.Host != "198.51.100.7" || sa.Port != 7777 {
		t.Fatalf("relayOf = %+v, %v; want %v at %v", sa, ok, k.ID().Short(), addr)
	}
	if _, ok := relayOf(candidate.PeerInfo{Candidates: []candidate.Candidate{{Addr: addr, Kind: candidate.Relay}}}); ok {
		t.Fatal("a relay candidate without a key was taken")
	}
}

// TestIsOwnRelay: the node's own server's relay is recognised by key, port
// and address (an IP literal, or what the server's name resolves to);
// another server of a fleet sharing the key is not.
func TestIsOwnRelay(t *testing.T) {
	k, _ := identity.GenerateKey()
	other, _ := identity.GenerateKey()
	own := rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.1", Port: 7777}
	r := &Rung{h: &rung.Host{Server: func() rendezvous.ServerAddr { return own }}}
	ctx := context.Background()
	cases := []struct {
		sa   rendezvous.ServerAddr
		want bool
	}{
		{rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.1", Port: 7777}, true},
		{rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.2", Port: 7777}, false},
		{rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.1", Port: 7778}, false},
		{rendezvous.ServerAddr{ID: other.ID(), Host: "127.0.0.1", Port: 7777}, false},
	}
	for _, c := range cases {
		if got := r.isOwn(ctx, c.sa); got != c.want {
			t.Errorf("isOwn(%v) = %v, want %v", c.sa, got, c.want)
		}
	}
	own.Host = "localhost"
	if !r.isOwn(ctx, rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.1", Port: 7777}) {
		t.Error("the server by name (localhost) is not recognised at 127.0.0.1")
	}
}

// TestForeignAfterClose: an introduction still in flight when the node
// closes makes no client of another relay (nothing would close it).
func TestForeignAfterClose(t *testing.T) {
	k, _ := identity.GenerateKey()
	r := &Rung{h: &rung.Host{Logger: slog.New(slog.DiscardHandler)}}
	r.newForeign = func() (*Client, error) { return NewClient(ClientConfig{Key: k}) }
	r.closeForeign()
	if c := r.foreignClient(rendezvous.ServerAddr{ID: k.ID(), Host: "192.0.2.1", Port: 1}); c != nil {
		c.Close()
		t.Fatal("a client of another relay was made after the rung closed")
	}
}

// TestDeadForeignRelaysFreeSlots: relays that cannot be linked to (here
// nothing listens) hold no slot: after maxForeignRelays of them, a new
// relay still gets a client.
func TestDeadForeignRelaysFreeSlots(t *testing.T) {
	k, _ := identity.GenerateKey()
	r := &Rung{h: &rung.Host{Logger: slog.New(slog.DiscardHandler), Context: context.Background()}}
	r.newForeign = func() (*Client, error) {
		return NewClient(ClientConfig{Key: k, Dialers: []LinkDialer{TLSDialer{}}, DialTimeout: 200 * time.Millisecond})
	}
	defer r.closeForeign()
	for i := range maxForeignRelays {
		sa := rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.1", Port: uint16(1 + i)} // nothing listens
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r.introducedForeign(ctx, sa, k.ID())
		cancel()
	}
	r.fmu.Lock()
	n := len(r.foreign)
	r.fmu.Unlock()
	if n != 0 {
		t.Fatalf("%d dead relays hold slots, want 0", n)
	}
	if c := r.foreignClient(rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.1", Port: 99}); c == nil {
		t.Fatal("a new relay refused after dead ones")
	}
}

// TestForwardPathAfterFailover: a peer introduced through another
// server's relay, when the node has since failed over to that very
// server, is reached through the node's own link there: the other client
// is dropped (a second link with the node's key would replace its own).
// Without a session to move, the next introduction drops it (pruneOwn).
func TestForwardPathAfterFailover(t *testing.T) {
	k, _ := identity.GenerateKey()
	peer, _ := identity.GenerateKey()
	there := rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.1", Port: 4950}
	own := rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.2", Port: 4950}
	r := &Rung{h: &rung.Host{Logger: slog.New(slog.DiscardHandler), Server: func() rendezvous.ServerAddr { return own }}}
	r.newForeign = func() (*Client, error) { return NewClient(ClientConfig{Key: k}) }
	defer r.closeForeign()
	f := r.foreignClient(there)
	r.remember(peer.ID(), there)
	own = there // failed over
	if c, _ := r.viaForeign(peer.ID()); c != f {
		t.Fatal("the peer is not remembered through the other relay")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r.client, _ = NewClient(ClientConfig{Key: k, Dialers: []LinkDialer{TLSDialer{}}, DialTimeout: 100 * time.Millisecond})
	defer r.client.Close()
	r.ForwardPath(ctx, peer.ID()) // links (and fails: nothing listens) through its own client
	if c, _ := r.viaForeign(peer.ID()); c != nil {
		t.Error("the peer is still reached through a second client of the node's own relay")
	}
	select {
	case <-f.ctx.Done():
	case <-time.After(2 * time.Second):
		t.Error("the second client of the node's own relay was not closed")
	}

	// Without a session to move: the next introduction prunes it.
	own = rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.2", Port: 4950}
	g := r.foreignClient(there)
	own = there
	r.pruneOwn(ctx)
	r.fmu.Lock()
	n := len(r.foreign)
	r.fmu.Unlock()
	if n != 0 || g.ctx.Err() == nil {
		t.Errorf("after pruning: %d clients of other relays, the one to the node's own relay closed: %v", n, g.ctx.Err() != nil)
	}
}
