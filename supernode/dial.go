package supernode

import (
	"context"
	"errors"
	"fmt"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// dial connects to a.Peer through the volunteer of c.
func (p *Pool) dial(ctx context.Context, c rendezvous.Candidate, a *rung.Attempt) (*stream.Session, error) {
	vl, err := p.link(ctx, c)
	if err != nil {
		return nil, err
	}
	rs := &relay.Strategy{
		Client:    func() *relay.Client { return vl.client },
		Transport: func() *quic.Transport { return vl.tr },
		Server:    func() rendezvous.ServerAddr { return vl.addr },
	}
	sess, err := rs.Connect(ctx, a)
	if err != nil {
		if errors.Is(err, relay.ErrRelayFull) {
			err = fmt.Errorf("%w: %w", ErrVolunteerFull, err)
		}
		return nil, fmt.Errorf("supernode %s: %w", c.Peer.Short(), err)
	}
	vl.add(sess)
	return sess, nil
}
