package directtcp

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// Connection reversal. When the listening side of an introduction cannot
// be reached over TCP but the dialler can (a public dialler, a peer
// behind a firewall that drops UDP and lets TCP out), the listener
// connects to the dialler's TCP listener itself: the dialler's rung
// expects that (Expect, from before the introduction is sent) and its
// Connect takes the session as this dial's. The listener reverses only
// when UDP looks blocked on either side, so that where UDP works the QUIC
// rungs keep the pair (a reversed session would often win the race).

// Defaults of the reversal's bounds.
const (
	// DefaultMaxReversals is how many reversals (connections back to
	// introduced diallers) run at once; more introductions get none.
	DefaultMaxReversals = 8
	// MaxReverseAddrs is how many of a dialler's TCP addresses one
	// reversal tries.
	MaxReverseAddrs = 4
	// ReverseTimeout bounds one reversal: the dialler races its other
	// rungs meanwhile and closes what comes later.
	ReverseTimeout = 5 * time.Second
)

// expectation is a dial in progress to one peer; sessions that peer opens
// meanwhile wait in ch for Connect.
type expectation struct {
	n  int
	ch chan *stream.Session
}

// Expect implements rung.Expecter.
func (r *Rung) Expect(peer identity.PeerID) func() {
	r.mu.Lock()
	e := r.expect[peer]
	if e == nil {
		e = &expectation{ch: make(chan *stream.Session, 2)}
		r.expect[peer] = e
	}
	e.n++
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			e.n--
			last := e.n == 0
			if last {
				delete(r.expect, peer)
			}
			r.mu.Unlock()
			if !last {
				return
			}
			for {
				select {
				case s := <-e.ch:
					r.h.Logger.Debug("direct-tcp: closing a reversed session the dial did not take", "peer", peer.Short())
					s.Abort()
				default:
					return
				}
			}
		})
	}
}

// inbound returns the channel of sessions peer opens while a dial to it
// runs (nil when none runs).
func (r *Rung) inbound(peer identity.PeerID) <-chan *stream.Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.expect[peer]; e != nil {
		return e.ch
	}
	return nil
}

// deliver takes a session the listener accepted: a dial to its peer in
// progress gets it; otherwise the node does.
func (r *Rung) deliver(sess *stream.Session) bool {
	r.mu.Lock()
	e := r.expect[sess.RemotePeer()]
	if e != nil {
		select {
		case e.ch <- sess:
			r.mu.Unlock()
			return true
		default:
			r.mu.Unlock()
			return false // one is waiting already
		}
	}
	r.mu.Unlock()
	return r.h.Accepted(sess)
}

// UDPBlocked reports whether this node or the peer (whose offer or answer
// is p) looks unable to use UDP (holepunch-tcp runs only then).
func (r *Rung) UDPBlocked(p candidate.PeerInfo) bool { return r.udpBlocked(p) }

// udpBlocked reports whether this node or the peer (whose offer or
// answer is p) looks unable to use UDP: a node registered over TCP has no
// observed address, and the server adds no reflexive candidate for it.
func (r *Rung) udpBlocked(p candidate.PeerInfo) bool {
	return !p.HasUDP() || r.h.Observed != nil && !r.h.Observed().IsValid()
}

// expectsReversal reports whether the peer of a may connect back to this
// node: this node has a TCP listener (the rendezvous client adds its
// addresses to the offer), UDP looks blocked, and the dial expects it.
func (r *Rung) expectsReversal(a *rung.Attempt) bool {
	return r.Listener() != nil && r.udpBlocked(a.Remote) && r.inbound(a.Peer) != nil
}

// Introduced implements rung.Rung: the listening side connects back to a
// dialler whose TCP listener looks reachable when UDP looks blocked.
func (r *Rung) Introduced(offer candidate.PeerInfo) {
	if offer.Move || !r.udpBlocked(offer) || r.Listener() == nil {
		return
	}
	var local []netip.Prefix
	if r.h.InterfaceAddrs != nil {
		addrs, _ := r.h.InterfaceAddrs()
		local = candidate.Prefixes(addrs)
	}
	targets := append(offer.PlausibleAddrs(candidate.TCPMapped, local, MaxReverseAddrs),
		offer.PlausibleAddrs(candidate.TCPHost, local, MaxReverseAddrs)...)
	targets = targets[:min(len(targets), MaxReverseAddrs)]
	if len(targets) == 0 {
		return
	}
	r.mu.Lock()
	if r.reversals >= r.maxReversals() {
		r.mu.Unlock()
		r.h.Logger.Debug("direct-tcp: no reversal, too many at once", "peer", offer.Peer.Short())
		return
	}
	r.reversals++
	r.mu.Unlock()
	r.h.Go(func() {
		defer func() {
			r.mu.Lock()
			r.reversals--
			r.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(r.h.Context, ReverseTimeout)
		defer cancel()
		a := &rung.Attempt{Key: r.h.Key, Peer: offer.Peer, Session: r.h.Session, Logger: r.h.Logger}
		sess, err := DialFirst(ctx, a, r.dialer(), targets)
		if err != nil {
			r.h.Logger.Debug("direct-tcp: reversal failed", "peer", offer.Peer.Short(), "err", err)
			return
		}
		sess.SetStrategy(Name)
		r.h.Logger.Debug("direct-tcp: reversed", "peer", offer.Peer.Short(), "path", sess.RemoteAddr())
		if !r.h.Accepted(sess) {
			sess.Abort()
		}
	})
}

func (r *Rung) maxReversals() int {
	if r.lim.MaxReversals > 0 {
		return r.lim.MaxReversals
	}
	return DefaultMaxReversals
}
