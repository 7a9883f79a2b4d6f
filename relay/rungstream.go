package relay

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// Relayed stream sessions (docs/protocol.md, "Relayed streams"): when the
// node's link to its relay is a byte stream (TLS, WebSocket, a proxy
// tunnel) and the peer's is too, the rung runs a TLS+yamux session over a
// relayed stream instead of QUIC over relayed packets. QUIC inside two
// TCP connections has two congestion controllers stacked: the TCP legs'
// queueing of a session's first bursts ended quic-go's slow start early
// and held such sessions at 8 Mbit/s for seconds (docs/benchmarks.md,
// "TLS ↔ TLS at 8 Mbit/s"). A relayed stream has TCP's alone. Such a
// session does not move to a direct path later (neither do direct-tcp's),
// and it ends when either node's link to the relay ends.

// maxStreamHandshakes bounds the relayed streams in their TLS handshake at
// once on the accepting side.
const maxStreamHandshakes = 16

// streamHandshakeTimeout bounds an accepted relayed stream's handshake.
const streamHandshakeTimeout = 10 * time.Second

// dialStream runs a session to a.Peer over a relayed stream: the TLS
// ClientHello follows the OPEN at once, so the session costs the round
// trips of its TLS handshake, as a QUIC one would. While the peer is not
// linked or has not consented yet (it links and allows the dialler when
// the introduction reaches it) it tries again every streamRetry.
// ErrStreamsUnsupported: the pair of links cannot carry one.
func (r *Rung) dialStream(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	// A listener on a UDP link that answered "streams" opens a
	// streams-only link when the introduction reaches it: until that is
	// up, the relay says the peer takes no streams. Such refusals are
	// tried again for streamLinkWait.
	var promised time.Time
	if a.Remote.RelayLink == candidate.RelayLinkStreams {
		promised = time.Now().Add(streamLinkWait)
	}
	for {
		conn, err := r.client.OpenStream(ctx, a.Peer)
		if err != nil {
			return nil, err
		}
		// stream.Client closes conn on error: nothing outlives a
		// cancelled dial.
		sess, err := stream.Client(ctx, conn, a.Key, a.Peer, a.Session)
		pending := errors.Is(err, ErrStreamsUnsupported) && time.Now().Before(promised)
		if err == nil || !retryStream(err) && !pending || ctx.Err() != nil {
			return sess, err
		}
		if err := waitRetry(ctx, err); err != nil {
			return nil, err
		}
	}
}

// streamAcceptor is the relay client's AcceptStream: nil with NoStreams.
func (r *Rung) streamAcceptor() func(identity.PeerID, net.Conn) {
	if r.cfg.NoStreams {
		return nil
	}
	return r.acceptStream
}

// acceptStream runs the accepting side of a session over a relayed
// stream a peer opened, and hands the session to the node.
func (r *Rung) acceptStream(peer identity.PeerID, c net.Conn) {
	select {
	case r.handshakes <- struct{}{}:
	default:
		r.h.Logger.Debug("relay: relayed stream refused: too many handshakes", "peer", peer.Short())
		refuseStream(c) // the dialler falls back to QUIC over relayed packets
		return
	}
	r.h.Go(func() {
		defer func() { <-r.handshakes }()
		ctx, cancel := context.WithTimeout(r.h.Context, streamHandshakeTimeout)
		sess, err := stream.Server(ctx, c, r.h.Key, r.h.Session) // closes c on error
		cancel()
		if err != nil {
			r.h.Logger.Debug("relay: relayed stream handshake failed", "peer", peer.Short(), "err", err)
			return
		}
		if sess.RemotePeer() != peer {
			// The relay named another peer than the one the handshake
			// proved: a confused or hostile relay.
			r.h.Logger.Warn("relay: relayed stream from a peer the relay did not name", "named", peer.Short(), "proved", sess.RemotePeer().Short())
			sess.Abort()
			return
		}
		sess.SetStrategy(Name)
		if !r.h.Accepted(sess) {
			sess.Abort()
		}
	})
}

// refuseStream ends c, a stream a peer opened, with CLOSE refused (the
// opener's ErrStreamRefused, which its rung takes as a reason to relay
// QUIC packets instead), not an orderly fin.
func refuseStream(c net.Conn) {
	if sc, ok := c.(*streamConn); ok {
		sc.end(closeRefused)
		return
	}
	c.Close()
}
