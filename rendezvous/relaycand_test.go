package rendezvous

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestRelayCandidateKeysStripped: only a server of a fleet names a relay
// with a key (a listener links to a relay so named). A dialler that
// writes a key and a TCP port into its Relay candidate reaches its peer
// on the same server with the candidate, without them: it cannot make
// the peer link to an address of its choosing.
func TestRelayCandidateKeysStripped(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	servers := []ServerAddr{rs.ServerAddr()}
	ak, bk := mustKey(t), mustKey(t)
	a := startClient(t, "a", ak, servers, newTransport(t))
	b := startClient(t, "b", bk, servers, newTransport(t))
	var offered PeerInfo
	var wg sync.WaitGroup
	wg.Go(func() {
		in := <-b.Incoming()
		offered = in.Offer
		in.Accept(PeerInfo{})
	})
	relayAt := netip.MustParseAddrPort("198.51.100.9:4950")
	_, err := a.Connect(testCtx(t, 5*time.Second), bk.ID(), PeerInfo{
		Candidates: []Candidate{{Addr: relayAt, Kind: Relay, Peer: ak.ID(), TCPPort: 443}}})
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	var relays []Candidate
	for _, c := range offered.Candidates {
		if c.Kind == Relay {
			relays = append(relays, c)
		}
	}
	if len(relays) != 1 || relays[0] != (Candidate{Addr: relayAt, Kind: Relay}) {
		t.Fatalf("relay candidates in the offer %+v, want %v with no key and no TCP port", relays, relayAt)
	}
}
