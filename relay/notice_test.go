package relay

import (
	"crypto/rand"
	"testing"

	"github.com/reachp2p/reach/identity"
)

// TestRandomDestinationFloodBounded: a linked peer sending one-byte
// packets to random peer IDs (issue 15: each used to add ~112 B of
// bookkeeping kept about a minute, without bound) leaves at most
// maxNotices destinations remembered and at most SendQueue notices
// queued for itself; every packet is counted as a no_peer drop.
func TestRandomDestinationFloodBounded(t *testing.T) {
	s := NewServer(ServerConfig{})
	var id identity.PeerID
	rand.Read(id[:])
	src := &peerLink{srv: s, id: id, wake: make(chan struct{}, 1)}
	const flood = 100_000
	for range flood {
		var dst identity.PeerID
		rand.Read(dst[:])
		s.forward(src, dst, []byte{1})
	}
	src.omu.Lock()
	remembered := len(src.notices)
	src.omu.Unlock()
	src.qmu.Lock()
	queued := len(src.queue)
	src.qmu.Unlock()
	t.Logf("%d packets to random IDs: %d destinations remembered, %d notices queued", flood, remembered, queued)
	if remembered > maxNotices {
		t.Errorf("%d destinations remembered, want at most %d", remembered, maxNotices)
	}
	if queued > s.cfg.SendQueue {
		t.Errorf("%d notices queued, want at most %d", queued, s.cfg.SendQueue)
	}
	if got := s.Metrics().Drops["no_peer"]; got != flood {
		t.Errorf("no_peer drops %d, want %d", got, flood)
	}
}
