package relay

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// linked is a peer link registered on s, as a link that just said HELLO.
func linked(t *testing.T, s *Server) *peerLink {
	t.Helper()
	var id identity.PeerID
	rand.Read(id[:])
	p := &peerLink{srv: s, id: id, wake: make(chan struct{}, 1), linkedAt: time.Now()}
	s.mu.Lock()
	s.peers[id] = p
	s.mu.Unlock()
	return p
}

func queued(p *peerLink) int {
	p.qmu.Lock()
	defer p.qmu.Unlock()
	return len(p.queue)
}

// TestConsentWindow: a stranger whose packet reached a new link before it
// asked for consent (an empty ALLOW, one round trip after WELCOME) loses
// its session when the link asks: its next packets are dropped as
// not_allowed (the load test saw 27,822 hostile packets forwarded that
// way). A peer the link allowed keeps its session. A link that more than
// maxEarly peers reached first has every packet checked.
func TestConsentWindow(t *testing.T) {
	s := NewServer(ServerConfig{})
	to := linked(t, s)
	stranger, friend := linked(t, s), linked(t, s)
	s.forward(stranger, to.id, []byte{1})
	s.forward(friend, to.id, []byte{2})
	if n := queued(to); n != 2 {
		t.Fatalf("before consent: %d packets queued, want 2", n)
	}
	to.permit(friend.id, time.Now())
	s.allow(to, nil) // consent on
	s.forward(stranger, to.id, []byte{3})
	s.forward(friend, to.id, []byte{4})
	if n := queued(to); n != 3 {
		t.Fatalf("after consent: %d packets queued, want 3 (the friend's only)", n)
	}
	if got := s.Metrics().Drops["not_allowed"]; got != 1 {
		t.Errorf("not_allowed drops %d, want 1", got)
	}
	s.mu.RLock()
	sessions := s.sessions
	s.mu.RUnlock()
	if sessions != 1 {
		t.Errorf("%d sessions open, want 1 (the friend's)", sessions)
	}

	// Many peers first: strict.
	busy := linked(t, s)
	var first []*peerLink
	for range maxEarly + 5 {
		p := linked(t, s)
		first = append(first, p)
		s.forward(p, busy.id, []byte{1})
	}
	if !busy.strict.Load() {
		t.Fatalf("%d early senders, not strict", len(first))
	}
	s.allow(busy, nil)
	before := queued(busy)
	for _, p := range first {
		s.forward(p, busy.id, []byte{2})
	}
	if n := queued(busy) - before; n != 0 {
		t.Errorf("strict link: %d packets from strangers delivered after consent, want 0", n)
	}
}

// TestPongBeyondFullQueue: packets that filled a link's queue do not make
// the relay drop the PONG a node waits for (a new link's consent PONG);
// a node that pings without reading gets controlHeadroom more, no more.
func TestPongBeyondFullQueue(t *testing.T) {
	s := NewServer(ServerConfig{})
	to, from := linked(t, s), linked(t, s)
	for range s.cfg.SendQueue + 10 {
		s.forward(from, to.id, []byte{1})
	}
	if n := queued(to); n != s.cfg.SendQueue {
		t.Fatalf("%d packets queued, want the queue's %d", n, s.cfg.SendQueue)
	}
	for range 2 * controlHeadroom {
		to.enqueuePong(consentPing)
	}
	if n := queued(to); n != s.cfg.SendQueue+controlHeadroom {
		t.Fatalf("%d frames queued after the PONGs, want %d", n, s.cfg.SendQueue+controlHeadroom)
	}
}
