package relay

import (
	"bytes"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// TestReassembler: two halves join in either order into the packet;
// halves of other sources or ids do not mix; a stale half is not joined;
// at most maxPending wait.
func TestReassembler(t *testing.T) {
	var r reassembler
	src, other := identity.PeerID{1}, identity.PeerID{2}
	pkt := pattern(1452, 3)
	if !isFrag(appendFrag(nil, 1, 0, pkt)) || isFrag(pkt) {
		t.Fatal("isFrag")
	}
	for _, order := range [][2]int{{0, 1}, {1, 0}} {
		id := uint16(order[0] + 10)
		if _, ok := r.add(src, appendFrag(nil, id, order[0], pkt)); ok {
			t.Fatal("one half made a packet")
		}
		if _, ok := r.add(other, appendFrag(nil, id, order[1], pattern(1452, 9))); ok {
			t.Fatal("halves of two sources joined")
		}
		got, ok := r.add(src, appendFrag(nil, id, order[1], pkt))
		if !ok || !bytes.Equal(got, pkt) {
			t.Fatalf("order %v: joined %d bytes, ok %v", order, len(got), ok)
		}
	}
	// A half older than fragTTL is not joined with a new one of its id.
	r = reassembler{}
	r.add(src, appendFrag(nil, 7, 0, pattern(1452, 1)))
	r.pending[0].at = time.Now().Add(-2 * fragTTL)
	if _, ok := r.add(src, appendFrag(nil, 7, 1, pkt)); ok {
		t.Fatal("a stale half was joined")
	}
	for i := range 100 {
		r.add(src, appendFrag(nil, uint16(100+i), 0, pkt))
	}
	if len(r.pending) > maxPending {
		t.Fatalf("%d halves pending, want at most %d", len(r.pending), maxPending)
	}
}
