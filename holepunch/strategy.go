package holepunch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/strategy"
	"github.com/reachp2p/reach/stream"
)

// Name is the strategy's name in the ladder.
const Name = "holepunch"

// ErrNoPath: the checks ran until the context ended and no address of the
// peer answered.
var ErrNoPath = errors.New("holepunch: no candidate pair answered")

// Strategy is the dialler's side of a hole punch: it runs checks against
// every candidate of the peer (whose side started when the introduction
// reached it), then dials QUIC to the first address that answered, on the
// same socket so the NAT mappings the checks opened carry the session.
type Strategy struct {
	// Manager returns the node's punch manager.
	Manager func() *Manager
	// CheckTimeout bounds how long checks run without any address
	// answering before Connect gives up with ErrNoPath. Zero: 10s.
	CheckTimeout time.Duration
}

// Name implements strategy.Strategy.
func (*Strategy) Name() string { return Name }

// Connect implements strategy.Strategy. If the node started the attempt
// early (Manager.Start with no remotes, before asking for the
// introduction, so that the peer's first checks are answered at once), it
// is reused and given the peer's candidates.
//
// Every address that validates gets a QUIC dial of its own, in parallel:
// the first session wins, the others are cancelled. An address validates
// when its pong comes back, or when an authenticated ping arrives from it
// (the peer's NAT is then open towards us from that address, which saves
// the round trip of our own check).
func (s *Strategy) Connect(ctx context.Context, a *strategy.Attempt) (*stream.Session, error) {
	var remotes []netip.AddrPort
	for _, c := range a.Remote.Candidates {
		if c.Kind != rendezvous.Relay {
			remotes = append(remotes, c.Addr)
		}
	}
	if len(remotes) == 0 {
		return nil, ErrNoCandidates
	}
	m := s.Manager()
	at := m.Lookup(a.Local.Attempt)
	if at != nil {
		at.AddRemotes(remotes)
	} else {
		var err error
		at, err = m.Start(Params{Attempt: a.Local.Attempt, Key: a.Local.PunchKey, Role: RoleDialer, Remote: remotes})
		if err != nil {
			return nil, err
		}
		// Keep answering the peer's checks until the session is up.
		defer at.Close()
	}
	limit := s.CheckTimeout
	if limit <= 0 {
		limit = 10 * time.Second
	}
	giveUp := time.NewTimer(limit)
	defer giveUp.Stop()

	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		addr netip.AddrPort
		sess *stream.Session
		err  error
	}
	results := make(chan result)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		// Drain the dials still running; close any session that lost.
		go func() {
			wg.Wait()
			close(results)
		}()
		for r := range results {
			if r.sess != nil {
				r.sess.CloseWithError(0, "lost the race")
			}
		}
	}()
	pending := 0
	expired := false
	var errs []error
	// Addresses that proved a wrong key before a pong confirmed them; if
	// one is confirmed later, it was the peer after all.
	var wrongKey []netip.AddrPort
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	fail := func(base error) error {
		if len(errs) == 0 {
			return base
		}
		return errors.Join(append([]error{base}, errs...)...)
	}
	// dialed: addresses with a validated dial under way (or done).
	dialed := map[netip.AddrPort]bool{}
	dial := func(addr netip.AddrPort) {
		pending++
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess, err := stream.Dial(dctx, a.Socket.Transport(), addr, a.Key, a.Peer, a.Session)
			select {
			case results <- result{addr, sess, err}:
			case <-dctx.Done():
				if sess != nil {
					sess.CloseWithError(0, "lost the race")
				}
			}
		}()
	}
	// Optimistic dials: the listener has been sending checks to our
	// reflexive address since the introduction reached it, so its NAT is
	// probably open towards us already; a QUIC handshake to its reflexive
	// address now saves the round trip of a check when it is. If it is
	// not, the packets are dropped and the checks go on as usual (a
	// validated address gets a dial of its own).
	// A reflexive address that is also one of the peer's own addresses
	// (an open host) is what direct dials: leave it to direct, so the
	// rung that wins says what made the path.
	own := map[netip.AddrPort]bool{}
	for _, c := range a.Remote.Candidates {
		if c.Kind == rendezvous.Host {
			own[c.Addr] = true
		}
	}
	for _, c := range a.Remote.Candidates {
		if c.Kind == rendezvous.Reflexive && c.Addr.IsValid() && !own[c.Addr] {
			dial(c.Addr)
		}
	}
	for {
		select {
		case <-giveUp.C:
			expired = true
			if pending == 0 {
				return nil, fail(fmt.Errorf("%w within %v", ErrNoPath, limit))
			}
			// a dial is under way: let it finish (bounded by its own
			// handshake timeout)
		case <-ctx.Done():
			return nil, fail(fmt.Errorf("%w: %w", ErrNoPath, ctx.Err()))
		case <-tick.C:
			for _, w := range wrongKey {
				if at.Confirmed(w) {
					return nil, errors.Join(errs...)
				}
			}
		case addr := <-at.Validated():
			a.Logger.Debug("holepunch: pair validated", "peer", a.Peer.Short(), "addr", addr, "learned", at.Learned())
			if !dialed[addr] {
				dialed[addr] = true
				dial(addr)
			}
		case r := <-results:
			pending--
			if r.err == nil {
				return r.sess, nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", r.addr, r.err))
			if errors.Is(r.err, identity.ErrWrongPeer) && at.Confirmed(r.addr) {
				// The address answered our check under the attempt's punch
				// key, so it is the introduced peer, and it proved another
				// key: no other address will do better. Fail now. (An
				// address known only from a ping might be a replay by a
				// third party: keep going.)
				return nil, errors.Join(errs...)
			}
			if errors.Is(r.err, identity.ErrWrongPeer) {
				wrongKey = append(wrongKey, r.addr)
			}
			if pending == 0 && expired {
				return nil, fail(ErrNoPath)
			}
		}
	}
}
