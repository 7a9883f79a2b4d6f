package relay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// RungConfig is what the node's Config says about the hosted relay.
type RungConfig struct {
	// Token returns the token for relays that require one (NewToken, from
	// the relay operator); it is called for every link. Nil: no token.
	Token func() string
	// Dialers are the link transports, raced in order; a TLSDialer or
	// WSDialer without DialTCP gets the node's server dial (through its
	// proxy). Nil: UDP from the node's socket, then TLS over TCP, then
	// WebSocket over HTTPS.
	Dialers []LinkDialer
	// NoStreams keeps relayed sessions on QUIC over relayed packets: the
	// node neither opens nor accepts relayed streams (rungstream.go).
	// False: a pair whose links are both byte streams runs TLS+yamux
	// over a relayed stream.
	NoStreams bool
}

// Rung is the hosted relay, the last rung. The node keeps a link to the
// relay of the server it is registered with (opened when a dial or an
// introduction needs it). Relayed sessions run on the node's own QUIC
// transport, each peer at its virtual address (internal/pathsock), so a
// relayed session can move to a direct path without breaking; the node
// accepts them with its other sessions.
type Rung struct {
	rung.Base
	h      *rung.Host
	cfg    RungConfig
	client *Client // nil without servers

	fmu     sync.Mutex
	closed  bool                                    // Close ran: no more foreign clients
	foreign map[rendezvous.ServerAddr]*foreignRelay // links to other servers' relays (foreign.go)
	via     map[identity.PeerID]*foreignRelay       // peers introduced through one of them
	// newForeign, set by tests, makes the clients of other relays; nil:
	// newClient.
	newForeign func() (*Client, error)
	// handshakes holds a token per accepted relayed stream in its
	// handshake (rungstream.go).
	handshakes chan struct{}
}

// NewRung makes the rung for the node h.
func NewRung(h *rung.Host, cfg RungConfig) *Rung {
	return &Rung{h: h, cfg: cfg, handshakes: make(chan struct{}, maxStreamHandshakes)}
}

// Usable reports whether the node has a relay to link to (it has
// servers): the rung can dial, and ready a fallback path.
func (r *Rung) Usable() bool { return r.client != nil }

// Name implements rung.Rung.
func (*Rung) Name() string { return Name }

// SessionConfig is cfg for sessions on a relayed transport: packets sized
// to fit a relay frame.
func SessionConfig(cfg stream.Config) stream.Config {
	cfg.PacketSize = PacketSize
	return cfg
}

// Start implements rung.Rung: it sets up the relay client and the relayed
// transport and accepts sessions on it. Nothing is sent until a dial or
// an introduction needs the relay.
func (r *Rung) Start(context.Context) error {
	if !r.h.Signalling {
		return nil
	}
	c, err := r.newClient()
	if err != nil {
		return err
	}
	r.client = c
	return nil
}

// newClient makes a client for a relay, on the node's socket.
func (r *Rung) newClient() (*Client, error) {
	return NewPathClient(r.h.Socket.Paths(), nil, ClientConfig{
		Key: r.h.Key, Socket: r.h.Socket.Transport(), DialTCP: r.h.DialServer, Dialers: r.dialers(),
		Token: r.cfg.Token, Logger: r.h.Logger, Consent: true, AcceptStream: r.streamAcceptor(),
		Prefer: func() string {
			// Registered over TCP: UDP is likely blocked, so do not make
			// the relay link wait for a UDP attempt to time out first.
			if !r.h.Observed().IsValid() {
				return "tls"
			}
			return ""
		},
	})
}

// ForwardPath implements rung.Forwarder: it links to the relay of the
// node's server and returns the path to peer through it.
func (r *Rung) ForwardPath(ctx context.Context, peer identity.PeerID) (pathsock.Path, error) {
	if r.client == nil {
		return nil, ErrNoRelay
	}
	c, sa := r.viaForeign(peer)
	if c != nil && r.isOwn(ctx, sa) {
		// The node failed over to that server since: its own link is
		// there now, and a second one would replace it.
		r.forget(sa, c)
		c = nil
	}
	if c == nil {
		c, sa = r.client, r.h.Server()
	}
	if sa.IsZero() {
		return nil, fmt.Errorf("%w: no server to relay through", ErrNoRelay)
	}
	if _, err := c.Connect(ctx, sa); err != nil {
		return nil, err
	}
	// The peer may fall back to the relay first: let it through.
	c.Allow(peer)
	return c.Path(peer), nil
}

// Won implements rung.Winner: the peer's forwarded path is the relay
// again (another forwarding rung racing for the peer may have set its
// own).
func (r *Rung) Won(a *rung.Attempt, s *stream.Session) {
	if r.client == nil {
		return
	}
	if s.QUIC() == nil {
		return // a relayed stream's session: no path of the socket
	}
	paths := r.h.Socket.Paths()
	key := s.QUICAddr()
	if direct, _, err := paths.Current(key); err != nil || direct.IsValid() {
		return
	}
	paths.SetFallback(key, r.client.Path(a.Peer))
}

// Key returns the virtual address of peer on the node's socket with the
// relay as its forwarded path (its current path unless it has a direct
// one): what the rung dials.
func (r *Rung) Key(peer identity.PeerID) (net.Addr, error) {
	paths := r.h.Socket.Paths()
	key, err := paths.Key(peer.String())
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	if err := paths.SetFallback(key, r.client.Path(peer)); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	return net.UDPAddrFromAddrPort(key), nil
}

// dialers is RungConfig.Dialers with the node's server dial (the
// namespace hooks and the proxy) filled in where a TCP dialer has none.
func (r *Rung) dialers() []LinkDialer {
	if r.cfg.Dialers == nil {
		return nil
	}
	out := make([]LinkDialer, len(r.cfg.Dialers))
	for i, d := range r.cfg.Dialers {
		switch d := d.(type) {
		case TLSDialer:
			if d.DialTCP == nil {
				d.DialTCP = r.h.DialServer
			}
			out[i] = d
		case WSDialer:
			if d.DialTCP == nil {
				d.DialTCP = r.h.DialServer
			}
			out[i] = d
		default:
			out[i] = d
		}
	}
	return out
}

// Close implements rung.Rung.
func (r *Rung) Close() {
	if r.client == nil {
		return
	}
	r.closeForeign()
	r.client.Close()
}

// Transport returns the transport of the node's link to its relay ("udp",
// "tls", "ws"), or "" without one.
func (r *Rung) Transport() string {
	if r.client == nil {
		return ""
	}
	return r.client.Transport()
}

// LinkCarries says what the node's link to the relay the dialler's offer
// comes through carries for the dialler (Client.LinkCarries): the node's
// answer to offer tells it. That is the node's own relay link, unless the
// offer names another server's relay (a fleet: the node links there with
// a client of its own, introducedForeign), or the own link is to the
// relay of a server the node has left (it links anew): then only what
// any link of the node would carry is said.
func (r *Rung) LinkCarries(offer candidate.PeerInfo, udpWorks bool) string {
	if r.client == nil {
		return ""
	}
	if sa, named := relayOf(offer); named && !r.ownLiteral(sa) {
		r.fmu.Lock()
		f := r.foreign[sa]
		r.fmu.Unlock()
		if f == nil {
			return r.client.linkCarries(nil, false)
		}
		// udpWorks is of the node's own server, not of that relay.
		return f.client.linkCarries(f.client.current(), false)
	}
	if r.streamLinkFor(offer, r.h.Server(), udpWorks) {
		return candidate.RelayLinkStreams // on the streams-only link Introduced opens
	}
	l := r.client.current()
	if srv := r.client.Server(); l != nil && srv != r.h.Server() {
		l = nil
	}
	return r.client.linkCarries(l, udpWorks)
}

// streamLinkFor reports whether this node, introduced to the dialler of
// offer, takes the session on a streams-only link to the relay of sa:
// the dialler's link carries streams, this node takes streams, and its
// own link is (or will be: udpWorks, it reaches its server over UDP) UDP,
// beside which it may open one.
func (r *Rung) streamLinkFor(offer candidate.PeerInfo, sa rendezvous.ServerAddr, udpWorks bool) bool {
	if offer.RelayLink != candidate.RelayLinkStreams || r.cfg.NoStreams || sa.IsZero() || r.client.cfg.AcceptStream == nil {
		return false
	}
	if r.client.current() == nil && !udpWorks {
		// Not linked, and UDP to the server looks blocked: its link will
		// be a byte stream, which takes the stream itself.
		return false
	}
	return r.client.streamLinkWanted(sa)
}

// ownLiteral is isOwn without a lookup (for an answer, which does not
// wait): sa is the relay of the node's server when both name the same
// key, port and IP literal. A server known by name is not recognised.
func (r *Rung) ownLiteral(sa rendezvous.ServerAddr) bool {
	own := r.h.Server()
	if own.ID != sa.ID || own.Port != sa.Port {
		return false
	}
	ip, err := netip.ParseAddr(sa.Host)
	oip, oerr := netip.ParseAddr(own.Host)
	return err == nil && oerr == nil && ip.Unmap() == oip.Unmap()
}

// Offer implements rung.Rung: the dialler's offer names the relay of the
// server that introduces the peers, so the listener links to it and the
// relayed handshake finds it.
func (r *Rung) Offer(ctx context.Context, offer *candidate.PeerInfo) func() {
	if r.client == nil {
		return nil
	}
	sa := r.h.Server()
	if sa.IsZero() {
		return nil
	}
	ip, err := netip.ParseAddr(sa.Host)
	if err != nil {
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", sa.Host)
		if err != nil || len(ips) == 0 {
			return nil
		}
		ip = ips[0]
	}
	offer.Candidates = append(offer.Candidates, candidate.Candidate{Addr: netip.AddrPortFrom(ip.Unmap(), sa.Port), Kind: candidate.Relay})
	// What the dialler's link carries: a listener on a UDP link opens a
	// streams-only link for a dialler on a byte stream (Introduced).
	udp := r.h.Observed != nil && r.h.Observed().IsValid()
	l := r.client.current()
	if srv := r.client.Server(); l != nil && srv != sa {
		l = nil
	}
	offer.RelayLink = r.client.linkCarries(l, udp)
	return nil
}

// introducedLinkTimeout bounds the listening side's link to the relay
// after an introduction.
const introducedLinkTimeout = 10 * time.Second

// Introduced implements rung.Rung: it links the listening side to the
// relay when the dialler's offer says it may come through it, and
// consents to the dialler's packets there. The consent goes out now,
// before the node answers the introduction, when the node is linked
// already (the dialler's first packet, a QUIC Initial, can only follow
// the answer), or as soon as the link is up.
func (r *Rung) Introduced(offer candidate.PeerInfo) {
	if r.client == nil || len(offer.Addrs(candidate.Relay)) == 0 {
		return
	}
	sa := r.h.Server()
	if sa.IsZero() {
		return
	}
	r.client.Allow(offer.Peer)
	foreign, named := relayOf(offer)
	r.h.Go(func() {
		ctx, cancel := context.WithTimeout(r.h.Context, introducedLinkTimeout)
		defer cancel()
		r.pruneOwn(ctx)
		if named && !r.isOwn(ctx, foreign) {
			// The dialler is registered with another server of a fleet:
			// it sends through that server's relay.
			r.introducedForeign(ctx, foreign, offer.Peer)
			return
		}
		if r.streamLinkFor(offer, sa, r.h.Observed != nil && r.h.Observed().IsValid()) {
			// The dialler's link is a byte stream and this node's is
			// UDP: the session runs over a relayed stream to a
			// streams-only link of this node (one TCP leg each, TCP's
			// congestion control alone), which comes up beside the UDP
			// link.
			r.client.startStreamLink(sa)
		}
		if _, err := r.client.Connect(ctx, sa); err != nil && r.h.Context.Err() == nil {
			r.h.Logger.Warn("relay: cannot link to the relay for an introduced peer", "peer", offer.Peer.Short(), "err", err)
		}
	})
}

// Connect implements rung.Rung; see Strategy.Connect.
func (r *Rung) Connect(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	if r.client == nil {
		return nil, ErrNoRelay
	}
	s := Strategy{
		Client:    func() *Client { return r.client },
		Transport: r.h.Socket.Transport,
		Server:    r.h.Server,
		Addr:      r.Key,
	}
	if !r.cfg.NoStreams {
		s.Stream = r.dialStream
	}
	return s.Connect(ctx, a)
}
