// Package direct is the first rung of the ladder: it dials the peer's
// advertised addresses as they are, with no help from the peer beyond
// listening. It wins when the peer is reachable already: on the same LAN,
// on a public address, behind a manual port forward or a full-cone NAT, or
// over IPv6 without a blocking firewall.
package direct

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/strategy"
	"github.com/reachp2p/reach/stream"
)

// Name is the strategy's name in the ladder.
const Name = "direct"

// ErrNoAddress: the peer advertised no address this strategy can dial.
var ErrNoAddress = errors.New("direct: peer has no dialable address")

// Strategy dials every host candidate of the peer (the addresses of its
// own interfaces: LAN, public, IPv6) at once over the node's socket; the
// first QUIC session that proves the peer's key wins and the other attempts
// are cancelled. Reflexive addresses are left to holepunch, whose checks
// open the NAT on both sides first (a reflexive address that works without
// that, as behind a full-cone NAT, is found by holepunch just as fast), and
// mapped ones to the port-mapping strategy: so the strategy that wins says
// truthfully what made the path.
type Strategy struct{}

// Name implements strategy.Strategy.
func (Strategy) Name() string { return Name }

// Targets returns the addresses Connect dials, in the order given.
func Targets(remote rendezvous.PeerInfo) []netip.AddrPort {
	return remote.Addrs(rendezvous.Host)
}

// Connect implements strategy.Strategy.
func (Strategy) Connect(ctx context.Context, a *strategy.Attempt) (*stream.Session, error) {
	targets := Targets(a.Remote)
	if len(targets) == 0 {
		return nil, ErrNoAddress
	}
	return DialFirst(ctx, a, targets)
}

// DialFirst dials every target at once and returns the first session;
// the rest are cancelled, and any that completes anyway is closed. If all
// fail it returns every error joined.
func DialFirst(ctx context.Context, a *strategy.Attempt, targets []netip.AddrPort) (*stream.Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   *stream.Session
		err error
	}
	results := make(chan result, len(targets))
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := stream.Dial(ctx, a.Socket.Transport(), t, a.Key, a.Peer, a.Session)
			if err != nil {
				err = fmt.Errorf("%s: %w", t, err)
			}
			results <- result{s, err}
		}()
	}
	var winner *stream.Session
	var errs []error
	for range targets {
		r := <-results
		switch {
		case r.err != nil:
			errs = append(errs, r.err)
		case winner == nil:
			winner = r.s
			cancel()
		default:
			r.s.CloseWithError(0, "lost the race")
		}
	}
	wg.Wait()
	if winner != nil {
		return winner, nil
	}
	if ctx.Err() != nil && len(errs) > 0 {
		return nil, errors.Join(append([]error{ctx.Err()}, errs...)...)
	}
	return nil, errors.Join(errs...)
}
