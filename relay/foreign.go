package relay

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/rendezvous"
)

// Relays of other servers (a fleet, docs/architecture.md "Fleet"). A
// dialler registered with another server of the fleet names that
// server's relay in its offer and sends through it; the listening node
// links there too, with a client of its own for that relay, allows the
// dialler on it and answers through it. Its own relay link is untouched.

// Limits: a dialler chooses the relay its offer names, so what it can
// make a node hold is bounded.
const (
	// maxForeignRelays is how many other servers' relays a node keeps
	// links to at once. Beyond, the least recently used goes if it was
	// not used for foreignKeep; else the new one is not linked (the
	// dialler's relayed path fails; other rungs are unaffected).
	maxForeignRelays = 4
	foreignKeep      = time.Minute
	// maxForeignPeers bounds the peers remembered as reached through a
	// foreign relay (for ForwardPath); beyond, the map starts over.
	maxForeignPeers = 4096
)

// foreignRelay is a node's link to another server's relay.
type foreignRelay struct {
	sa     rendezvous.ServerAddr
	client *Client
	used   time.Time // the last introduction that named it; r.fmu
}

// relayOf returns the relay of another server that the offer names: a
// Relay candidate with a key, which only a server writes (it drops the
// keys of the Relay candidates a client writes), in an offer it hands to
// a server of its fleet. Without one, the dialler relays through the
// listener's own server.
func relayOf(offer candidate.PeerInfo) (rendezvous.ServerAddr, bool) {
	for _, c := range offer.Candidates {
		if c.Kind == candidate.Relay && !c.Peer.IsZero() && c.Addr.IsValid() {
			return rendezvous.ServerAddr{ID: c.Peer, Host: c.Addr.Addr().Unmap().String(), Port: c.Addr.Port(), TCPPort: c.TCPPort}, true
		}
	}
	return rendezvous.ServerAddr{}, false
}

// isOwn reports whether the relay at sa is the node's own server's: the
// same key at one of the addresses its host resolves to. (Servers of a
// fleet may share a key; their addresses tell them apart.)
func (r *Rung) isOwn(ctx context.Context, sa rendezvous.ServerAddr) bool {
	own := r.h.Server()
	if own.ID != sa.ID || own.Port != sa.Port {
		return false
	}
	ip, err := netip.ParseAddr(sa.Host)
	if err != nil {
		return false
	}
	if oip, err := netip.ParseAddr(own.Host); err == nil {
		return oip.Unmap() == ip
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", own.Host)
	if err != nil {
		return true // cannot tell: linking to our own relay twice would replace our link
	}
	return slices.ContainsFunc(ips, func(a netip.Addr) bool { return a.Unmap() == ip })
}

// foreignClient returns the node's client for the relay at sa, made if
// needed within maxForeignRelays; nil when the node holds as many links
// to other relays, each used within foreignKeep.
func (r *Rung) foreignClient(sa rendezvous.ServerAddr) *Client {
	now := time.Now()
	r.fmu.Lock()
	defer r.fmu.Unlock()
	if r.closed {
		return nil
	}
	if r.foreign == nil {
		r.foreign = map[rendezvous.ServerAddr]*foreignRelay{}
	}
	if f := r.foreign[sa]; f != nil {
		f.used = now
		return f.client
	}
	if len(r.foreign) >= maxForeignRelays {
		var oldest *foreignRelay
		for _, f := range r.foreign {
			if now.Sub(f.used) >= foreignKeep && r.carries(f) {
				f.used = now // a session still runs through it
			}
			if oldest == nil || f.used.Before(oldest.used) {
				oldest = f
			}
		}
		if now.Sub(oldest.used) < foreignKeep {
			return nil
		}
		r.dropLocked(oldest)
		go oldest.client.Close()
	}
	newClient := r.newClient
	if r.newForeign != nil {
		newClient = r.newForeign
	}
	c, err := newClient()
	if err != nil {
		return nil
	}
	r.foreign[sa] = &foreignRelay{sa: sa, client: c, used: now}
	return c
}

// carries reports whether a peer introduced through f has f's path as
// its current forwarded path (a relayed session may run on it). r.fmu is
// held.
func (r *Rung) carries(f *foreignRelay) bool {
	if r.h.Socket == nil {
		return false
	}
	paths := r.h.Socket.Paths()
	for p, g := range r.via {
		if g != f {
			continue
		}
		key, ok := paths.Lookup(p.String())
		if !ok {
			continue
		}
		if direct, fwd, err := paths.Current(key); err == nil && !direct.IsValid() {
			if pp, ok := fwd.(*PeerPath); ok && pp.c == f.client {
				return true
			}
		}
	}
	return false
}

// introducedForeign links the listening node to the relay at sa (another
// server's) for the dialler peer and allows it there. As on the node's
// own relay, the dialler's first packet through it makes it the peer's
// forwarded path unless another rung's (a supernode's) came first.
func (r *Rung) introducedForeign(ctx context.Context, sa rendezvous.ServerAddr, peer identity.PeerID) {
	c := r.foreignClient(sa)
	if c == nil {
		r.h.Logger.Warn("relay: not linking to another server's relay: links to too many", "relay", sa.String(), "peer", peer.Short())
		return
	}
	c.Allow(peer)
	r.remember(peer, sa)
	if _, err := c.Connect(ctx, sa); err != nil && r.h.Context.Err() == nil {
		r.forget(sa, c)
		r.h.Logger.Warn("relay: cannot link to the relay of an introduced peer's server", "relay", sa.String(), "peer", peer.Short(), "err", err)
	}
}

// remember records that peer was introduced through the relay at sa,
// within maxForeignPeers.
func (r *Rung) remember(peer identity.PeerID, sa rendezvous.ServerAddr) {
	r.fmu.Lock()
	defer r.fmu.Unlock()
	f := r.foreign[sa]
	if f == nil {
		return
	}
	if r.via == nil || len(r.via) >= maxForeignPeers {
		r.via = map[identity.PeerID]*foreignRelay{}
	}
	r.via[peer] = f
}

// viaForeign returns the client of the other server's relay that peer
// was last introduced through, or nil.
func (r *Rung) viaForeign(peer identity.PeerID) (*Client, rendezvous.ServerAddr) {
	r.fmu.Lock()
	defer r.fmu.Unlock()
	f := r.via[peer]
	if f == nil || r.foreign[f.sa] != f {
		return nil, rendezvous.ServerAddr{}
	}
	f.used = time.Now()
	return f.client, f.sa
}

// forget closes and drops the client c of the relay at sa (it could not
// link), so that it holds no slot.
func (r *Rung) forget(sa rendezvous.ServerAddr, c *Client) {
	r.fmu.Lock()
	f := r.foreign[sa]
	if f == nil || f.client != c {
		r.fmu.Unlock()
		return
	}
	r.dropLocked(f)
	r.fmu.Unlock()
	c.Close()
}

// dropLocked forgets f and the peers introduced through it (r.fmu is
// held); the caller closes its client.
func (r *Rung) dropLocked(f *foreignRelay) {
	delete(r.foreign, f.sa)
	for p, g := range r.via {
		if g == f {
			delete(r.via, p)
		}
	}
}

// pruneOwn drops the clients of other relays that have become the
// node's own server's (it failed over there): two links with one key
// would replace each other at that relay, and a replaced link stays down.
func (r *Rung) pruneOwn(ctx context.Context) {
	r.fmu.Lock()
	fs := make([]*foreignRelay, 0, len(r.foreign))
	for _, f := range r.foreign {
		fs = append(fs, f)
	}
	r.fmu.Unlock()
	for _, f := range fs {
		if r.isOwn(ctx, f.sa) {
			r.forget(f.sa, f.client)
		}
	}
}

// closeForeign closes the links to other servers' relays; none are made
// afterwards.
func (r *Rung) closeForeign() {
	r.fmu.Lock()
	fs := r.foreign
	r.foreign, r.via, r.closed = nil, nil, true
	r.fmu.Unlock()
	for _, f := range fs {
		f.client.Close()
	}
}
