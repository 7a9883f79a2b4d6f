package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
)

// maxClientStreams is how many relayed streams a link holds at once,
// dialled and accepted together (the relay's per-peer limit is lower by
// default).
const maxClientStreams = 64

// streamMux is a byte-stream link's relayed streams.
type streamMux struct {
	local identity.PeerID
	co    *coalescer
	// accept gets each stream a peer opened; nil: OPENs are refused.
	accept func(peer identity.PeerID, c net.Conn)
	log    *slog.Logger

	mu    sync.Mutex
	conns map[streamRef]*streamConn
	next  uint32
	err   error // the link ended

	goneRef streamRef // the last unknown stream answered (the read goroutine's)
}

func newStreamMux(local identity.PeerID, co *coalescer, accept func(identity.PeerID, net.Conn), log *slog.Logger) *streamMux {
	return &streamMux{local: local, co: co, accept: accept, log: log, conns: make(map[streamRef]*streamConn)}
}

// send queues a frame on the link (waiting while the link's write buffer
// is full).
func (m *streamMux) send(frame []byte) error { return m.co.sendFrame(frame) }

// sendData queues a DATA frame of p (at most streamChunk bytes); while the
// link's write buffer is full it waits, until stop or stop2 is closed
// (errNoRoom).
func (m *streamMux) sendData(ref streamRef, p []byte, stop, stop2 <-chan struct{}) error {
	return m.co.appendWithin(func(b []byte) []byte { return appendStreamFrame(b, frameData, ref, p) }, stop, stop2)
}

// trySend queues a frame unless the link's write buffer is full: for
// answers from the link's read goroutine, which must not wait.
func (m *streamMux) trySend(frame []byte) { m.co.trySendFrame(frame) }

func (m *streamMux) forget(c *streamConn) {
	m.mu.Lock()
	if m.conns[c.ref] == c {
		delete(m.conns, c.ref)
	}
	m.mu.Unlock()
}

// dial opens a stream to peer; with wait, it waits for the peer to
// accept it (its first WINDOW).
func (m *streamMux) dial(ctx context.Context, peer identity.PeerID, wait bool) (*streamConn, error) {
	m.mu.Lock()
	if m.err != nil {
		m.mu.Unlock()
		return nil, m.err
	}
	if len(m.conns) >= maxClientStreams {
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: %d relayed streams open on this link", ErrRelayFull, maxClientStreams)
	}
	m.next++
	if m.next >= acceptorBit {
		m.next = 1
	}
	ref := streamRef{peer: peer, id: m.next}
	c := newStreamConn(m, ref)
	m.conns[ref] = c
	m.mu.Unlock()
	open := appendStreamFrame(nil, frameOpen, ref, nil)
	if err := m.co.appendWithin(func(b []byte) []byte { return append(b, open...) }, ctx.Done(), nil); err != nil {
		// The link failed, or ctx ended while the link was backed up.
		m.forget(c)
		if err == errNoRoom {
			err = ctx.Err()
		}
		return nil, err
	}
	if !wait {
		return c, nil
	}
	select {
	case <-c.ready:
		return c, nil
	case <-c.done:
		m.forget(c)
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		if err == nil {
			err = ErrStreamReset
		}
		return nil, err
	case <-ctx.Done():
		c.abort()
		return nil, ctx.Err()
	}
}

// frame handles a stream frame from the relay (the link's read
// goroutine: it must not block); false if it is malformed.
func (m *streamMux) frame(typ byte, body []byte) bool {
	ref, rest, ok := parseStream(body)
	if !ok {
		return false
	}
	if typ == frameOpen {
		if len(rest) != 0 || ref.id&acceptorBit == 0 {
			return false
		}
		m.opened(ref)
		return true
	}
	m.mu.Lock()
	c := m.conns[ref]
	m.mu.Unlock()
	if c == nil {
		if typ != frameClose && m.goneRef != ref {
			// A stream this end closed or gave up: the relay learns once
			// (its frames still in flight come after).
			m.goneRef = ref
			m.trySend(appendStreamFrame(nil, frameClose, ref, []byte{closeGone}))
		}
		return true
	}
	switch typ {
	case frameData:
		if !c.deliver(rest) {
			m.forget(c)
			c.fail(closeErr(closeOverrun))
			m.trySend(appendStreamFrame(nil, frameClose, ref, []byte{closeOverrun}))
		}
	case frameWindow:
		if len(rest) != 8 {
			return false
		}
		c.grant(rest)
	case frameClose:
		if len(rest) != 1 {
			return false
		}
		if rest[0] == closeFin {
			if c.peerClosed() {
				m.forget(c)
				go m.send(appendStreamFrame(nil, frameClose, ref, []byte{closeFin}))
			}
			return true
		}
		m.forget(c)
		c.fail(closeErr(rest[0]))
	default:
		return false
	}
	return true
}

// opened takes a peer's OPEN: the stream is granted its window and handed
// to accept, or refused.
func (m *streamMux) opened(ref streamRef) {
	refuse := func(code byte) { m.trySend(appendStreamFrame(nil, frameClose, ref, []byte{code})) }
	m.mu.Lock()
	switch {
	case m.accept == nil || m.err != nil:
		m.mu.Unlock()
		refuse(closeRefused)
		return
	case len(m.conns) >= maxClientStreams:
		m.mu.Unlock()
		refuse(closeLimit)
		return
	}
	if _, dup := m.conns[ref]; dup {
		m.mu.Unlock()
		refuse(closeProtocol)
		return
	}
	c := newStreamConn(m, ref)
	m.conns[ref] = c
	m.mu.Unlock()
	// The first WINDOW tells a waiting dialler the stream was accepted;
	// the stream does not wait for it to go out (the link may be backed
	// up by this node's writes).
	if win := appendStreamFrame(nil, frameWindow, ref, windowBody(StreamWindow)); !m.co.tryAppend(win) {
		go func() {
			if err := m.send(win); err != nil {
				c.fail(err)
			}
		}()
	}
	go func() {
		m.log.Debug("relay: stream accepted", "peer", ref.peer.Short())
		m.accept(ref.peer, c)
	}()
}

// open returns how many streams the link holds.
func (m *streamMux) open() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.conns)
}

// fail ends every stream: the link ended with err.
func (m *streamMux) fail(err error) {
	m.mu.Lock()
	if m.err == nil {
		m.err = fmt.Errorf("%w: the link to the relay ended: %w", ErrStreamReset, err)
	}
	conns := m.conns
	m.conns = map[streamRef]*streamConn{}
	e := m.err
	m.mu.Unlock()
	for _, c := range conns {
		c.fail(e)
	}
}

// streamRetry is how often DialStream opens again while the peer is not
// linked to the relay yet, or has not consented yet (it links and allows
// the dialler when the introduction reaches it).
const streamRetry = 100 * time.Millisecond

// DialStream opens a relayed stream to peer through the client's current
// link, or its streams-only link beside a UDP one (docs/protocol.md,
// "Relayed streams") and waits until the peer accepted it. While the peer
// is not linked or has not consented yet it tries again every 100 ms
// until ctx ends. Errors: ErrStreamsUnsupported (a UDP link without a
// streams-only link, a relay without relayed streams, or a peer that
// cannot take one: relay QUIC packets instead), ErrStreamRefused, ErrRelayFull (a
// stream limit), and ctx's error with the last refusal.
func (c *Client) DialStream(ctx context.Context, peer identity.PeerID) (net.Conn, error) {
	var last error
	for {
		l := c.streamCarrier()
		if l == nil {
			return nil, ErrStreamsUnsupported
		}
		conn, err := l.streams.dial(ctx, peer, true)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil && last != nil {
			return nil, fmt.Errorf("%w (%w)", err, last)
		}
		if !retryStream(err) {
			return nil, err
		}
		last = err
		if err := waitRetry(ctx, last); err != nil {
			return nil, err
		}
	}
}

// retryStream reports whether an open that failed with err is tried
// again: the peer is not linked, or has not consented, yet.
func retryStream(err error) bool {
	return errors.Is(err, ErrPeerNotConnected) || errors.Is(err, ErrNotAllowed)
}

// waitRetry waits streamRetry; ctx's error, with cause, if it ends first.
func waitRetry(ctx context.Context, cause error) error {
	t := time.NewTimer(streamRetry)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("%w (%w)", ctx.Err(), cause)
	case <-t.C:
		return nil
	}
}

// OpenStream opens a relayed stream to peer through the client's current
// link (or streams-only link) without waiting for the peer: bytes written go out at once (up to
// StreamWindow before the peer's first WINDOW), and a refusal shows as
// the error of the stream's Read and Write (as DialStream's errors).
// ErrStreamsUnsupported at once on a link that cannot carry streams.
func (c *Client) OpenStream(ctx context.Context, peer identity.PeerID) (net.Conn, error) {
	l := c.streamCarrier()
	if l == nil {
		return nil, ErrStreamsUnsupported
	}
	return l.streams.dial(ctx, peer, false)
}

// StreamsOffered reports whether the client's current link can carry
// relayed streams (a byte-stream link to a relay that offers them).
func (c *Client) StreamsOffered() bool {
	l, ok := c.current().(*link)
	return ok && l.streams != nil
}

// LinkCarries says what the client's link carries for the node's peers,
// as a listener's answer tells its dialler (candidate.PeerInfo.RelayLink):
// RelayLinkStreams when peers may open relayed streams to it (a
// byte-stream link to a relay that offers them, and the client takes
// them), RelayLinkPackets when only packets. Without a link (a listener
// links when it is introduced, after it answered) it says what the next
// link will carry where that is known: packets when the client takes no
// streams, or when its first transport is UDP and udpWorks (the node
// reaches its server over UDP: it registered over QUIC); streams when its
// first transport is a byte stream; else "".
func (c *Client) LinkCarries(udpWorks bool) string {
	return c.linkCarries(c.current(), udpWorks)
}

// linkCarries is LinkCarries of l (nil: of the next link).
func (c *Client) linkCarries(l Link, udpWorks bool) string {
	if l == nil {
		switch d := c.ordered(); {
		case c.cfg.AcceptStream == nil:
			return candidate.RelayLinkPackets
		case len(d) > 0 && d[0].Transport() == (UDPDialer{}).Transport() && udpWorks:
			return candidate.RelayLinkPackets
		case len(d) > 0 && isStreamDialer(d[0]):
			// It will most likely link over a byte stream: a dialler on a
			// UDP link then opens a streams-only link for the session
			// (streamlink.go) while this node links.
			return candidate.RelayLinkStreams
		}
		return ""
	}
	if sl, ok := l.(*link); ok && sl.streams != nil && c.cfg.AcceptStream != nil {
		return candidate.RelayLinkStreams
	}
	return candidate.RelayLinkPackets
}
