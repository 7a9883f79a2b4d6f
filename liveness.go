package reach

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/reachp2p/reach/identity"
)

// When is a direct path dead? Silence alone does not say: an idle session
// sends nothing between its keepalives (stream.DefaultKeepAlivePeriod,
// 10 s), and a side that only receives sends nothing a peer answers (QUIC
// does not acknowledge acknowledgements). The node's socket stamps what
// it sends on each peer's direct path (pathsock.Conn.Sent, Unanswered)
// and what comes back (Heard, by any path: Seen), and checkPath reads the
// stamps every pathCheckEvery:
//
//   - nothing sent since the path was last heard: idle, not dead;
//   - the node is sending and the peer is heard, but only from another of
//     its sources, not the direct address for pathDeadAfter (it moved to
//     a new NAT mapping): dead for what the node sends;
//   - the peer's packets come by the forwarded path while the direct one
//     has been silent for pathDeadAfter: the peer fell back; follow it;
//   - the node has been sending, and nothing came back for pathDeadAfter
//     since its first unanswered packet: dead;
//   - it sent something a while ago and stopped (say, the last
//     acknowledgements of a transfer) and nothing came back: ask (a ping
//     on the session, which the peer answers) and fall back if the answer
//     does not come within probeWait.
//
// So an idle session costs no packets of ours beyond QUIC's keepalives,
// and a path that dies under traffic is left within pathDeadAfter plus a
// check interval.

// probeWait bounds the answer to a ping on a suspect direct path.
const probeWait = time.Second

// errProbeUnanswered is the Err of a PathMoved back to the forwarded path
// after a ping on the direct one went unanswered.
var errProbeUnanswered = fmt.Errorf("reach: the direct path did not answer a ping within %v", probeWait)

// sendingWithin: a node that sent on the path this recently is sending.
const sendingWithin = time.Second

// checkPath judges the direct path direct of the peer at key and falls
// back, or asks, as above.
func (n *Node) checkPath(peer identity.PeerID, key, direct netip.AddrPort) {
	paths := n.sock.Paths()
	now := time.Now()
	heard := paths.Heard(key)
	if now.Sub(heard) < pathDeadAfter {
		// Heard, but perhaps only from another of the peer's sources (an
		// alias: its checks from a new NAT mapping after its host was
		// renumbered) while what we send goes to the direct address,
		// which has said nothing for pathDeadAfter: that path is dead for
		// our packets; fall back and let the search find the new mapping
		// both ways (its answers there kept heard fresh, so silence alone
		// never told).
		if proved := paths.Proved(key); !proved.IsZero() && now.Sub(proved) >= pathDeadAfter &&
			now.Sub(paths.Sent(key)) < sendingWithin {
			n.fallBack(peer, key, errPathSilent)
		}
		return
	}
	if paths.Seen(key).After(heard) {
		n.fallBack(peer, key, errPeerFellBack)
		return
	}
	first := paths.Unanswered(key)
	if first.IsZero() || now.Sub(first) < pathDeadAfter {
		return
	}
	if now.Sub(paths.Sent(key)) < sendingWithin {
		n.fallBack(peer, key, errPathSilent)
		return
	}
	n.probe(peer, key, heard)
}

// probe pings a session at key, unless a probe of the peer runs already,
// and falls back if nothing came straight from the peer meanwhile.
func (n *Node) probe(peer identity.PeerID, key netip.AddrPort, heard time.Time) {
	n.mu.Lock()
	if n.probing == nil {
		n.probing = map[identity.PeerID]bool{}
	}
	if n.probing[peer] || n.closed {
		n.mu.Unlock()
		return
	}
	n.probing[peer] = true
	n.mu.Unlock()
	n.goRun(func() {
		defer func() {
			n.mu.Lock()
			delete(n.probing, peer)
			n.mu.Unlock()
		}()
		ss := n.sessionsAt(peer, key)
		if len(ss) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(n.ctx, probeWait)
		ss[0].Ping(ctx)
		cancel()
		if n.ctx.Err() != nil || n.sock.Paths().Heard(key).After(heard) {
			return
		}
		n.fallBack(peer, key, errProbeUnanswered)
	})
}

// fallBack moves the peer at key from its direct path to its forwarded
// one, says so, and starts the search for a direct path again; it reports
// whether it moved. The sessions are relabelled before the path changes:
// what they carry from then on goes by the forwarded path, and a caller
// that saw it arrive must see so.
func (n *Node) fallBack(peer identity.PeerID, key netip.AddrPort, why error) bool {
	paths := n.sock.Paths()
	direct, fwd, err := paths.Current(key)
	if err != nil || !direct.IsValid() || fwd == nil {
		return false
	}
	name := pathName(fwd)
	ss := n.sessionsAt(peer, key)
	was := make([]string, len(ss))
	for i, s := range ss {
		was[i] = s.Strategy()
		s.SetStrategy(name)
	}
	if !paths.Fallback(key) {
		for i, s := range ss {
			s.SetStrategy(was[i])
		}
		return false
	}
	n.event(PathEvent{Peer: peer, Kind: PathMoved, Strategy: name, Err: why})
	n.startMoving(peer)
	return true
}
