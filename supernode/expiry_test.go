package supernode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/relay"
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

// TestVolunteerLinksPerSource (issue 15): one source cannot take every
// link slot of a volunteer (4n+4 links; the relay's default per source,
// 64, is above that): with MaxSessions 2 it links 6 peers (2n+2), the
// 7th is refused with relay.ErrRateLimited, and a peer from another
// address still links.
func TestVolunteerLinksPerSource(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tv := startVolunteer(t, Config{Enable: true, MaxSessions: 2})
	sec := secret(12)
	tv.vol.Verdict(admitted(serverAddr(t, 4900), sec))
	linked := 0
	var refused error
	for i := range 7 {
		h := newPeerOn(t, fmt.Sprintf("h%d", i), "127.0.0.2")
		if err := h.pool.Link(ctx, tv.candFor(h.key.ID(), sec), identity.PeerID{}); err != nil {
			refused = err
			break
		}
		linked++
	}
	if linked != 6 || !errors.Is(refused, relay.ErrRateLimited) {
		t.Fatalf("one source linked %d peers, then %v; want 6, then relay.ErrRateLimited", linked, refused)
	}
	o := newPeerOn(t, "other", "127.0.0.3")
	if err := o.pool.Link(ctx, tv.candFor(o.key.ID(), sec), identity.PeerID{}); err != nil {
		t.Fatalf("a peer from another address: %v", err)
	}
	if got := tv.vol.Relay().Metrics().Rejected["ip_links"]; got != 1 {
		t.Errorf("%d links refused ip_links, want 1", got)
	}
}
