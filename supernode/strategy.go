package supernode

import (
	"context"
	"errors"
	"fmt"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/strategy"
	"github.com/reachp2p/reach/stream"
)

// Candidates returns the Supernode candidates of info, in the server's
// order (best first).
func Candidates(info rendezvous.PeerInfo) []rendezvous.Candidate {
	var out []rendezvous.Candidate
	for _, c := range info.Candidates {
		if c.Kind == rendezvous.Supernode && !c.Peer.IsZero() && c.Addr.IsValid() {
			out = append(out, c)
		}
	}
	return out
}

// Strategy is the supernode rung: it links to the volunteers the server
// offered (the peer links to them when the introduction reaches it), in
// order, and dials QUIC end to end to the peer through the first one that
// works, with the relay rung's own code. A volunteer at its limit, gone, or
// refusing moves it on to the next at once.
type Strategy struct {
	// Pool returns the node's pool of links to volunteers.
	Pool func() *Pool
}

// Name implements strategy.Strategy.
func (*Strategy) Name() string { return Name }

// Connect implements strategy.Strategy. Errors: ErrNoVolunteer, or each
// volunteer's joined (ErrVolunteerFull, ErrVolunteerGone, the relay's
// link errors, the handshake's).
func (s *Strategy) Connect(ctx context.Context, a *strategy.Attempt) (*stream.Session, error) {
	cands := Candidates(a.Remote)
	var p *Pool
	if s.Pool != nil {
		p = s.Pool()
	}
	if len(cands) == 0 || p == nil {
		return nil, ErrNoVolunteer
	}
	var errs []error
	for _, c := range cands {
		sess, err := p.dial(ctx, c, a)
		if err == nil {
			return sess, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// dial connects to a.Peer through the volunteer of c.
func (p *Pool) dial(ctx context.Context, c rendezvous.Candidate, a *strategy.Attempt) (*stream.Session, error) {
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
