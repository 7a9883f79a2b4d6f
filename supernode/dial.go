package supernode

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// dial connects to a.Peer through the volunteer of c.
func (p *Pool) dial(ctx context.Context, c rendezvous.Candidate, a *rung.Attempt) (*stream.Session, error) {
	vl, err := p.link(ctx, c, identity.PeerID{})
	if err != nil {
		return nil, err
	}
	rs := &relay.Strategy{
		Client:    func() *relay.Client { return vl.client },
		Transport: func() *quic.Transport { return vl.tr },
		Server:    func() rendezvous.ServerAddr { return vl.addr },
	}
	if paths := p.paths; paths != nil {
		// On the node's own transport, at the peer's virtual address
		// with the volunteer as its path.
		rs.Transport = func() *quic.Transport { return p.cfg.Socket }
		rs.Addr = func(peer identity.PeerID) (net.Addr, error) {
			key, err := paths.Key(peer.String())
			if err != nil {
				return nil, fmt.Errorf("supernode: %w", err)
			}
			if err := paths.SetFallback(key, vl.path(peer)); err != nil {
				return nil, fmt.Errorf("supernode: %w", err)
			}
			return net.UDPAddrFromAddrPort(key), nil
		}
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

// won puts sess's volunteer back as its peer's forwarded path (see
// Rung.Won): the volunteer link that carried sess, found among the
// pool's links.
func (p *Pool) won(a *rung.Attempt, sess *stream.Session) {
	paths := p.paths
	if paths == nil || sess.QUIC() == nil {
		return // sessions on a transport per link: no path of the socket
	}
	key := sess.QUICAddr()
	if direct, _, err := paths.Current(key); err != nil || direct.IsValid() {
		return
	}
	p.mu.Lock()
	var via *vlink
	for _, vl := range p.links {
		vl.mu.Lock()
		_, ok := vl.sessions[sess]
		vl.mu.Unlock()
		if ok {
			via = vl
			break
		}
	}
	p.mu.Unlock()
	if via != nil {
		paths.SetFallback(key, via.path(a.Peer))
	}
}
