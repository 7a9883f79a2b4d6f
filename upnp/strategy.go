package upnp

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/reachp2p/reach/direct"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/strategy"
	"github.com/reachp2p/reach/stream"
)

// Name is the strategy's name in the ladder.
const Name = "upnp"

// HeadStart is the least head start the ladder gives this strategy when
// the peer advertised a mapped address. Hole punching would find the
// mapped address too (it checks every candidate), but a strategy that
// dials at once needs one round trip less; the head start keeps a slow
// handshake (a busy CPU) from letting holepunch take the credit. A peer
// without a mapped address costs nothing: Connect fails at once and the
// race starts the next rung.
const HeadStart = 200 * time.Millisecond

// ErrNoMapping: the peer advertised no mapped address.
var ErrNoMapping = errors.New("upnp: peer has no mapped address")

// Strategy dials QUIC to the peer's mapped candidates (addresses its
// gateway forwards to it), over the node's socket.
type Strategy struct{}

// Name implements strategy.Strategy.
func (Strategy) Name() string { return Name }

// Targets returns the peer's mapped addresses, in the order given.
func Targets(remote rendezvous.PeerInfo) []netip.AddrPort {
	return remote.Addrs(rendezvous.Mapped)
}

// Connect implements strategy.Strategy.
func (Strategy) Connect(ctx context.Context, a *strategy.Attempt) (*stream.Session, error) {
	targets := Targets(a.Remote)
	if len(targets) == 0 {
		return nil, ErrNoMapping
	}
	return direct.DialFirst(ctx, a, targets)
}
