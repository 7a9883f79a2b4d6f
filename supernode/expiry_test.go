package supernode

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/rendezvous"
)

// TestVolunteerTokenExpiry (issue 15): a volunteer enforces its tokens'
// expiry on live links as far as a token from an introduction allows: a
// session running through it outlives the tokens (1 MiB echoed intact
// after they expired), an idle link ends at its token's expiry, and the
// pool that held it links again at once with a fresh token (the volunteer
// is not taken for gone).
func TestVolunteerTokenExpiry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tv := startVolunteer(t, Config{Enable: true})
	sec := secret(11)
	tv.vol.Verdict(admitted(serverAddr(t, 4900), sec))
	expiry := time.Now().Add(2 * time.Second).Truncate(time.Second)
	short := func(peer identity.PeerID) rendezvous.Candidate {
		c := tv.candFor(peer, sec)
		c.Token = rendezvous.NewSupernodeToken(sec, peer, expiry)
		return c
	}
	a, b, c := newPeer(t, "a"), newPeer(t, "b"), newPeer(t, "c")
	if err := b.pool.Link(ctx, short(b.key.ID()), a.key.ID()); err != nil {
		t.Fatal(err)
	}
	if err := c.pool.Link(ctx, short(c.key.ID()), a.key.ID()); err != nil {
		t.Fatal(err)
	}
	sess, err := a.pool.dial(ctx, short(a.key.ID()), &rung.Attempt{Key: a.key, Peer: b.key.ID(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, 64<<10); err != nil {
		t.Fatal(err)
	}

	// c's link carries nothing: it ends at the expiry.
	for slices.Contains(c.pool.Using(), tv.key.ID()) {
		if ctx.Err() != nil {
			t.Fatal("c's idle link is up after its token expired")
		}
		time.Sleep(20 * time.Millisecond)
	}
	late := time.Since(expiry)
	if late < 0 {
		t.Fatalf("c's link ended %v before its token's expiry", -late)
	}
	t.Logf("idle link ended %v after its token's expiry", late.Round(time.Millisecond))

	// a ↔ b goes on past the expiry.
	time.Sleep(time.Until(expiry) + 500*time.Millisecond)
	st, err = sess.OpenStream(ctx)
	if err != nil {
		t.Fatalf("a ↔ b after the tokens expired: %v", err)
	}
	if err := roundTrip(st, 1<<20); err != nil {
		t.Fatalf("a ↔ b after the tokens expired: %v", err)
	}
	if m := tv.vol.Relay().Metrics(); m.Expired != 1 {
		t.Errorf("the volunteer ended %d links at expiry, want 1 (c's)", m.Expired)
	}

	// c links again with a fresh token, at once.
	start := time.Now()
	if err := c.pool.Link(ctx, tv.candFor(c.key.ID(), sec), a.key.ID()); err != nil {
		t.Fatalf("c links again with a fresh token: %v", err)
	}
	t.Logf("c linked again in %v", time.Since(start).Round(time.Millisecond))
}
