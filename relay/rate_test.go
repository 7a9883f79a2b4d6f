package relay

import (
	"crypto/rand"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/reachp2p/reach/identity"
)

// TestDefaultRates: a relay configured with nothing limits each peer to
// DefaultPeerRate and all together to DefaultTotalRate (issue 15: it
// forwarded without limit), each packet counting as at least
// MinPacketCost. A link that pushes full-size packets, then one-byte
// ones, at four times the rate (on the server's clock, which the test
// keeps, so that a slow machine sends as fast), gets no more than its
// bucket and the rate through; the rest are peer_rate drops.
func TestDefaultRates(t *testing.T) {
	s := NewServer(ServerConfig{})
	if s.cfg.PeerRate != DefaultPeerRate || s.total == nil || int(s.total.Limit()) != DefaultTotalRate {
		t.Fatalf("PeerRate %d, total %v: want the defaults %d and %d", s.cfg.PeerRate, s.total, DefaultPeerRate, DefaultTotalRate)
	}
	mk := func() *peerLink {
		var id identity.PeerID
		rand.Read(id[:])
		return &peerLink{srv: s, id: id, lim: s.peerLimiter(), wake: make(chan struct{}, 1)}
	}
	// Full-size packets at four times the rate for a virtual 100 ms
	// after the bucket: no more than the bucket and the rate pass.
	src, dst := mk(), mk()
	s.peers[dst.id] = dst
	pkt := make([]byte, MaxPayload)
	n := 4 * (s.cfg.PeerBurst + DefaultPeerRate/10) / MaxPayload
	start := time.Now()
	every := time.Second * MaxPayload / (4 * DefaultPeerRate)
	for i := range n {
		s.clock = func() time.Time { return start.Add(time.Duration(i) * every) }
		s.forward(src, dst.id, pkt)
		dst.qmu.Lock()
		dst.queue = dst.queue[:0] // a reader that keeps up
		dst.qmu.Unlock()
	}
	el := time.Duration(n-1) * every
	limited := int(s.Metrics().Drops["peer_rate"])
	passed := n - limited
	allowed := (s.cfg.PeerBurst + int(float64(DefaultPeerRate)*el.Seconds())) / MaxPayload
	t.Logf("%d-byte packets: %d sent in %v (the server's clock), %d passed (the bucket and rate allow %d), %d dropped peer_rate",
		MaxPayload, n, el, passed, allowed, limited)
	if passed > allowed+1 || limited == 0 {
		t.Errorf("%d passed, want at most %d (and some dropped)", passed, allowed+1)
	}
	// One-byte packets each take MinPacketCost from the bucket: a bucket
	// of 1000 such costs (refilling at 1 B/s) passes 1000 of them, not
	// the 1001st.
	src = mk()
	const small = 1000
	src.lim = rate.NewLimiter(1, small*MinPacketCost)
	before := s.Metrics().Drops["peer_rate"]
	for range small + 1 {
		s.forward(src, dst.id, []byte{1})
		dst.qmu.Lock()
		dst.queue = dst.queue[:0]
		dst.qmu.Unlock()
	}
	if got := s.Metrics().Drops["peer_rate"] - before; got != 1 || src.nPackets.Load() != small {
		t.Errorf("one-byte packets: %d forwarded, %d dropped peer_rate; want %d and 1", src.nPackets.Load(), got, small)
	}
}
