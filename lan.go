package reach

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/mdns"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// Peers on one LAN without a server (Config.LAN): the node answers
// multicast DNS questions for its own peer ID with its UDP port and host
// addresses; a dial resolves the peer's ID the same way and races the
// direct rung on the answer, as if a server had introduced them.

// ErrNotOnLAN: a node without servers (Config.LAN) found no answer for
// the peer on its local networks before the dial's ctx ended.
var ErrNotOnLAN = mdns.ErrNotFound

// startLAN starts answering for the node on the local link.
func (n *Node) startLAN() error {
	r, err := mdns.Listen(n.key.ID(), n.sock.LocalAddr().Port(), n.hostAddrs, n.log)
	if err != nil {
		return fmt.Errorf("reach: LAN announcements: %w", err)
	}
	n.lan = r
	return nil
}

// hostAddrs are the addresses of the node's host candidates.
func (n *Node) hostAddrs() []netip.Addr {
	var out []netip.Addr
	for _, c := range n.candidates() {
		if c.Kind == candidate.Host {
			out = append(out, c.Addr.Addr())
		}
	}
	return out
}

// dialLAN finds peer on the local link and dials it directly.
func (n *Node) dialLAN(ctx context.Context, peer identity.PeerID) (*stream.Session, error) {
	var direct []rung.Entry
	for _, e := range n.ladder.Dial {
		if e.Rung.Name() == StrategyDirect {
			direct = append(direct, e)
		}
	}
	if len(direct) == 0 {
		return nil, fmt.Errorf("reach: dial %s on the local network: %w (Config.Strategies leaves out %s)", peer.Short(), ErrNoServers, StrategyDirect)
	}
	addrs, err := mdns.Resolve(ctx, peer)
	if err != nil {
		return nil, fmt.Errorf("reach: dial %s: %w", peer.Short(), err)
	}
	n.log.Debug("found on the local network", "peer", peer.Short(), "addrs", addrs)
	remote := candidate.PeerInfo{Peer: peer}
	for _, a := range addrs {
		remote.Candidates = append(remote.Candidates, candidate.Candidate{Addr: a, Kind: candidate.Host})
	}
	a := &rung.Attempt{
		Key: n.key, Peer: peer, Socket: n.sock,
		Local:   candidate.PeerInfo{Peer: n.ID(), Candidates: n.candidates()},
		Remote:  remote,
		Session: n.cfg.Session, Logger: n.log,
		Result: n.counts.attempt,
	}
	sess, _, err := rung.Race(ctx, a, rung.Plan(a, direct, 0))
	if err != nil {
		return nil, fmt.Errorf("reach: dial %s on the local network: %w", peer.Short(), err)
	}
	return sess, nil
}
