package turn

import (
	"net/netip"
	"testing"

	"github.com/reachp2p/reach/identity"
)

// TestPeerTableBounded: a flood of introductions with fresh relayed
// addresses keeps at most maxPeers of them, the newest; a peer's own
// address keeps its path.
func TestPeerTableBounded(t *testing.T) {
	var tb peerTable
	r := &Rung{}
	var first netip.AddrPort
	for i := range 5 * maxPeers {
		var id identity.PeerID
		id[0], id[1] = byte(i), byte(i>>8)
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), uint16(1024+i))
		if i == 0 {
			first = a
		}
		tb.remember(a, id, r)
	}
	if n := tb.size(); n != maxPeers {
		t.Fatalf("%d peers kept, want %d", n, maxPeers)
	}
	if tb.lookup(first) != nil {
		t.Error("the oldest address is still kept")
	}
	var id identity.PeerID
	id[0] = 0xee
	a := netip.AddrPortFrom(netip.MustParseAddr("::ffff:192.0.2.1"), 3478)
	p := tb.remember(a, id, r)
	if q := tb.remember(netip.MustParseAddrPort("192.0.2.1:3478"), id, r); q != p {
		t.Error("the same peer at the same address (v4-mapped or not) got a second path")
	}
	if tb.lookup(netip.MustParseAddrPort("192.0.2.1:3478")) != p {
		t.Error("lookup does not find the path by its unmapped address")
	}
	if n := tb.size(); n != maxPeers {
		t.Fatalf("%d peers kept after one more, want %d", n, maxPeers)
	}
}
