package turn

import (
	"net/netip"
	"testing"
	"time"

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

// TestPeerTableKeepsLive: a flood of introductions (fresh addresses, or a
// stranger claiming a live peer's relayed address) does not take the
// address of a peer whose session is being heard from; once it has been
// quiet for peerQuiet it can go.
func TestPeerTableKeepsLive(t *testing.T) {
	var tb peerTable
	r := &Rung{}
	var live, stranger identity.PeerID
	live[0], stranger[0] = 0xaa, 0xbb
	liveAddr := netip.MustParseAddrPort("192.0.2.7:50000")
	tb.remember(liveAddr, live, r)
	if tb.heardFrom(liveAddr) == nil {
		t.Fatal("the live peer's address is not known")
	}
	if p := tb.remember(liveAddr, stranger, r); p.peer != stranger {
		t.Error("the stranger's path is not the stranger's")
	}
	if p := tb.lookup(liveAddr); p == nil || p.peer != live {
		t.Fatal("a stranger's claim took a live peer's relayed address")
	}
	for i := range 3 * maxPeers {
		var id identity.PeerID
		id[0], id[1], id[2] = 1, byte(i), byte(i>>8)
		tb.remember(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), 1024), id, r)
		if i%100 == 0 {
			tb.heardFrom(liveAddr) // its session goes on
		}
	}
	if n := tb.size(); n != maxPeers {
		t.Fatalf("%d peers kept, want %d", n, maxPeers)
	}
	if p := tb.lookup(liveAddr); p == nil || p.peer != live {
		t.Fatal("a flood of introductions evicted a live peer's address")
	}
	// Quiet since long ago: the address goes to whoever claims it now.
	tb.lookup(liveAddr).heard.Store(time.Now().Add(-peerQuiet - time.Second).UnixNano())
	tb.remember(liveAddr, stranger, r)
	if p := tb.lookup(liveAddr); p == nil || p.peer != stranger {
		t.Error("a quiet peer's address was not given to the peer that claims it now")
	}
}
