package reach

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/reachp2p/reach/holepunch"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/strategy"
	"github.com/reachp2p/reach/stream"
)

// DialSession returns a session to peer: an open one if the node has one,
// else a new one from the strategy race. The session's Strategy() names
// the rung that carries it. ctx bounds the setup only.
func (n *Node) DialSession(ctx context.Context, peer identity.PeerID) (*stream.Session, error) {
	if peer == n.ID() {
		return nil, ErrSelfDial
	}
	if s := n.liveSession(peer); s != nil {
		return s, nil
	}
	if n.client == nil {
		return nil, ErrNoServers
	}
	if n.ctx.Err() != nil {
		return nil, ErrClosed
	}
	start := time.Now()
	sess, name, err := n.introduceAndRace(ctx, peer, n.ladder)
	if err != nil {
		return nil, err
	}
	n.log.Debug("session up", "peer", peer.Short(), "strategy", name, "path", sess.RemoteAddr(), "elapsed", time.Since(start))
	if !n.track(sess) {
		sess.CloseWithError(0, "node closed")
		return nil, ErrClosed
	}
	n.goRun(func() { n.acceptStreams(sess) })
	if isRelayed(name) {
		n.relayed(sess)
	}
	return sess, nil
}

// introduceAndRace asks the server to introduce the node to peer and races
// ladder on the answer.
func (n *Node) introduceAndRace(ctx context.Context, peer identity.PeerID, ladder []strategy.Entry) (*stream.Session, string, error) {
	var b [8]byte
	rand.Read(b[:])
	offer := rendezvous.PeerInfo{PunchKey: holepunch.NewKey(), Attempt: binary.BigEndian.Uint64(b[:]) | 1}
	// The listener starts punching when the introduction reaches it, before
	// our answer arrives: be ready to answer its checks from the start.
	if hasStrategy(ladder, StrategyRelay) {
		offer.Candidates = n.relayCandidate(ctx)
	}
	offer.WantSupernodes = n.wantSupernodes(ladder)
	if hasStrategy(ladder, StrategyHolepunch) {
		if early, err := n.punch.Start(holepunch.Params{Attempt: offer.Attempt, Key: offer.PunchKey, Role: holepunch.RoleDialer}); err == nil {
			defer early.Close()
		}
	}
	introStart := time.Now()
	answer, err := n.client.Connect(ctx, peer, offer)
	if err != nil {
		return nil, "", fmt.Errorf("reach: introduction to %s: %w", peer.Short(), err)
	}
	intro := time.Since(introStart)
	offer.Peer = n.ID()
	a := &strategy.Attempt{
		Key: n.key, Peer: peer, Socket: n.sock,
		Local: offer, Remote: answer,
		Session: n.cfg.Session, Logger: n.log,
	}
	sess, name, err := strategy.Race(ctx, a, withRelayDelay(withoutIdleSupernode(n.ladderFor(answer, ladder), answer), n.relayDelay(answer, intro)))
	if err != nil {
		return nil, "", fmt.Errorf("reach: dial %s: %w", peer.Short(), err)
	}
	sess.SetStrategy(name)
	return sess, name, nil
}

// liveSession returns an open session to peer, if any; a relayed one only
// if there is no other.
func (n *Node) liveSession(peer identity.PeerID) *stream.Session {
	n.mu.Lock()
	defer n.mu.Unlock()
	var relayed *stream.Session
	for _, s := range n.sessions[peer] {
		if s.Context().Err() == nil {
			if !isRelayed(s.Strategy()) {
				return s
			}
			if relayed == nil {
				relayed = s
			}
		}
	}
	return relayed
}

// Sessions returns the node's open sessions.
func (n *Node) Sessions() []*stream.Session {
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

// track records sess until it ends. It reports false if the node closed.
func (n *Node) track(sess *stream.Session) bool {
	peer := sess.RemotePeer()
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return false
	}
	n.sessions[peer] = append(n.sessions[peer], sess)
	n.mu.Unlock()
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
	return true
}

// acceptSessions takes QUIC sessions other peers open to this node.
func (n *Node) acceptSessions() {
	for {
		sess, err := n.ln.Accept(n.ctx)
		if err != nil {
			if n.ctx.Err() == nil {
				n.log.Debug("accepting sessions stopped", "err", err)
			}
			return
		}
		n.log.Debug("session accepted", "peer", sess.RemotePeer().Short(), "path", sess.RemoteAddr())
		if !n.track(sess) {
			sess.CloseWithError(0, "node closed")
			return
		}
		n.goRun(func() { n.acceptStreams(sess) })
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
			n.log.Warn("accept queue full; resetting stream", "peer", sess.RemotePeer().Short())
			st.Close()
		}
	}
}

// serveIntroductions answers other peers' introductions: it sends this
// node's candidates back and starts its half of the hole punch.
func (n *Node) serveIntroductions() {
	for {
		var in *rendezvous.Introduction
		var ok bool
		select {
		case in, ok = <-n.client.Incoming():
			if !ok { // the client closed (Close closes it after n.ctx)
				return
			}
		case <-n.ctx.Done():
			return
		}
		offer := in.Offer
		if err := in.Accept(rendezvous.PeerInfo{}); err != nil {
			n.log.Debug("answering introduction", "peer", offer.Peer.Short(), "err", err)
			continue
		}
		n.relayIntroduced(offer)
		n.turnIntroduced(offer)
		n.supernodeIntroduced(offer)
		if len(offer.PunchKey) != holepunch.KeyLen {
			continue
		}
		var remotes = make([]netip.AddrPort, 0, len(offer.Candidates))
		for _, c := range offer.Candidates {
			if c.Kind != rendezvous.Supernode {
				remotes = append(remotes, c.Addr)
			}
		}
		at, err := n.punch.Start(holepunch.Params{Attempt: offer.Attempt, Key: offer.PunchKey, Role: holepunch.RoleListener, Remote: remotes})
		if err != nil {
			n.log.Debug("punch", "peer", offer.Peer.Short(), "err", err)
			continue
		}
		n.log.Debug("introduced", "peer", offer.Peer.Short(), "candidates", offer.Candidates)
		n.goRun(func() {
			t := time.NewTimer(n.cfg.PunchLinger)
			defer t.Stop()
			select {
			case <-t.C:
			case <-n.ctx.Done():
			}
			at.Close()
		})
	}
}

// hasStrategy reports whether ladder has the named strategy.
func hasStrategy(ladder []strategy.Entry, name string) bool {
	for _, e := range ladder {
		if e.Strategy.Name() == name {
			return true
		}
	}
	return false
}

// ladderFor adapts the ladder to a peer's answer: when none of its host
// candidates can plausibly be reached as it is (a public address, or one
// on a network this node is on), direct gets no head start, so the next
// rungs do not wait for it.
func (n *Node) ladderFor(remote rendezvous.PeerInfo, ladder []strategy.Entry) []strategy.Entry {
	if directPlausible(remote, n.localPrefixes()) {
		return ladder
	}
	ladder = append([]strategy.Entry(nil), ladder...)
	for i := range ladder {
		if ladder[i].Strategy.Name() == StrategyDirect {
			ladder[i].HeadStart = 0
		}
	}
	return ladder
}

// localPrefixes lists the networks of the node's interfaces.
func (n *Node) localPrefixes() []netip.Prefix {
	addrs, _ := n.cfg.InterfaceAddrs()
	var out []netip.Prefix
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
		}
	}
	return out
}

// directPlausible reports whether some host candidate of the peer is a
// public address or lies in one of local.
func directPlausible(remote rendezvous.PeerInfo, local []netip.Prefix) bool {
	for _, c := range remote.Candidates {
		if c.Kind != rendezvous.Host {
			continue
		}
		ip := c.Addr.Addr().Unmap()
		if ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip) {
			return true
		}
		for _, p := range local {
			if p.Contains(ip) {
				return true
			}
		}
	}
	return false
}

// cgnat is the shared address space of carrier-grade NATs (RFC 6598).
var cgnat = netip.MustParsePrefix("100.64.0.0/10")
