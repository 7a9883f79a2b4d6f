package reach

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// Sessions made by a first flight (holepunch.Rung.DialEarly; issue 12's
// connect time). The dialler's handshake went to the listener through the
// rendezvous server, so its session wins when the handshake completes,
// before any packet came straight from the listener: the direct path it
// uses is the server's word (where it saw the listener). That is make
// before break: the node readies the relay at once, and if nothing came
// straight from the peer within unprovenWait, the session moves there (a
// firewall between the peers that the NATs' mappings could not tell) and
// the search for a direct path goes on as for any relayed session. No
// byte is lost: QUIC sends again over the relay what the silent path
// swallowed. Only pairs likely to go direct fly first (Node.mayFlyFirst,
// holepunch.Rung.TakesFlight).

// errUnproven is the Err of a PathMoved of a first flight's session to
// the relay.
var errUnproven = fmt.Errorf("reach: nothing came straight from the peer after its handshake")

// unprovenWait is how long a first flight's session waits for a packet
// straight from the peer before it moves to the relay: three round trips
// of its handshake (which went through the server, usually a longer way
// than the direct one) and a quarter second for a loaded machine; at
// least half a second, at most three (pathDeadAfter, a silent path's).
func unprovenWait(rtt time.Duration) time.Duration {
	return min(max(3*rtt+250*time.Millisecond, 500*time.Millisecond), pathDeadAfter)
}

// claimKey names the anonymous address of a session whose first flight
// went through the server (holepunch.Rung.DialEarly) after its peer, so
// that it moves like the others, unless another live session has the
// peer's address.
func (n *Node) claimKey(sess *stream.Session) {
	key := quicKey(sess)
	paths := n.sock.Paths()
	if !pathsock.IsVirtual(key.Addr()) || paths.Name(key) != "" {
		return
	}
	peer := sess.RemotePeer()
	if old, ok := paths.Lookup(peer.String()); ok && len(n.sessionsAt(peer, old)) > 0 {
		return
	}
	if err := paths.SetName(key, peer.String()); err != nil {
		n.log.Debug("session stays at its address", "peer", peer.Short(), "err", err)
	}
}

// afterFlight readies a forwarded path for a session that has none once
// its first flight through the server is over (a session born on a
// forwarded path has it already); a session whose direct path nothing
// came from yet must prove it (proveOrFallBack).
func (n *Node) afterFlight(sess *stream.Session) {
	peer, key := sess.RemotePeer(), quicKey(sess)
	paths := n.sock.Paths()
	end := time.Now().Add(2 * rendezvous.FlightWindow)
	for {
		direct, fwd, err := paths.Current(key)
		if err != nil {
			return
		}
		if _, first := fwd.(pathsock.HandshakeOnly); !first {
			switch {
			case fwd != nil:
			case direct.IsValid() && paths.Proved(key).IsZero():
				n.proveOrFallBack(sess)
			default:
				n.readyFallback(peer, key)
			}
			return
		}
		if time.Now().After(end) {
			return
		}
		t := time.NewTimer(pathCheckEvery)
		select {
		case <-t.C:
		case <-n.ctx.Done():
			t.Stop()
			return
		}
	}
}

// proveOrFallBack readies the relay for a first flight's session and
// moves the session there unless a packet comes straight from the peer
// within unprovenWait.
func (n *Node) proveOrFallBack(sess *stream.Session) {
	peer, key := sess.RemotePeer(), quicKey(sess)
	ready := make(chan struct{})
	n.goRun(func() {
		defer close(ready)
		n.readyFallback(peer, key)
	})
	wait := unprovenWait(sess.RTT())
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !n.provedSince(key) {
		select {
		case <-tick.C:
			continue
		case <-deadline.C:
		case <-sess.Done():
			return
		case <-n.ctx.Done():
			return
		}
		// Unproven: move once the relay is ready, unless a packet came
		// meanwhile.
		select {
		case <-ready:
		case <-sess.Done():
			return
		case <-n.ctx.Done():
			return
		}
		if n.provedSince(key) {
			return
		}
		// (Without a relay ready, the path stays as it is.)
		if n.fallBack(peer, key, errUnproven) {
			n.log.Debug("first flight: the direct path stayed silent: moved to the relay", "peer", peer.Short(), "waited", wait)
		}
		return
	}
}

// provedSince reports whether a packet came straight from the peer's
// current direct address at key.
func (n *Node) provedSince(key netip.AddrPort) bool {
	return !n.sock.Paths().Proved(key).IsZero()
}
