package reach

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/holepunch"
	"github.com/reachp2p/reach/internal/ladder"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// DialSession returns a session to peer: an open one if the node has one,
// else a new one from the race of the ladder's rungs. The session's
// Strategy() names the rung that carries it. ctx bounds the setup only.
func (n *Node) DialSession(ctx context.Context, peer PeerID) (*Session, error) {
	if peer == n.ID() {
		return nil, ErrSelfDial
	}
	if s := n.liveSession(peer); s != nil {
		return s, nil
	}
	if n.client == nil && n.lan == nil {
		return nil, ErrNoServers
	}
	select {
	case <-n.closing:
		return nil, ErrClosed
	default:
	}
	start := time.Now()
	var sess *stream.Session
	var answer candidate.PeerInfo
	var err error
	if n.client == nil {
		sess, err = n.dialLAN(ctx, peer)
	} else {
		sess, answer, err = n.introduceAndRace(ctx, peer, n.ladder.Dial, introDial)
	}
	if err != nil {
		return nil, err
	}
	n.log.Debug("session up", "peer", peer.Short(), "strategy", sess.Strategy(), "path", sess.RemoteAddr(), "elapsed", time.Since(start))
	if !n.accepted(sess) {
		sess.CloseWithError(0, "node closed")
		return nil, ErrClosed
	}
	if ladder.Forwards(sess.Strategy()) {
		n.forwarded(sess, answer.Upgrades)
	}
	return sess, nil
}

// introduceAndRace asks the server to introduce the node to peer and races
// entries on the answer: each rung of entries prepares the offer, then
// the per-dial policy (rung.Plan) adapts the ladder to the answer.
// It also returns the peer's answer.
func (n *Node) introduceAndRace(ctx context.Context, peer identity.PeerID, entries []rung.Entry, kind introKind) (*stream.Session, candidate.PeerInfo, error) {
	a, intro, release, err := n.introduce(ctx, peer, entries, kind)
	if err != nil {
		return nil, candidate.PeerInfo{}, err
	}
	defer release()
	udp := a.Remote.HasUDP() && n.Observed().IsValid()
	delay := rung.ForwardDelay(n.cfg.RelayDelay, intro, udp)
	if p := rung.Patience(a, entries, intro); p > delay && udp && n.cfg.RelayDelay <= 0 {
		// A rung needs longer on this dial (holepunch's birthday mode:
		// its probes take 700 ms): a relay that joins sooner would win
		// while a direct path is still likely.
		n.log.Debug("forwarding rungs wait longer", "peer", peer.Short(), "delay", delay, "patience", p)
		delay = p
	}
	if n.forwardAtOnce(a) {
		n.log.Debug("both NATs map per destination: forwarding at once", "peer", peer.Short())
		delay = 0
	}
	sess, _, err := rung.Race(ctx, a, rung.Plan(a, entries, delay))
	if err != nil {
		return nil, a.Remote, fmt.Errorf("reach: dial %s: %w", peer.Short(), err)
	}
	return sess, a.Remote, nil
}

// introduce asks the server to introduce the node to peer, each rung of
// entries preparing the offer, and returns the attempt (offer and answer),
// how long the introduction took and what to call when the attempt is
// over (the rungs' releases). A dial (introDial) may fly first:
// holepunch starts its QUIC dial at once, its first flight going with the
// introduction (holepunch.Rung.DialEarly).
func (n *Node) introduce(ctx context.Context, peer identity.PeerID, entries []rung.Entry, kind introKind) (*rung.Attempt, time.Duration, func(), error) {
	var b [8]byte
	rand.Read(b[:])
	offer := candidate.PeerInfo{Attempt: binary.BigEndian.Uint64(b[:]) | 1, Move: kind == introMove, Upgrade: kind == introUpgrade}
	var releases []func()
	release := func() {
		for _, r := range releases {
			r()
		}
	}
	for _, e := range entries {
		if r := e.Rung.Offer(ctx, &offer); r != nil {
			releases = append(releases, r)
		}
		if x, ok := e.Rung.(rung.Expecter); ok && kind != introMove {
			releases = append(releases, x.Expect(peer))
		}
	}
	var fl *rendezvous.Flight
	hp := holepunchOf(entries)
	early := kind == introDial
	if early {
		n.freshPeer(peer) // what is left of the sessions this node had with peer
	}
	if early && hp != nil {
		n.awaitMapping(ctx) // a node that just started
	}
	if early && hp != nil && !n.mayFlyFirst(offer) {
		n.log.Debug("first flight: not this dial", "peer", peer.Short(), "mapping", n.Mapping(),
			"relay_offered", len(offer.Addrs(candidate.Relay)) > 0, "relay_usable", n.relayUsable())
	}
	if early && hp != nil && n.mayFlyFirst(offer) {
		fl = rendezvous.NewFlight()
		if r := hp.DialEarly(ctx, offer.Attempt, n.key, peer, n.cfg.Session, fl); r != nil {
			releases = append(releases, r)
		} else {
			n.log.Debug("first flight: not this dial: the peer has an address on the socket already", "peer", peer.Short())
			fl.Close()
			fl = nil
		}
	}
	// What the node knows of its mapping now (a node that just started
	// waited for it above); a sequential NAT's newest port, for the
	// peer's prediction.
	n.refreshAllocation(ctx)
	offer.Mapping, offer.Ports = n.Mapping(), n.ports()
	introStart := time.Now()
	answer, err := n.client.ConnectFlight(ctx, peer, offer, fl)
	var ce *rendezvous.ConnectError
	reregistered := errors.As(err, &ce) && ce.Reason == rendezvous.ReasonReregistered
	// Our own registration moved to a newer connection (TCP to QUIC)
	// while the offer was on the old one: we are still registered.
	ownUpgrade := errors.Is(err, rendezvous.ErrReplaced) && !n.client.Current().IsZero()
	if reregistered || ownUpgrade {
		// The peer, or this node, moved to a new connection to the
		// server while the offer was on its way: ask again, once.
		introStart = time.Now()
		answer, err = n.client.ConnectFlight(ctx, peer, offer, fl)
	}
	if err != nil {
		release()
		return nil, 0, nil, fmt.Errorf("reach: introduction to %s: %w", peer.Short(), err)
	}
	if fl != nil {
		hp.Answered(offer.Attempt, answer)
	}
	intro := time.Since(introStart)
	offer.Peer = n.ID()
	a := &rung.Attempt{
		Key: n.key, Peer: peer, Socket: n.sock,
		Local: offer, Remote: answer,
		Session: n.cfg.Session, Logger: n.log,
		Result: n.counts.attempt,
	}
	return a, intro, release, nil
}

// introKind says what an introduction is for.
type introKind int

const (
	introDial    introKind = iota // a new session
	introMove                     // a new path for the sessions the node has with the peer
	introUpgrade                  // a better session beside a forwarded one that stays (upgradeLoop)
)

// mayFlyFirst reports whether a dial with offer may start its handshake
// with the introduction (a first flight): such a session wins before a
// packet proved its direct path, so it needs a fallback that keeps it when
// that path never works: the node's NAT keeps one mapping for every
// destination (a punch from the reflexive address the server saw is then
// likely to work) and the offer names a relay that runs (the session
// moves there when the direct path stays silent; see firstflight.go).
func (n *Node) mayFlyFirst(offer candidate.PeerInfo) bool {
	return n.Mapping() == candidate.MappingIndependent && len(offer.Addrs(candidate.Relay)) > 0 && n.relayUsable()
}

// relayUsable reports whether the node has a hosted relay to fall back
// to: its relay rung runs, and the server it is registered with says it
// serves the relay (REGISTERED's protocols).
func (n *Node) relayUsable() bool {
	if n.client == nil || !n.client.ServerOffers(relay.ALPN) {
		return false
	}
	for _, r := range n.ladder.All {
		if rr, ok := r.(*relay.Rung); ok {
			return rr.Usable()
		}
	}
	return false
}

// relayLinkCarries says what the node's link to the relay offer comes
// through carries, or will carry once it links (candidate.PeerInfo.RelayLink;
// relay.Rung.LinkCarries), "" without a relay rung or when that is not
// known.
func (n *Node) relayLinkCarries(offer candidate.PeerInfo) string {
	for _, r := range n.ladder.All {
		if rr, ok := r.(*relay.Rung); ok {
			return rr.LinkCarries(offer, n.Observed().IsValid())
		}
	}
	return ""
}

// holepunchOf returns the holepunch rung of entries, if any.
func holepunchOf(entries []rung.Entry) *holepunch.Rung {
	for _, e := range entries {
		if r, ok := e.Rung.(*holepunch.Rung); ok {
			return r
		}
	}
	return nil
}

// liveSession returns an open session to peer, if any; a forwarded one
// only if there is no other.
func (n *Node) liveSession(peer identity.PeerID) *stream.Session {
	n.mu.Lock()
	defer n.mu.Unlock()
	var forwarded *stream.Session
	for _, s := range n.sessions[peer] {
		if s.Context().Err() == nil {
			if !ladder.Forwards(s.Strategy()) {
				return s
			}
			if forwarded == nil {
				forwarded = s
			}
		}
	}
	return forwarded
}

// Sessions returns the node's open sessions.
func (n *Node) Sessions() []*Session {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*stream.Session
	for _, ss := range n.sessions {
		for _, s := range ss {
			if s.Context().Err() == nil {
				out = append(out, s)
			}
		}
	}
	return out
}

// accepted takes a new session, dialled or accepted on any rung: the node
// tracks it until it ends and queues the streams the peer opens on it
// for Accept. It reports false if the node closed (the caller closes the
// session).
func (n *Node) accepted(sess *stream.Session) bool {
	peer := sess.RemotePeer()
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return false
	}
	n.sessions[peer] = append(n.sessions[peer], sess)
	n.mu.Unlock()
	n.counts.session(sess.Strategy())
	n.claimKey(sess)
	if n.movable(sess) {
		sess.SetPathResolver(n.resolvePath)
		n.goRun(func() { n.afterFlight(sess) })
	} else {
		n.adopt(sess)
	}
	n.goRun(func() {
		select {
		case <-sess.Done():
		case <-n.ctx.Done():
		}
		n.mu.Lock()
		ss := n.sessions[peer]
		for i, s := range ss {
			if s == sess {
				ss = append(ss[:i], ss[i+1:]...)
				break
			}
		}
		if len(ss) == 0 {
			delete(n.sessions, peer)
		} else {
			n.sessions[peer] = ss
		}
		n.mu.Unlock()
	})
	n.goRun(func() { n.acceptStreams(sess) })
	return true
}

// acceptSessions takes QUIC sessions other peers open to this node's own
// socket.
func (n *Node) acceptSessions() {
	for {
		sess, err := n.ln.Accept(n.ctx)
		if err != nil {
			if n.ctx.Err() == nil {
				n.log.Debug("accepting sessions stopped", "err", err)
			}
			return
		}
		if pathsock.IsVirtual(sess.QUICAddr().Addr()) {
			// It came through a forwarded path (a relayed packet is what
			// gives a peer a virtual address).
			if direct, fwd, err := n.sock.Paths().Current(sess.QUICAddr()); err == nil && !direct.IsValid() && fwd != nil {
				sess.SetStrategy(pathName(fwd))
				if a, ok := fwd.(interface{ Accepted(*stream.Session) }); ok {
					a.Accepted(sess) // a volunteer's path tracks its sessions
				}
			}
		}
		n.log.Debug("session accepted", "peer", sess.RemotePeer().Short(), "strategy", sess.Strategy(), "path", sess.RemoteAddr())
		if !n.accepted(sess) {
			sess.CloseWithError(0, "node closed")
			return
		}
	}
}

// acceptStreams queues the streams the peer opens on sess for Accept.
func (n *Node) acceptStreams(sess *stream.Session) {
	for {
		st, err := sess.AcceptStream(n.ctx)
		if err != nil {
			return
		}
		select {
		case n.accept <- st:
		default:
			// Refused with a code, not closed: a Close would let a
			// peer that wrote and half-closed read a clean EOF, its
			// data dropped unread.
			n.log.Warn("accept queue full; refusing stream", "peer", sess.RemotePeer().Short())
			st.CloseWithError(stream.CodeRefused)
		}
	}
}

// serveIntroductions answers other peers' introductions: it refuses those
// Config.Accept turns down, sends this node's candidates back for the
// others and lets every rung do its listening side.
func (n *Node) serveIntroductions() {
	for {
		select {
		case in, ok := <-n.client.Incoming():
			if !ok { // the client closed (Close closes it after n.ctx)
				return
			}
			offer := in.Offer
			if n.cfg.Accept != nil && !n.cfg.Accept(offer.Peer) {
				n.log.Debug("introduction refused", "peer", offer.Peer.Short())
				in.Flight().Close()
				if err := in.Reject("not accepted"); err != nil {
					n.log.Debug("refusing introduction", "peer", offer.Peer.Short(), "err", err)
				}
				continue
			}
			// The rungs first, the answer after: the dialler sends to us
			// as soon as it has the answer, and holepunch's primers must
			// have opened our NAT by then (see holepunch.Params.Hold).
			n.log.Debug("introduced", "peer", offer.Peer.Short(), "candidates", offer.Candidates)
			if !offer.Move && !offer.Upgrade {
				n.freshPeer(offer.Peer)
			}
			// A sequential NAT: its newest port, measured before the
			// primers make our mapping towards the dialler.
			n.refreshAllocation(n.ctx)
			for _, r := range n.ladder.All {
				r.Introduced(offer)
			}
			answer := candidate.PeerInfo{Mapping: n.Mapping(), Ports: n.ports(), RelayLink: n.relayLinkCarries(offer), Upgrades: true}
			for _, r := range n.ladder.All { // (the listening side punches whatever the node's own dials use)
				if h, ok := r.(*holepunch.Rung); ok {
					answer.Birthday = h.BirthdayRuns(offer.Attempt) // the dialler waits for the probes
				}
			}
			hp := holepunchOf(n.ladder.Dial)
			if hp != nil {
				own := candidate.PeerInfo{Candidates: n.candidates(), Observed: n.Observed(), Mapping: n.Mapping()}
				own.Candidates = append(own.Candidates, candidate.Candidate{Addr: own.Observed, Kind: candidate.Reflexive})
				answer.Flight = hp.TakesFlight(offer, own, n.relayUsable())
				if !answer.Flight {
					n.log.Debug("first flight: not taken", "peer", offer.Peer.Short(), "offer_mapping", offer.Mapping,
						"own_mapping", own.Mapping, "relay_usable", n.relayUsable(), "observed", own.Observed)
				}
			}
			if err := in.Accept(answer); err != nil {
				n.log.Debug("answering introduction", "peer", offer.Peer.Short(), "err", err)
			}
			// The dialler's first flight, after the primers and the
			// answer (see holepunch.Rung.Flight).
			if answer.Flight {
				hp.Flight(offer, in.Flight())
			} else {
				in.Flight().Close()
			}
		case <-n.ctx.Done():
			return
		}
	}
}
