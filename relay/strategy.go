package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// Name is the rung's name in the ladder.
const Name = "relay"

// Strategy dials a peer through a relay (the hosted relay for the Rung,
// a volunteer for the supernode rung): it links the node to the relay
// of the server that introduced the peers (the peer links there too when
// the introduction reaches it) and dials QUIC end to end to the peer's
// relay address over the node's relayed transport. The relay forwards
// ciphertext it cannot read; the session proves the peer's key like any
// other.
type Strategy struct {
	// Client returns the node's relay client.
	Client func() *Client
	// Transport returns the quic.Transport running on the client's
	// PacketConn.
	Transport func() *quic.Transport
	// Server returns the relay to use (the node's current rendezvous
	// server); zero means none.
	Server func() rendezvous.ServerAddr
	// Addr returns the address to dial peer at on Transport. Nil: the
	// relay address Addr{peer} (Transport runs on the client's
	// PacketConn).
	Addr func(peer identity.PeerID) (net.Addr, error)
	// Stream, if set, runs a session over a relayed stream when the
	// client's link can carry one (Client.StreamsOffered); its
	// ErrStreamsUnsupported (the peer's link cannot), ErrRelayFull and
	// ErrStreamRefused (a stream limit) fall back to QUIC over relayed
	// packets. Nil: QUIC always.
	Stream func(ctx context.Context, a *rung.Attempt) (*stream.Session, error)
}

// streamFallback reports whether a relayed stream session that failed
// with err gives way to QUIC over relayed packets: the pair of links
// cannot carry a stream, or the relay or the peer takes no more streams.
func streamFallback(err error) bool {
	return errors.Is(err, ErrStreamsUnsupported) || errors.Is(err, ErrRelayFull) || errors.Is(err, ErrStreamRefused)
}

// Connect dials a.Peer through the relay. Errors: those of Client.Connect
// (ErrBadToken, ErrTokenExpired, ErrRelayFull, ErrNoRelay, ...);
// ErrRelayFull when the relay is at its session limit;
// ErrPeerNotConnected (joined with the handshake's error) when the peer
// never linked to the relay.
func (s *Strategy) Connect(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	sa := s.Server()
	if sa.IsZero() {
		return nil, fmt.Errorf("%w: no server to relay through", ErrNoRelay)
	}
	c := s.Client()
	// A node on a UDP link dialling a peer on a byte-stream link opens a
	// streams-only link beside its own (streamlink.go), at once, so that
	// it comes up while the UDP link does.
	var streamLink <-chan error
	if s.Stream != nil && a.Remote.RelayLink == candidate.RelayLinkStreams && c.streamLinkWanted(sa) {
		streamLink = c.startStreamLink(sa)
	}
	if _, err := c.Connect(ctx, sa); err != nil {
		return nil, err
	}
	// The peer answers through the relay: consent to it (sending to it
	// would too, but this one does not wait for the first packet).
	c.Allow(a.Peer)
	// A listener whose answer says its link carries packets alone would
	// have the relay refuse the stream (CLOSE not_stream): a round trip
	// to the relay saved.
	useStream := s.Stream != nil && c.StreamsOffered() && a.Remote.RelayLink != candidate.RelayLinkPackets
	if !useStream && streamLink == nil && s.Stream != nil && a.Remote.RelayLink == candidate.RelayLinkStreams && c.streamLinkWanted(sa) {
		streamLink = c.startStreamLink(sa) // the link was up, without one
	}
	if !useStream && streamLink != nil {
		// A streams-only link that is slow to come up (TCP to the relay
		// blocked or lossy) does not hold the dial back for long.
		t := time.NewTimer(streamLinkWait)
		select {
		case err := <-streamLink:
			useStream = err == nil
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t.Stop()
	}
	if useStream {
		sess, err := s.Stream(ctx, a)
		if !streamFallback(err) {
			return sess, err
		}
	}
	notices, stop := c.watch(a.Peer)
	defer stop()
	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var mu sync.Mutex
	var notGone error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case err := <-notices:
				if errors.Is(err, ErrRelayFull) {
					cancel(err)
					return
				}
				mu.Lock()
				notGone = err
				mu.Unlock()
			case <-dctx.Done():
				return
			}
		}
	}()
	cfg := a.Session
	cfg.PacketSize = PacketSize
	var to net.Addr = Addr{a.Peer}
	if s.Addr != nil {
		var err error
		if to, err = s.Addr(a.Peer); err != nil {
			cancel(nil)
			wg.Wait()
			return nil, err
		}
	}
	sess, err := stream.DialAddr(dctx, s.Transport(), to, a.Key, a.Peer, cfg)
	cancel(nil)
	wg.Wait()
	if err == nil {
		return sess, nil
	}
	if cause := context.Cause(dctx); errors.Is(cause, ErrRelayFull) && ctx.Err() == nil {
		return nil, fmt.Errorf("relay: dial %s: %w (session limit)", a.Peer.Short(), ErrRelayFull)
	}
	mu.Lock()
	defer mu.Unlock()
	if notGone != nil {
		return nil, errors.Join(notGone, err)
	}
	return nil, err
}
