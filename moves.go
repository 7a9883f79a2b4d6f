package reach

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/ladder"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// Moving sessions between paths (docs/architecture.md, "After the relay").
// A session that starts on the relay lives at the peer's virtual address
// on the node's socket (internal/pathsock). While it runs, the node looks
// for a direct path with the rungs that can validate one without a session
// (rung.Validator: hole punching), and when a check is answered the
// peer's address moves there; every session with the peer follows, with
// no byte lost. A direct path that goes silent falls back to the relay,
// and the search starts again.
const (
	// pathDeadAfter: a direct path that brought nothing back for this
	// long after the node sent on it is given up for the peer's forwarded
	// path (see checkPath: an idle path is not a dead one).
	pathDeadAfter = 3 * time.Second
	// pathCheckEvery is how often the node looks for silent direct paths.
	pathCheckEvery = 250 * time.Millisecond
	// moveCheck bounds one search for a direct path: the checks' early
	// phase (2 s), when every candidate address is pinged, and a second
	// for late answers.
	moveCheck = 3 * time.Second
	// moveGap is the pause between searches for a direct path while the
	// peer's sessions carry traffic on the forwarded path (at least
	// moveActive packets sent there in a moveGap): a path that becomes
	// possible is found within moveGap + moveCheck (5 s). While they are
	// idle the pause doubles from moveGap up to maxUpgradeInterval, and
	// traffic that starts again ends the pause within moveGap. A search
	// costs one introduction (about 1 KB each way through the server) and
	// at most holepunch.DefaultAttemptPackets (300) pings of about 100
	// bytes on each side: about 60 packets a second while traffic flows,
	// next to the thousands a second the traffic itself takes; an idle
	// session probes 2, 4, 8 ... s apart, after an hour once every 10 min.
	moveGap = 2 * time.Second
	// moveActive is how many packets sent on the forwarded path within a
	// moveGap count as traffic: an idle session sends a keepalive (and
	// acknowledges the peer's) every 10 s; a keystroke in a remote shell
	// is a packet and its echo's acknowledgement.
	moveActive = 4
	// moveRate and moveBurst bound a node's searches for direct paths,
	// all peers together (each is an introduction, which the server
	// limits per peer ID: 3/s after a burst of 30): with many busy
	// forwarded peers the searches take turns, and the node's own dials
	// keep most of the budget.
	moveRate  = 1 // a second
	moveBurst = 3
	// virtualIdle: a virtual address with no session and no packet for
	// this long is forgotten.
	virtualIdle = time.Minute
	// fallbackReady bounds readying a forwarded path for a direct session.
	fallbackReady = 10 * time.Second
)

// PathMoved: every session with the peer moved to another path without
// breaking (Strategy names the rung of the new path; Path is its direct
// address, or invalid when the session fell back to a forwarded path, in
// which case Err says why).
const PathMoved PathEventKind = "moved"

// The Err of a PathMoved back to a forwarded path: the direct path did
// not answer (errPathSilent), or the peer's packets came by the forwarded
// path while the direct one was silent (errPeerFellBack).
var (
	errPathSilent   = fmt.Errorf("reach: the direct path brought nothing back for %v", pathDeadAfter)
	errPeerFellBack = fmt.Errorf("reach: the peer's packets come by the forwarded path; the direct one was silent for %v", pathDeadAfter)
)

// pathHeard implements rung.Host.PathHeard. It runs on the socket's read
// goroutine: it must not block.
func (n *Node) pathHeard(name string, peer identity.PeerID, addr netip.AddrPort, confirmed bool) {
	paths := n.sock.Paths()
	key, ok := paths.Lookup(peer.String())
	if !ok {
		return // no session of ours can move
	}
	direct, fwd, err := paths.Current(key)
	if err != nil {
		return
	}
	if direct.IsValid() && direct != addr && paths.Proved(key).IsZero() {
		// The direct address came on the server's word (a first flight's
		// session) and nothing came from it; the peer's checks come from
		// addr: that is where its NAT is open towards us.
		paths.SetDirect(key, addr)
		return
	}
	if !confirmed {
		// The peer reaches us from addr: its packets there are its own
		// from now on, before it moves (it moves when our pong, which
		// follows, reaches it).
		paths.AddAlias(key, addr)
		return
	}
	if direct.IsValid() {
		paths.AddAlias(key, addr)
		return
	}
	paths.SetDirect(key, addr)
	if _, first := fwd.(pathsock.HandshakeOnly); first {
		return // a session whose handshake came through the server: it was on its way here
	}
	n.goRun(func() { n.moved(peer, key, name, addr, nil) })
}

// freshPeer readies the socket for a new session with peer (an
// introduction that is not a move): the peer's address on the socket, if
// it has one, belongs to sessions made before. Without a live session it
// is forgotten; with one (the peer's old process, killed, whose sessions
// have not timed out yet, or a session the peer wants to replace) it is
// detached from the peer's name, so that the checks and packets of the
// new session do not go to the old sessions' paths.
func (n *Node) freshPeer(peer identity.PeerID) {
	paths := n.sock.Paths()
	key, ok := paths.Lookup(peer.String())
	if !ok {
		return
	}
	if len(n.sessionsAt(peer, key)) == 0 {
		paths.RemovePeer(key)
		return
	}
	n.log.Debug("a new session from a peer that has one: its old path stays with the old one", "peer", peer.Short(), "key", key)
	paths.Detach(key)
}

// moved relabels the sessions at key and reports the move.
func (n *Node) moved(peer identity.PeerID, key netip.AddrPort, name string, addr netip.AddrPort, why error) {
	for _, s := range n.sessionsAt(peer, key) {
		s.SetStrategy(name)
	}
	n.event(PathEvent{Peer: peer, Kind: PathMoved, Strategy: name, Path: addr, Err: why})
}

// sessionsAt returns the live sessions with peer at key.
func (n *Node) sessionsAt(peer identity.PeerID, key netip.AddrPort) []*stream.Session {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*stream.Session
	for _, s := range n.sessions[peer] {
		if s.Context().Err() == nil && quicKey(s) == key {
			out = append(out, s)
		}
	}
	return out
}

// quicKey is sess's QUIC address as the node's socket keys it.
// A TLS+yamux session (direct-tcp) has none: its path is its TCP
// connection, which the socket's path table knows nothing of.
func quicKey(sess *stream.Session) netip.AddrPort {
	if sess.QUIC() == nil {
		return netip.AddrPort{}
	}
	a := sess.QUICAddr()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// movable reports whether sess can change paths: its QUIC address is its
// peer's key on the node's socket (a virtual address, or an adopted one).
func (n *Node) movable(sess *stream.Session) bool {
	return n.sock.Paths().Name(quicKey(sess)) == sess.RemotePeer().String()
}

// adopt makes a session born on a direct path of the node's socket
// movable: its peer address becomes the peer's key (pathsock.Adopt), and
// a forwarding rung readies the path it falls back to when the direct one
// goes silent. A peer that has a key already (another session) keeps it;
// this session then stays where it is.
func (n *Node) adopt(sess *stream.Session) {
	key := quicKey(sess)
	if !key.IsValid() || pathsock.IsVirtual(key.Addr()) || ladder.Forwards(sess.Strategy()) {
		return
	}
	if l := sess.LocalAddr(); l.IsValid() && l.Port() != n.sock.Port() {
		// A session on a helper socket of its own (holepunch's birthday
		// mode): the node's path set does not span it, so it stays on
		// the path it was born on.
		return
	}
	peer := sess.RemotePeer()
	if _, err := n.sock.Paths().Adopt(key, peer.String()); err != nil {
		n.log.Debug("session stays on its path", "peer", peer.Short(), "path", key, "err", err)
		return
	}
	sess.SetPathResolver(n.resolvePath)
	n.goRun(func() { n.readyFallback(peer, key) })
}

// readyFallback gives the peer's key the first forwarded path a rung can
// ready.
func (n *Node) readyFallback(peer identity.PeerID, key netip.AddrPort) {
	n.forwardPath(peer, key, "")
}

// forwardPath gives the peer's key the first forwarded path a rung other
// than skip can ready, and returns that rung's name ("": none could).
func (n *Node) forwardPath(peer identity.PeerID, key netip.AddrPort, skip string) string {
	for _, r := range n.ladder.All {
		f, ok := r.(rung.Forwarder)
		if !ok || r.Name() == skip {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, fallbackReady)
		p, err := f.ForwardPath(ctx, peer)
		cancel()
		if err != nil {
			n.log.Debug("no fallback path", "peer", peer.Short(), "rung", r.Name(), "err", err)
			continue
		}
		if err := n.sock.Paths().SetFallback(key, p); err != nil {
			n.log.Debug("fallback path not set", "peer", peer.Short(), "rung", r.Name(), "err", err)
			return ""
		}
		return r.Name()
	}
	return ""
}

// rescue implements rung.Host.Rescue: the sessions with peer at key lost
// their forwarded path (the rung lost's, for why); another forwarding
// rung's path takes its place, unless they moved to a direct path
// meanwhile. The move is reported as PathMoved with why.
func (n *Node) rescue(peer identity.PeerID, key netip.AddrPort, lost string, why error) bool {
	if direct, _, err := n.sock.Paths().Current(key); err == nil && direct.IsValid() {
		return true // on a direct path: the lost one was only its fallback
	}
	name := n.forwardPath(peer, key, lost)
	if name == "" {
		return false
	}
	n.log.Info("sessions moved to another forwarded path", "peer", peer.Short(), "from", lost, "to", name, "why", why)
	n.moved(peer, key, name, netip.AddrPort{}, why)
	return true
}

// resolvePath is the path resolver of movable sessions: the peer's direct
// address, or invalid while it is on a forwarded path.
func (n *Node) resolvePath(key netip.AddrPort) netip.AddrPort {
	direct, _, _ := n.sock.Paths().Current(key)
	return direct
}

// pathName is the rung name of a forwarded path.
func pathName(p pathsock.Path) string {
	if named, ok := p.(interface{ Name() string }); ok {
		return named.Name()
	}
	return "forwarded"
}

// watchPaths falls back from silent direct paths and forgets idle
// virtual addresses, until the node closes.
func (n *Node) watchPaths() {
	check := time.NewTicker(pathCheckEvery)
	defer check.Stop()
	expire := time.NewTicker(virtualIdle / 2)
	defer expire.Stop()
	paths := n.sock.Paths()
	for {
		select {
		case <-check.C:
			for peer, key := range n.movablePeers() {
				direct, fwd, err := paths.Current(key)
				if err != nil || !direct.IsValid() || fwd == nil {
					continue
				}
				n.checkPath(peer, key, direct)
			}
		case <-expire.C:
			keep := map[netip.AddrPort]bool{}
			for _, key := range n.movablePeers() {
				keep[key] = true
			}
			paths.Expire(virtualIdle, func(v netip.AddrPort) bool { return keep[v] })
		case <-n.ctx.Done():
			return
		}
	}
}

// movablePeers returns the peers with live sessions at virtual addresses.
func (n *Node) movablePeers() map[identity.PeerID]netip.AddrPort {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[identity.PeerID]netip.AddrPort{}
	for peer, ss := range n.sessions {
		for _, s := range ss {
			if s.Context().Err() == nil && n.movable(s) {
				out[peer] = quicKey(s)
			}
		}
	}
	return out
}

// startMoving runs moveLoop for peer unless one runs already.
func (n *Node) startMoving(peer identity.PeerID) {
	n.mu.Lock()
	if n.moving == nil {
		n.moving = map[identity.PeerID]bool{}
	}
	if n.moving[peer] || n.closed {
		n.mu.Unlock()
		return
	}
	n.moving[peer] = true
	n.mu.Unlock()
	n.goRun(func() {
		defer func() {
			n.mu.Lock()
			delete(n.moving, peer)
			n.mu.Unlock()
		}()
		n.moveLoop(peer)
	})
}

// moveLoop searches for a direct path to peer while a session with it is
// on a forwarded path: every moveGap while the sessions carry traffic,
// less and less often while they are idle (moveGap).
func (n *Node) moveLoop(peer identity.PeerID) {
	paths := n.sock.Paths()
	idle := moveGap // the pause while idle; doubles after each idle search
	for {
		key, ok := paths.Lookup(peer.String())
		if !ok || len(n.sessionsAt(peer, key)) == 0 {
			return
		}
		if direct, _, _ := paths.Current(key); direct.IsValid() {
			return
		}
		if n.moveLimit.Wait(n.ctx) != nil {
			return
		}
		n.event(PathEvent{Peer: peer, Kind: PathUpgradeAttempt})
		ctx, cancel := context.WithTimeout(n.ctx, moveCheck+time.Second)
		addr, name, err := n.validate(ctx, peer)
		cancel()
		if err == nil {
			if direct, _, _ := paths.Current(key); !direct.IsValid() {
				// The check's pong moved it already, unless a fallback
				// raced with it.
				paths.SetDirect(key, addr)
				n.moved(peer, key, name, addr, nil)
			}
			return
		}
		if n.ctx.Err() != nil {
			return
		}
		n.event(PathEvent{Peer: peer, Kind: PathUpgradeFailed, Err: err})
		active, ok := n.moveWait(peer, key, idle)
		switch {
		case !ok:
			return
		case active:
			idle = moveGap
		default:
			idle = min(2*idle, maxUpgradeInterval)
		}
	}
}

// moveWait pauses moveLoop: moveGap at least, and up to idle while the
// peer at key sends nothing on its forwarded path but keepalives. active
// says the pause ended because the sessions carry traffic (the caller
// searches at once) or because the peer's sessions ended or it has a new
// key (the caller looks again at once: a new session must not wait out
// an old one's pause); ok is false when the node closes.
func (n *Node) moveWait(peer identity.PeerID, key netip.AddrPort, idle time.Duration) (active, ok bool) {
	paths := n.sock.Paths()
	t := time.NewTicker(moveGap)
	defer t.Stop()
	deadline := time.Now().Add(idle)
	last := paths.ForwardedSent(key)
	for {
		select {
		case <-t.C:
		case <-n.ctx.Done():
			return false, false
		}
		if k, found := paths.Lookup(peer.String()); !found || k != key || len(n.sessionsAt(peer, key)) == 0 {
			return true, true
		}
		sent := paths.ForwardedSent(key)
		if sent-last >= moveActive {
			return true, true
		}
		if !time.Now().Before(deadline) {
			return false, true
		}
		last = sent
	}
}

// validate introduces the node to peer again and runs every rung of the
// ladder that can validate a direct path, in parallel, for moveCheck: the
// first address that answers wins.
func (n *Node) validate(ctx context.Context, peer identity.PeerID) (netip.AddrPort, string, error) {
	var entries []rung.Entry
	for _, e := range n.ladder.Better() {
		if _, ok := e.Rung.(rung.Validator); ok {
			entries = append(entries, e)
		}
	}
	if len(entries) == 0 {
		return netip.AddrPort{}, "", errors.New("reach: no rung can validate a direct path")
	}
	a, _, release, err := n.introduce(ctx, peer, entries, introMove)
	if err != nil {
		return netip.AddrPort{}, "", err
	}
	defer release()
	ctx, cancel := context.WithTimeout(ctx, moveCheck)
	defer cancel()
	type result struct {
		addr netip.AddrPort
		name string
		err  error
	}
	results := make(chan result, len(entries))
	for _, e := range entries {
		go func() {
			addr, err := e.Rung.(rung.Validator).Validate(ctx, a)
			results <- result{addr, e.Rung.Name(), err}
		}()
	}
	var errs []error
	for range entries {
		r := <-results
		if r.err == nil {
			cancel()
			return r.addr, r.name, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", r.name, r.err))
	}
	return netip.AddrPort{}, "", errors.Join(errs...)
}
