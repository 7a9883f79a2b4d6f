package relay

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
)

// NewPathClient makes a relay client whose packets from peers go to the
// node's socket paths as coming from each peer's virtual address
// (internal/pathsock), so that sessions through the relay run on the node's
// one QUIC transport and can move to another path without breaking. A peer
// without a virtual address gets one only for a QUIC Initial (the start of
// a session); the client's path becomes its forwarded path when it has
// none. pathFor makes that path; nil: Client.Path. Data packets on a UDP
// link go to quic-go in place, without a copy. cfg.Deliver is replaced.
func NewPathClient(paths *pathsock.Conn, pathFor func(*Client, identity.PeerID) pathsock.Path, cfg ClientConfig) (*Client, error) {
	pd := &pathDelivery{paths: paths, pathFor: pathFor}
	cfg.Deliver = pd.deliver
	c, err := NewClient(cfg)
	if err != nil {
		return nil, err
	}
	pd.c = c
	c.route = pd.route
	return c, nil
}

// pathDelivery hands a client's packets to a pathsock.Conn.
type pathDelivery struct {
	paths   *pathsock.Conn
	c       *Client
	pathFor func(*Client, identity.PeerID) pathsock.Path

	names  sync.Map // identity.PeerID → its String, for route
	nNames atomic.Int32
}

// maxNames bounds the peer names route keeps (it starts over beyond).
const maxNames = 4096

// route returns the virtual address that a relayed packet from a peer can
// be handed to quic-go as, in place, when the peer has one and a forwarded
// path; otherwise deliver does the rest.
func (pd *pathDelivery) route(from identity.PeerID, _ []byte) (netip.AddrPort, bool) {
	key, ok := pd.paths.Lookup(pd.name(from))
	if !ok {
		return netip.AddrPort{}, false
	}
	if direct, fwd, err := pd.paths.Current(key); err != nil || direct.IsValid() || fwd == nil || pathsock.IsHandshakeOnly(fwd) {
		return netip.AddrPort{}, false
	}
	return key, true
}

// name returns peer's String, remembered (a packet's peer is looked up by
// name, and encoding it is most of the cost).
func (pd *pathDelivery) name(peer identity.PeerID) string {
	name, ok := pd.names.Load(peer)
	if !ok {
		if pd.nNames.Add(1) > maxNames {
			pd.names.Clear()
			pd.nNames.Store(1)
		}
		name, _ = pd.names.LoadOrStore(peer, peer.String())
	}
	return name.(string)
}

// deliver hands a relayed packet to the node's socket as coming from the
// peer's virtual address.
func (pd *pathDelivery) deliver(from identity.PeerID, pkt []byte) {
	err := pd.paths.Deliver(pd.name(from), pkt, func() pathsock.Path {
		if pd.pathFor != nil {
			return pd.pathFor(pd.c, from)
		}
		return pd.c.Path(from)
	})
	if err != nil && !errors.Is(err, pathsock.ErrUnknownPeer) {
		pd.c.log.Debug("relay: no virtual address for a peer", "peer", from.Short(), "err", err)
	}
}
