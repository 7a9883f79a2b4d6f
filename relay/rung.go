package relay

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
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
}

// Rung is the hosted relay, the last rung. The node keeps a link to the
// relay of the server it is registered with (opened when a dial or an
// introduction needs it) and runs a second QUIC transport on the link's
// relayed packet connection; sessions peers open there are handed to the
// node.
type Rung struct {
	rung.Base
	h      *rung.Host
	cfg    RungConfig
	client *Client // nil without servers
	tr     *quic.Transport
	ln     *stream.Listener
}

// NewRung makes the rung for the node h.
func NewRung(h *rung.Host, cfg RungConfig) *Rung { return &Rung{h: h, cfg: cfg} }

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
	c, err := NewClient(ClientConfig{
		Key: r.h.Key, Socket: r.h.Socket.Transport(), DialTCP: r.h.DialServer, Dialers: r.dialers(),
		Token: r.cfg.Token, Logger: r.h.Logger,
		Prefer: func() string {
			// Registered over TCP: UDP is likely blocked, so do not make
			// the relay link wait for a UDP attempt to time out first.
			if !r.h.Observed().IsValid() {
				return "tls"
			}
			return ""
		},
	})
	if err != nil {
		return err
	}
	tr := &quic.Transport{Conn: c.PacketConn()}
	ln, err := stream.Listen(tr, r.h.Key, SessionConfig(r.h.Session))
	if err != nil {
		c.Close()
		return err
	}
	r.client, r.tr, r.ln = c, tr, ln
	r.h.Go(func() { AcceptInto(r.h, ln, Name) })
	return nil
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

// AcceptInto hands the node h every session peers open on ln, recorded
// as strategy name, until ln or the node closes.
func AcceptInto(h *rung.Host, ln *stream.Listener, name string) {
	for {
		sess, err := ln.Accept(h.Context)
		if err != nil {
			return
		}
		sess.SetStrategy(name)
		h.Logger.Debug("session accepted", "peer", sess.RemotePeer().Short(), "strategy", name)
		if !h.Accepted(sess) {
			sess.CloseWithError(0, "node closed")
			return
		}
	}
}

// Close implements rung.Rung.
func (r *Rung) Close() {
	if r.client == nil {
		return
	}
	r.ln.Close()
	r.tr.Close()
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
	return nil
}

// introducedLinkTimeout bounds the listening side's link to the relay
// after an introduction.
const introducedLinkTimeout = 10 * time.Second

// Introduced implements rung.Rung: it links the listening side to the
// relay when the dialler's offer says it may come through it.
func (r *Rung) Introduced(offer candidate.PeerInfo) {
	if r.client == nil || len(offer.Addrs(candidate.Relay)) == 0 {
		return
	}
	sa := r.h.Server()
	if sa.IsZero() {
		return
	}
	r.h.Go(func() {
		ctx, cancel := context.WithTimeout(r.h.Context, introducedLinkTimeout)
		defer cancel()
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
		Transport: func() *quic.Transport { return r.tr },
		Server:    r.h.Server,
	}
	return s.Connect(ctx, a)
}
