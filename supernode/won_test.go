package supernode

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// blackhole is a forwarded path that drops everything: another
// forwarding rung's path, readied for the peer while the supernode's
// session was winning.
type blackhole struct{}

func (blackhole) Send([]byte) error { return nil }

// TestWonPutsVolunteerBack: a session that won through a volunteer on
// the node's socket gets the volunteer back as its peer's forwarded path
// (Rung.Won) after a later rung of the race set its own; without it the
// session's packets went where the later rung pointed.
func TestWonPutsVolunteerBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tv := startVolunteer(t, Config{Enable: true})
	sec := secret(7)
	tv.vol.Verdict(admitted(serverAddr(t, 4900), sec))
	b := newPeer(t, "b")

	// a runs its sessions on its own socket, as a node's rung makes it.
	key := mustKey(t)
	s := listenSockOn(t, "127.0.0.1")
	pool, err := NewPool(PoolConfig{Key: key, Socket: s.Transport(), Logger: testLogger(t).With("side", "a"),
		OnSession: func(*stream.Session) {}, OnLost: func(identity.PeerID, *stream.Session) {}})
	if err != nil {
		t.Fatal(err)
	}
	pool.paths = s.Paths()
	t.Cleanup(func() { pool.Close(); s.Close() })
	r := &Rung{pool: pool}

	if err := b.pool.Link(ctx, tv.candFor(b.key.ID(), sec), key.ID()); err != nil {
		t.Fatalf("b links to the volunteer: %v", err)
	}
	att := &rung.Attempt{Key: key, Peer: b.key.ID(), Logger: testLogger(t)}
	sess, err := pool.dial(ctx, tv.candFor(key.ID(), sec), att)
	if err != nil {
		t.Fatalf("a dials b through the volunteer: %v", err)
	}
	defer sess.Close()
	// The relay (say) readied its path for b after the dial began.
	if err := pool.paths.SetFallback(sess.QUICAddr(), blackhole{}); err != nil {
		t.Fatal(err)
	}
	r.Won(att, sess)
	if _, p, err := pool.paths.Current(sess.QUICAddr()); err != nil {
		t.Fatal(err)
	} else if vp, ok := p.(*vpath); !ok || vp.vl.peer != tv.key.ID() {
		t.Fatalf("b's path after Won: %T, want the volunteer's", p)
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, 1<<20); err != nil {
		t.Fatalf("1 MiB after Won: %v", err)
	}
}
