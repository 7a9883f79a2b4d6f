package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/reachp2p/reach/rendezvous"
)

// Streams-only links (docs/protocol.md, "Streams-only links"): a node
// whose link to the relay is UDP opens a byte-stream link beside it when
// it dials a peer whose link is a byte stream, and runs the session over
// a relayed stream through it, as two byte-stream-linked peers do. QUIC
// over relayed packets with one TCP leg had two congestion controllers
// stacked on that leg: the relay's fresh TCP connection to the receiver
// queued the sender's first bursts, and quic-go's hybrid slow start left
// early in some fresh sessions (7-9 Mbit/s for seconds where others ran at
// 50; docs/benchmarks.md, "Mixed pairs"). Over a relayed stream each leg
// has TCP's congestion control alone.
//
// The link says STREAMS-HELLO instead of HELLO. The relay registers it
// beside the peer's link (it replaces only an older streams-only link of
// the peer), counts it in its client and per-source link limits, and
// takes from it only stream frames, PING and PONG: it forwards no packet
// from it and none to it. Streams to the peer go to its own link, or to
// this one when its own link takes none (a UDP link: Rung.Introduced
// opens one for a dialler on a byte-stream link).

// welcomeStreamLink is the WELCOME flag, on a UDP link, of a relay that
// takes a streams-only link beside it.
const welcomeStreamLink = 0x10

// streamLinkWait is how long a dial waits for a streams-only link after
// the node's own link is up, before it relays QUIC packets instead.
const streamLinkWait = time.Second

// streamLinkIdle is how long a client keeps a streams-only link that
// carries no stream.
const streamLinkIdle = 30 * time.Second

// helloType is the first frame l sends: STREAMS-HELLO for a streams-only
// link, else HELLO.
func (l *link) helloType() byte {
	if l.streamsOnly {
		return frameHelloStreams
	}
	return frameHello
}

// mainLink is p's peer's own link: p itself, or for a streams-only link
// the link registered for its peer ID (nil if none).
func (s *Server) mainLink(p *peerLink) *peerLink {
	if !p.streamsOnly {
		return p
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.peers[p.id]
}

// StreamLinks returns how many streams-only links the relay holds.
func (s *Server) StreamLinks() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.streamLinks)
}

// streamLinkState is a Client's streams-only link; guarded by Client.mu.
type streamLinkState struct {
	link    *link
	server  rendezvous.ServerAddr
	dialing *dialCall
	// refused is the last relay that refused a streams-only link (an
	// older relay): the client does not ask it again.
	refused rendezvous.ServerAddr
	// wanted is when a dial or an introduction last asked for the link
	// (streamLink): a stream is on its way, and the link stays up for
	// idle/2 from then at least, whatever it carries now.
	wanted time.Time
	// idle is how long a link that carries no stream is kept (0:
	// streamLinkIdle); tests shorten it.
	idle time.Duration
}

// streamLinkWanted reports whether a dial through the relay of sa
// should open a streams-only link beside the client's link: the link
// (or, before it is up, the transport it will most likely be) is UDP and
// the relay takes one, and the client has a byte-stream transport.
func (c *Client) streamLinkWanted(sa rendezvous.ServerAddr) bool {
	if len(c.streamDialers()) == 0 {
		return false
	}
	c.mu.Lock()
	refused := c.sl.refused == sa
	c.mu.Unlock()
	if refused {
		return false
	}
	switch l := c.current().(type) {
	case nil:
		d := c.ordered()
		return len(d) > 0 && d[0].Transport() == (UDPDialer{}).Transport()
	case *link:
		return l.streams == nil && l.streamLinkOK
	default:
		return false
	}
}

// streamDialers are the client's byte-stream link transports, in order.
func (c *Client) streamDialers() []LinkDialer {
	var out []LinkDialer
	for _, d := range c.ordered() {
		if isStreamDialer(d) {
			out = append(out, d)
		}
	}
	return out
}

// isStreamDialer reports whether d opens byte-stream links.
func isStreamDialer(d LinkDialer) bool {
	switch d.(type) {
	case TLSDialer, WSDialer:
		return true
	}
	return false
}

// startStreamLink makes sure a streams-only link to the relay of sa is
// up or on its way; the channel gets its error (nil: up) when it is.
func (c *Client) startStreamLink(sa rendezvous.ServerAddr) <-chan error {
	ch := make(chan error, 1)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_, err := c.streamLink(c.ctx, sa)
		ch <- err
	}()
	return ch
}

// streamLink returns the client's streams-only link to the relay of sa,
// opening it if there is none. Concurrent calls share one attempt.
// ErrStreamsUnsupported: the relay does not take one.
func (c *Client) streamLink(ctx context.Context, sa rendezvous.ServerAddr) (*link, error) {
	c.mu.Lock()
	switch {
	case c.ctx.Err() != nil:
		c.mu.Unlock()
		return nil, ErrClosed
	case c.sl.refused == sa:
		c.mu.Unlock()
		return nil, ErrStreamsUnsupported
	case c.sl.link != nil && c.sl.server == sa && c.sl.link.Err() == nil:
		// A stream is on its way (the peer of an introduction opens it
		// after the answer, a forwarding delay later): the link must not
		// go idle under it (keepStreamLink).
		c.sl.wanted = time.Now()
		l := c.sl.link
		c.mu.Unlock()
		return l, nil
	}
	call := c.sl.dialing
	if call == nil {
		call = &dialCall{done: make(chan struct{})}
		c.sl.dialing = call
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.dialStreamLink(call, sa)
		}()
	}
	c.mu.Unlock()
	select {
	case <-call.done:
		if call.err != nil {
			return nil, call.err
		}
		return call.link.(*link), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// dialStreamLink opens a streams-only link to sa over the client's
// byte-stream transports, one after the other, and installs it.
func (c *Client) dialStreamLink(call *dialCall, sa rendezvous.ServerAddr) {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.DialTimeout)
	var token string
	if c.cfg.Token != nil {
		token = c.cfg.Token()
	}
	// It takes streams too: a dialler on a byte-stream link opens its
	// session's stream to it when this node, on a UDP link, was dialled
	// (Rung.Introduced).
	p := LinkParams{Server: sa, Key: c.cfg.Key, Token: token, Handler: (*clientHandler)(c), Logger: c.log, streamsOnly: true, acceptStream: c.cfg.AcceptStream}
	var l Link
	var errs []error
	for _, d := range c.streamDialers() {
		var err error
		if l, err = d.DialLink(ctx, p); err == nil {
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", d.Transport(), err))
		var se *ServerError
		if errors.As(err, &se) || ctx.Err() != nil {
			break // the relay answered: another transport gets the same answer
		}
	}
	cancel()
	var err error
	switch sl, _ := l.(*link); {
	case l == nil:
		err = fmt.Errorf("relay: streams-only link: %w", errors.Join(errs...))
		if errors.Is(err, ErrProtocol) {
			// A relay from before streams-only links refuses the
			// STREAMS-HELLO.
			err = fmt.Errorf("%w: %w", ErrStreamsUnsupported, err)
		}
	case sl == nil || sl.streams == nil:
		l.Close()
		err = fmt.Errorf("%w: the relay offers no relayed streams", ErrStreamsUnsupported)
	}
	c.mu.Lock()
	c.sl.dialing = nil
	if err == nil && c.ctx.Err() != nil {
		l.Close()
		err = ErrClosed
	}
	var old *link
	if err == nil {
		old = c.sl.link
		c.sl.link, c.sl.server = l.(*link), sa
	} else if errors.Is(err, ErrStreamsUnsupported) {
		c.sl.refused = sa
	}
	c.mu.Unlock()
	call.link, call.err = l, err
	if err != nil {
		call.link = nil
	}
	close(call.done)
	if old != nil {
		old.Close()
	}
	if err != nil {
		c.log.Debug("relay: no streams-only link", "relay", sa.String(), "err", err)
		return
	}
	c.log.Debug("relay: streams-only link up", "relay", sa.String(), "transport", l.Transport())
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.keepStreamLink(l.(*link))
	}()
}

// keepStreamLink closes l once it carried no stream for streamLinkIdle
// and nobody asked for it meanwhile (streamLink), or the client closed;
// it forgets l when it ended.
func (c *Client) keepStreamLink(l *link) {
	c.mu.Lock()
	every := c.sl.idle
	c.mu.Unlock()
	if every <= 0 {
		every = streamLinkIdle
	}
	every /= 2
	t := time.NewTicker(every)
	defer t.Stop()
	idle := 0
	for done := false; !done; {
		select {
		case <-l.Done():
			done = true
		case <-c.ctx.Done():
			l.Close()
			done = true
		case <-t.C:
			c.mu.Lock()
			wanted := c.sl.link == l && time.Since(c.sl.wanted) < every
			c.mu.Unlock()
			if l.streams.open() > 0 || wanted {
				idle = 0
				continue
			}
			if idle++; idle >= 2 {
				l.Close()
				done = true
			}
		}
	}
	c.mu.Lock()
	if c.sl.link == l {
		c.sl.link = nil
	}
	c.mu.Unlock()
}

// streamCarrier is the link a relayed stream to a peer opens on: the
// client's link when it carries streams, else its streams-only link
// (nil: neither).
func (c *Client) streamCarrier() *link {
	if l, ok := c.current().(*link); ok && l.streams != nil {
		return l
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.sl.link; l != nil && l.Err() == nil && l.streams != nil {
		return l
	}
	return nil
}
