package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// ClientConfig configures a Client. Key is required; every other zero value
// is usable.
type ClientConfig struct {
	// Key is the node's identity, proved to the relay.
	Key *identity.Key
	// Socket is the node's shared UDP socket, for the UDP link. Nil: no
	// UDP link.
	Socket *quic.Transport
	// DialTCP opens TCP connections for the TLS link. Nil: a net.Dialer.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// Dialers are the link transports, in order of preference. Nil: UDP
	// (when Socket is set), then TLS over TCP, then WebSocket over HTTPS
	// (both over DialTCP).
	Dialers []LinkDialer
	// Token returns the token for relays that require one (see NewToken);
	// it is called for every link. Nil: no token.
	Token func() string
	// HeadStart is how long a transport's attempt runs alone before the
	// next one starts (a failure starts the next at once). The transport
	// that worked last goes first next time. Zero: 300ms.
	HeadStart time.Duration
	// DialTimeout bounds one link attempt, all transports together.
	// Zero: 5s.
	DialTimeout time.Duration
	// Prefer names the transport to try first when none has worked yet
	// (e.g. "tls" when the node's UDP looks blocked); it is called for
	// every link. Nil or "": the Dialers' order.
	Prefer func() string
	// Consent makes the relay forward to this node only the packets of
	// peers it allowed (Allow) or sent to itself within
	// PermissionLifetime; others are dropped and their sender is told
	// (ErrNotAllowed). The relay rung of a node sets it: the listening
	// side of an introduction allows the dialler. False: the relay
	// forwards from any linked peer (as relays did before consent).
	Consent bool
	// Deliver, when set, receives every packet a peer sends through the
	// relay, instead of PacketConn (which then reads nothing). It must
	// not keep pkt.
	Deliver func(from identity.PeerID, pkt []byte)
	// AcceptStream, when set, takes the relayed streams peers open to the
	// node through a byte-stream link (docs/protocol.md, "Relayed
	// streams"): c is the stream, from peer as the relay says (the
	// caller's own handshake on c proves it). Nil: the node refuses them
	// (the relay tells the opener ErrStreamsUnsupported, and it relays
	// QUIC packets instead).
	AcceptStream func(peer identity.PeerID, c net.Conn)
	// Logger receives the client's logs. Nil: discard.
	Logger *slog.Logger
}

// Client keeps a node's link to one relay server, reconnecting when it is
// lost, and offers the node's relayed packet connection on top of it (see
// PacketConn). It is safe for concurrent use.
type Client struct {
	cfg ClientConfig
	log *slog.Logger
	pc  *PacketConn

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	link      Link
	server    rendezvous.ServerAddr
	preferred string
	dialing   *dialCall
	watchers  map[identity.PeerID]map[chan error]struct{}
	allowed   map[identity.PeerID]time.Time // Allow: sent again on every new link
	// route, set by the node's relay rung before the first link, hands
	// UDP links' data packets to quic-go in place (see dataLink).
	route routeFunc
	// sl is the streams-only link beside a UDP link (streamlink.go).
	sl streamLinkState
}

type dialCall struct {
	done chan struct{}
	link Link
	err  error
}

// NewClient makes a relay client. It connects on the first Connect.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Key == nil {
		return nil, errors.New("relay: ClientConfig.Key is required")
	}
	if cfg.HeadStart <= 0 {
		cfg.HeadStart = 300 * time.Millisecond
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Dialers == nil {
		if cfg.Socket != nil {
			cfg.Dialers = append(cfg.Dialers, UDPDialer{Socket: cfg.Socket})
		}
		cfg.Dialers = append(cfg.Dialers, TLSDialer{DialTCP: cfg.DialTCP}, WSDialer{DialTCP: cfg.DialTCP})
	}
	c := &Client{cfg: cfg, log: cfg.Logger, watchers: map[identity.PeerID]map[chan error]struct{}{},
		allowed: map[identity.PeerID]time.Time{}}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.pc = newPacketConn(c)
	return c, nil
}

// PacketConn returns the relayed packet connection: its addresses are
// Addr values (peer IDs), and packets written to one go through the
// current link. Run a quic.Transport on it. It is never nil.
func (c *Client) PacketConn() *PacketConn { return c.pc }

// Transport returns the current link's transport ("udp", "tls"), or ""
// while there is no link.
func (c *Client) Transport() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.link == nil {
		return ""
	}
	return c.link.Transport()
}

// Server returns the relay the client is linked to (zero without a link).
func (c *Client) Server() rendezvous.ServerAddr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.link == nil {
		return rendezvous.ServerAddr{}
	}
	return c.server
}

// Connect makes sure the client has a link to the relay of sa and returns
// it. Concurrent calls share one attempt; ctx bounds only the wait. After
// the first success the client keeps the link up (reconnecting with
// backoff) until Close. Errors: a *ServerError (ErrBadToken,
// ErrTokenExpired, ErrRelayFull, ErrRateLimited), ErrNoRelay, ErrClosed,
// identity.ErrWrongPeer, or the transports' errors joined.
func (c *Client) Connect(ctx context.Context, sa rendezvous.ServerAddr) (Link, error) {
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if c.link != nil && c.server == sa {
		l := c.link
		c.mu.Unlock()
		return l, nil
	}
	call := c.dialing
	if call == nil {
		call = &dialCall{done: make(chan struct{})}
		c.dialing = call
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.dial(call, sa)
		}()
	}
	c.mu.Unlock()
	select {
	case <-call.done:
		return call.link, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// dial runs one link race to sa and installs the winner.
func (c *Client) dial(call *dialCall, sa rendezvous.ServerAddr) {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.DialTimeout)
	l, err := c.race(ctx, sa)
	cancel()
	c.mu.Lock()
	c.dialing = nil
	if err == nil && c.ctx.Err() != nil {
		l.Close()
		l, err = nil, ErrClosed
	}
	var old Link
	var allow []identity.PeerID
	if err == nil {
		old = c.link
		c.link, c.server, c.preferred = l, sa, l.Transport()
		allow = c.permitted(time.Now())
	}
	c.mu.Unlock()
	for _, p := range allow {
		l.Allow(p) // an error ends the link: it is seen below
	}
	call.link, call.err = l, err
	close(call.done)
	if old != nil {
		old.Close()
	}
	if err != nil {
		c.log.Debug("relay: link failed", "relay", sa.String(), "err", err)
		return
	}
	c.log.Debug("relay: linked", "relay", sa.String(), "transport", l.Transport())
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.keep(l, sa)
	}()
}

// keep waits for l to end and reconnects with backoff unless it was
// replaced by another link or the client closed.
func (c *Client) keep(l Link, sa rendezvous.ServerAddr) {
	select {
	case <-l.Done():
	case <-c.ctx.Done():
		l.Close()
		return
	}
	c.mu.Lock()
	mine := c.link == l
	if mine {
		c.link = nil
	}
	c.mu.Unlock()
	if !mine || errors.Is(l.Err(), ErrReplaced) || c.ctx.Err() != nil {
		return
	}
	c.log.Debug("relay: link lost; reconnecting", "relay", sa.String(), "err", l.Err())
	wait := time.Second
	if errors.Is(l.Err(), ErrTokenExpired) {
		// The relay ended the link at its token's expiry: link again at
		// once, with a fresh token, so relayed sessions lose little.
		wait = 0
	}
	for ; ; wait = min(max(2*wait, time.Second), 30*time.Second) {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return
		}
		c.mu.Lock()
		busy := c.link != nil || c.dialing != nil
		c.mu.Unlock()
		if busy {
			return // someone else (re)linked
		}
		if _, err := c.Connect(c.ctx, sa); err == nil || errors.Is(err, ErrClosed) {
			return
		}
	}
}

// ordered returns the link dialers in the order the next link tries
// them: the transport that worked last (or Config.Prefer's) first.
func (c *Client) ordered() []LinkDialer {
	c.mu.Lock()
	pref := c.preferred
	c.mu.Unlock()
	if pref == "" && c.cfg.Prefer != nil {
		pref = c.cfg.Prefer()
	}
	dialers := append([]LinkDialer(nil), c.cfg.Dialers...)
	for i, d := range dialers {
		if d.Transport() == pref && i > 0 {
			copy(dialers[1:i+1], dialers[:i])
			dialers[0] = d
			break
		}
	}
	return dialers
}

// race dials the transports Happy-Eyeballs style, the preferred one first.
// When that is UDP, a later transport that is ready first gives it two
// more HeadStarts to say HELLO (helloGate): a lost packet of the QUIC
// handshake (retransmitted after about one HeadStart, the next time after
// two more) does not put a node whose UDP works on a TCP link.
func (c *Client) race(ctx context.Context, sa rendezvous.ServerAddr) (Link, error) {
	dialers := c.ordered()
	var token string
	if c.cfg.Token != nil {
		token = c.cfg.Token()
	}
	p := LinkParams{Server: sa, Key: c.cfg.Key, Token: token, Consent: c.cfg.Consent, Handler: (*clientHandler)(c), Logger: c.log,
		acceptStream: c.cfg.AcceptStream,
		gate:         newHelloGate(), route: c.route, allowed: func() []identity.PeerID {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.permitted(time.Now())
		}}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		l   Link
		err error
	}
	results := make(chan result, len(dialers))
	next, pending := 0, 0
	if len(dialers) > 1 && dialers[0].Transport() == (UDPDialer{}).Transport() {
		p.gate.waitFirst(2 * c.cfg.HeadStart)
	}
	start := func() {
		d, first := dialers[next], next == 0
		next++
		pending++
		go func() {
			pp := p
			pp.gateFirst = first
			l, err := d.DialLink(ctx, pp)
			if first {
				pp.gate.firstDone()
			}
			if err != nil {
				err = fmt.Errorf("%s: %w", d.Transport(), err)
			}
			results <- result{l, err}
		}()
	}
	start()
	head := time.NewTimer(c.cfg.HeadStart)
	defer head.Stop()
	var winner Link
	var errs []error
	for pending > 0 {
		var headC <-chan time.Time
		if winner == nil && next < len(dialers) {
			headC = head.C
		}
		select {
		case r := <-results:
			pending--
			switch {
			case r.err != nil:
				errs = append(errs, r.err)
				var se *ServerError
				if errors.As(r.err, &se) || errors.Is(r.err, identity.ErrWrongPeer) {
					// The relay answered: another transport gets the same answer.
					cancel()
					next = len(dialers)
				} else if winner == nil && next < len(dialers) {
					start()
					head.Reset(c.cfg.HeadStart)
				}
			case winner == nil:
				winner = r.l
				cancel()
			default:
				r.l.Close()
			}
		case <-headC:
			start()
			head.Reset(c.cfg.HeadStart)
		}
	}
	if winner != nil {
		return winner, nil
	}
	for _, e := range errs {
		var se *ServerError
		if errors.As(e, &se) || errors.Is(e, identity.ErrWrongPeer) {
			return nil, e
		}
	}
	return nil, fmt.Errorf("%w: %w", ErrNoRelay, errors.Join(errs...))
}

// Close ends the link and the packet connection.
func (c *Client) Close() error {
	c.cancel()
	c.mu.Lock()
	l := c.link
	c.link = nil
	c.mu.Unlock()
	if l != nil {
		l.Close()
	}
	c.pc.Close()
	c.wg.Wait()
	return nil
}

// Allow lets peer send to this node through the relay (recipient
// consent): the relay forwards a peer's packets only to nodes that allowed
// it, or that sent to it themselves. The node allows a dialler when it
// answers its introduction; a consent lasts PermissionLifetime and is
// sent again on every new link within it. Errors: the link's, if it
// ended while sending.
func (c *Client) Allow(peer identity.PeerID) error {
	now := time.Now()
	c.mu.Lock()
	if _, ok := c.allowed[peer]; !ok && len(c.allowed) >= maxPermissions {
		for p, t := range c.allowed {
			if now.Sub(t) >= PermissionLifetime {
				delete(c.allowed, p)
			}
		}
		if len(c.allowed) >= maxPermissions {
			// The oldest make room: the newest consent is the one a
			// dial is waiting for.
			var oldest identity.PeerID
			var at time.Time
			for p, t := range c.allowed {
				if at.IsZero() || t.Before(at) {
					oldest, at = p, t
				}
			}
			delete(c.allowed, oldest)
		}
	}
	c.allowed[peer] = now
	l := c.link
	c.mu.Unlock()
	if l == nil {
		return nil // sent when the link is up
	}
	return l.Allow(peer)
}

// permitted returns the peers allowed within PermissionLifetime and
// forgets the others. c.mu is held.
func (c *Client) permitted(now time.Time) []identity.PeerID {
	out := make([]identity.PeerID, 0, len(c.allowed))
	for p, t := range c.allowed {
		if now.Sub(t) >= PermissionLifetime {
			delete(c.allowed, p)
			continue
		}
		out = append(out, p)
	}
	return out
}

func (c *Client) current() Link {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.link
}

// watch returns a channel that receives the relay's notices about peer.
func (c *Client) watch(peer identity.PeerID) (<-chan error, func()) {
	ch := make(chan error, 4)
	c.mu.Lock()
	if c.watchers[peer] == nil {
		c.watchers[peer] = map[chan error]struct{}{}
	}
	c.watchers[peer][ch] = struct{}{}
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		delete(c.watchers[peer], ch)
		if len(c.watchers[peer]) == 0 {
			delete(c.watchers, peer)
		}
		c.mu.Unlock()
	}
}

type clientHandler Client

func (h *clientHandler) Packet(from identity.PeerID, pkt []byte) {
	if d := h.cfg.Deliver; d != nil {
		d(from, pkt)
		return
	}
	h.pc.deliver(from, pkt)
}

// Path returns the path to peer through the client's current link, for a
// pathsock.Conn: a packet sent while there is no link is dropped, as a UDP
// socket drops packets without a route; QUIC retransmits.
func (c *Client) Path(peer identity.PeerID) *PeerPath { return &PeerPath{c: c, peer: peer} }

// PeerPath is a pathsock.Path to one peer through a relay client.
type PeerPath struct {
	c    *Client
	peer identity.PeerID
}

// Send implements pathsock.Path.
func (p *PeerPath) Send(b []byte) error {
	if l := p.c.current(); l != nil {
		l.Send(p.peer, b) // errors mean the link is going: drop
	}
	return nil
}

// SendSegments implements pathsock.SegmentPath: packets of one size go
// out in one segmented send on a UDP link that carries data packets, else
// one by one.
func (p *PeerPath) SendSegments(b []byte, seg int) error {
	l := p.c.current()
	if l == nil {
		return nil
	}
	if ll, ok := l.(*link); ok && ll.sendSegments != nil && ll.sendSegments(p.peer, b, seg) {
		return nil
	}
	for off := 0; off < len(b); off += seg {
		l.Send(p.peer, b[off:min(off+seg, len(b))])
	}
	return nil
}

// Name says which rung the path belongs to: "relay".
func (p *PeerPath) Name() string { return Name }

func (h *clientHandler) Notice(peer identity.PeerID, err error) {
	c := (*Client)(h)
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.watchers[peer] {
		select {
		case ch <- err:
		default:
		}
	}
}
