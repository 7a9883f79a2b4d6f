package reach

import (
	"context"
	"time"

	"github.com/reachp2p/reach/internal/ladder"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
	"github.com/reachp2p/reach/supernode"
)

// Defaults of the path fields of Config.
const (
	// DefaultRelayDelay is the most the forwarding rungs wait after a
	// dial starts while the rungs before them are still trying
	// (Config.RelayDelay).
	DefaultRelayDelay = rung.DefaultForwardDelay
	// DefaultUpgradeInterval is the first pause between background
	// attempts to replace a forwarded session by a better path.
	DefaultUpgradeInterval = 30 * time.Second
	maxUpgradeInterval     = 10 * time.Minute
	// upgradeTimeout bounds one background attempt.
	upgradeTimeout = 20 * time.Second
)

// PathEventKind says what happened to a peer's path.
type PathEventKind = rung.EventKind

// PathEvent reports what the node does about a peer's path.
type PathEvent = rung.Event

// Path events.
const (
	// PathRelayed: a session to the peer now runs through a forwarding
	// rung (the relay, TURN, a supernode).
	PathRelayed PathEventKind = "relayed"
	// PathUpgradeAttempt: the node is trying the better rungs again in the
	// background while the forwarded session carries on.
	PathUpgradeAttempt PathEventKind = "upgrade-attempt"
	// PathUpgradeFailed: that attempt found nothing better (Err says why).
	PathUpgradeFailed PathEventKind = "upgrade-failed"
	// PathUpgraded: a better path was found: Session is a new session on
	// it (Strategy names its rung), which new streams (Dial, DialSession)
	// use from now on. Streams already open stay on the forwarded session
	// until they end; moving them is future work, see
	// docs/architecture.md.
	PathUpgraded PathEventKind = "upgraded"
	// PathSupernodeLost: the volunteer that carried Session vanished and
	// no other forwarded path could be readied for it (the hosted relay
	// is tried first: then the event is PathMoved with Strategy relay and
	// Err supernode.ErrVolunteerGone); the node closed the session with
	// supernode.ErrVolunteerGone (Err), so its streams fail with that
	// error instead of hanging. The next Dial finds another path.
	PathSupernodeLost = supernode.EventLost
)

// event logs e and hands it to Config.OnPathEvent.
func (n *Node) event(e PathEvent) {
	args := []any{"peer", e.Peer.Short(), "event", string(e.Kind)}
	if e.Strategy != "" {
		args = append(args, "strategy", e.Strategy)
	}
	if e.Path.IsValid() {
		args = append(args, "path", e.Path)
	}
	if e.Err != nil {
		args = append(args, "err", e.Err)
	}
	n.log.Info("path", args...)
	n.counts.event(e)
	if f := n.cfg.OnPathEvent; f != nil {
		f(e)
	}
}

// forwarded is called when a dial ends on a forwarding rung: it reports it
// and keeps trying the better rungs in the background.
//
// upgrades says the peer's answer said it takes upgrade introductions
// (candidate.PeerInfo.Upgrades): only then does a node whose session
// moves also race the TCP rungs beside it (an older peer would start
// its address afresh on such an introduction and cut the session).
func (n *Node) forwarded(sess *stream.Session, upgrades bool) {
	peer := sess.RemotePeer()
	n.event(PathEvent{Peer: peer, Kind: PathRelayed, Strategy: sess.Strategy(), Session: sess})
	if n.cfg.UpgradeInterval < 0 {
		return
	}
	if n.movable(sess) {
		// The session itself moves when a direct path is found.
		n.startMoving(peer)
		// The move loop validates paths of the node's socket (UDP) only.
		// A node whose UDP looks blocked (it registered over TCP) can do
		// better only over TCP: it keeps trying the TCP rungs too, and a
		// session they make takes the new streams (PathUpgraded).
		if tcp := n.ladder.BetterTCP(); len(tcp) > 0 && upgrades && n.client != nil && !n.Observed().IsValid() {
			n.goRun(func() { n.upgradeLoop(sess, tcp) })
		}
		return
	}
	better := n.ladder.Better()
	if len(better) == 0 {
		return
	}
	n.goRun(func() { n.upgradeLoop(sess, better) })
}

// upgradeLoop tries better's rungs for peer now and then, with a doubling
// pause, while the relayed session lives and nothing better exists.
func (n *Node) upgradeLoop(sess *stream.Session, better []rung.Entry) {
	peer := sess.RemotePeer()
	wait := n.cfg.UpgradeInterval
	if wait == 0 {
		wait = DefaultUpgradeInterval
	}
	for {
		if s := n.liveSession(peer); s != nil && !ladder.Forwards(s.Strategy()) {
			return // a better session exists (the peer dialled us, say)
		}
		n.event(PathEvent{Peer: peer, Kind: PathUpgradeAttempt})
		ctx, cancel := context.WithTimeout(n.ctx, upgradeTimeout)
		s, _, err := n.introduceAndRace(ctx, peer, better, introUpgrade)
		cancel()
		if err == nil {
			if !n.accepted(s) {
				s.CloseWithError(0, "node closed")
				return
			}
			n.event(PathEvent{Peer: peer, Kind: PathUpgraded, Strategy: s.Strategy(), Session: s})
			return
		}
		if n.ctx.Err() != nil || sess.Context().Err() != nil {
			return
		}
		n.event(PathEvent{Peer: peer, Kind: PathUpgradeFailed, Err: err})
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-sess.Done():
			t.Stop()
			return
		case <-n.ctx.Done():
			t.Stop()
			return
		}
		wait = min(2*wait, maxUpgradeInterval)
	}
}
