package holepunch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
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

// Connect implements strategy.Strategy.
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
	at, err := s.Manager().Start(Params{Attempt: a.Local.Attempt, Key: a.Local.PunchKey, Role: RoleDialer, Remote: remotes})
	if err != nil {
		return nil, err
	}
	// Keep answering the peer's checks until the session is up.
	defer at.Close()
	var errs []error
	limit := s.CheckTimeout
	if limit <= 0 {
		limit = 10 * time.Second
	}
	giveUp := time.NewTimer(limit)
	defer giveUp.Stop()
	for {
		select {
		case <-giveUp.C:
			if len(errs) == 0 {
				return nil, fmt.Errorf("%w within %v", ErrNoPath, limit)
			}
			return nil, errors.Join(append([]error{ErrNoPath}, errs...)...)
		case <-ctx.Done():
			if len(errs) == 0 {
				return nil, fmt.Errorf("%w: %w", ErrNoPath, ctx.Err())
			}
			return nil, errors.Join(append([]error{ctx.Err()}, errs...)...)
		case addr := <-at.Validated():
			a.Logger.Debug("holepunch: pair validated", "peer", a.Peer.Short(), "addr", addr, "learned", at.Learned())
			sess, err := stream.Dial(ctx, a.Socket.Transport(), addr, a.Key, a.Peer, a.Session)
			if err == nil {
				return sess, nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			if errors.Is(err, identity.ErrWrongPeer) {
				// The address answered checks under the attempt's punch
				// key, so it is the introduced peer, and it proved another
				// key: no other address will do better. Fail now rather
				// than when ctx ends.
				return nil, errors.Join(errs...)
			}
		}
	}
}
