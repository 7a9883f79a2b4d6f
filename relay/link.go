package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/internal/tlstake"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/rendezvous"
)

// Link is one connection from a node to a relay server, over one
// transport. Packets to peers go out with Send; what the relay sends comes
// in through the LinkParams.Handler the link was dialled with.
//
// Transports implement a LinkDialer. UDP (QUIC datagrams) and TLS over TCP
// are built in; any transport that yields a reliable byte stream
// (WebSocket, a tunnel through an HTTP CONNECT proxy) is a LinkDialer that
// opens its net.Conn and hands it to NewStreamLink.
type Link interface {
	// Transport names the link's transport: "udp", "tls", ...
	Transport() string
	// Send sends one packet to peer through the relay. It may block
	// briefly under back-pressure; it never waits for the peer.
	Send(peer identity.PeerID, pkt []byte) error
	// Allow tells the relay that peer may send to this node (recipient
	// consent, ClientConfig.Consent). A relay without consent (an older
	// one) is not told.
	Allow(peer identity.PeerID) error
	// Done is closed when the link has ended; Err then says why.
	Done() <-chan struct{}
	Err() error
	// Close ends the link.
	Close() error
}

// Handler receives what the relay sends on a link. Its methods are called
// from the link's read goroutine and must not block; pkt is only valid
// during the call.
type Handler interface {
	// Packet is a packet from peer.
	Packet(from identity.PeerID, pkt []byte)
	// Notice says the relay did not forward a packet to peer: it is not
	// connected (ErrPeerNotConnected), it has not consented to packets
	// from this node (ErrNotAllowed), or the relay is at a session limit
	// (ErrRelayFull).
	Notice(peer identity.PeerID, err error)
}

// LinkParams is what a LinkDialer needs to open a link.
type LinkParams struct {
	Server rendezvous.ServerAddr
	Key    *identity.Key
	Token  string // "" for none
	// Consent asks the relay to forward to this node only packets from
	// peers it allows (Link.Allow) or sends to (ClientConfig.Consent).
	Consent bool
	Handler Handler
	Logger  *slog.Logger

	// allowed, set by a Client, returns the peers it allows now: their
	// ALLOWs go out with the consent request, so they are in force when
	// the link is up.
	allowed func() []identity.PeerID

	// gate, set by a Client's race of transports, lets one link of the
	// race say HELLO at a time (see helloGate); gateFirst: this link is
	// the race's first transport.
	gate      *helloGate
	gateFirst bool
	// route, set by a node's relay rung, lets a UDP link's data packets
	// go to quic-go in place (see dataLink).
	route routeFunc
	// acceptStream, set by a Client with ClientConfig.AcceptStream, takes
	// the relayed streams peers open to the node (byte-stream links).
	acceptStream func(peer identity.PeerID, c net.Conn)
	noRecords    bool // a test's node of the last age: no ALPNRecord
	streamsOnly  bool // a streams-only link (streamlink.go): STREAMS-HELLO, not HELLO
}

// LinkDialer opens links over one transport.
type LinkDialer interface {
	Transport() string
	DialLink(ctx context.Context, p LinkParams) (Link, error)
}

// UDPDialer opens links as QUIC connections with ALPN and DATAGRAM frames
// (RFC 9221) from the node's shared UDP socket: [peer key][packet] per
// datagram, a control stream for HELLO, NOTICE and ERROR.
type UDPDialer struct {
	Socket *quic.Transport
	// KeepAlive is how often an idle link sends a QUIC packet. Zero: 10s.
	KeepAlive time.Duration
	// IdleTimeout ends a link that hears nothing for this long (the
	// server's shorter one applies). A supernode's links use a short one,
	// so that a volunteer that vanishes is noticed in seconds. Zero: 1 min.
	IdleTimeout time.Duration
}

// Transport implements LinkDialer.
func (UDPDialer) Transport() string { return "udp" }

// DialLink implements LinkDialer.
func (d UDPDialer) DialLink(ctx context.Context, p LinkParams) (Link, error) {
	if d.Socket == nil {
		return nil, fmt.Errorf("%w: no UDP socket", ErrNoRelay)
	}
	addr, err := net.DefaultResolver.LookupNetIP(ctx, "ip", p.Server.Host)
	if err != nil || len(addr) == 0 {
		return nil, fmt.Errorf("relay: resolve %s: %w", p.Server.Host, err)
	}
	tlsCfg, pin, err := identity.ClientTLSConfig(p.Key, p.Server.ID, ALPN)
	if err != nil {
		return nil, err
	}
	ua := &net.UDPAddr{IP: addr[0].Unmap().AsSlice(), Port: int(p.Server.Port)}
	keepAlive, idle := d.KeepAlive, d.IdleTimeout
	if keepAlive <= 0 {
		keepAlive = 10 * time.Second
	}
	if idle <= 0 {
		idle = time.Minute // the server's shorter one applies
	}
	qc, err := d.Socket.Dial(ctx, ua, tlsCfg, &quic.Config{
		EnableDatagrams:       true,
		KeepAlivePeriod:       keepAlive,
		MaxIdleTimeout:        idle,
		MaxIncomingStreams:    -1,
		MaxIncomingUniStreams: -1,
	})
	if err != nil {
		if perr := pin.Err(); perr != nil {
			return nil, perr
		}
		return nil, mapQUICErr(err)
	}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		qc.CloseWithError(0, "")
		return nil, err
	}
	var data atomic.Pointer[dataLink]
	var ctlMu sync.Mutex
	ctl := writerFunc(func(b []byte) error {
		ctlMu.Lock()
		defer ctlMu.Unlock()
		st.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, err := st.Write(b)
		return err
	})
	var l *link
	l = &link{transport: "udp", h: p.Handler, log: p.Logger, done: make(chan struct{}), ctl: ctl, data: &data,
		sendPacket: func(peer identity.PeerID, pkt []byte) error {
			if d := data.Load(); d != nil && d.send(peer, pkt) {
				return nil
			}
			// SendDatagram copies the datagram, so the buffer goes back
			// to the pool at once.
			b := append(append(getBuf(), peer[:]...), pkt...)
			err := qc.SendDatagram(b)
			putBuf(b)
			var tooLarge *quic.DatagramTooLargeError
			if errors.As(err, &tooLarge) {
				// Larger than a datagram on this path (a session that
				// fell back from a direct path with larger packets):
				// the control stream carries it, as on a TLS link.
				f := appendFrame(getBuf(), framePacket, peer[:], pkt)
				err = ctl(f)
				putBuf(f)
			}
			return err
		},
		sendSegments: func(peer identity.PeerID, b []byte, seg int) bool {
			d := data.Load()
			return d != nil && d.sendSegments(peer, b, seg)
		},
		closeTransport: func() {
			if d := data.Load(); d != nil {
				if l.isDetached.Load() && errors.Is(l.err, ErrClosed) {
					// Tell the relay the link is gone (else it holds
					// it until IdleTimeout).
					d.sendControl(appendFrame(nil, frameError, []byte{0}))
				}
				d.remove()
			}
			st.Close()
			qc.CloseWithError(0, "")
		},
	}
	if err := p.gate.hello(ctx, p.gateFirst, func() error { return l.hello(ctx, p.Token, p.Consent, p.allowed, st, st.SetReadDeadline) }); err != nil {
		l.closeTransport()
		return nil, mapQUICErr(err)
	}
	if paths, ok := d.Socket.Conn.(*pathsock.Conn); ok && l.dataToken != 0 {
		server := netip.AddrPortFrom(addr[0].Unmap(), p.Server.Port)
		var up func()
		if l.detachable {
			// Data packets work: leave the QUIC connection (the relay
			// then holds ~1 KB for this link instead of a connection).
			up = func() { ctl(appendFrame(nil, frameDetach)) }
			l.detached = func() {
				l.isDetached.Store(true)
				st.Close()
				qc.CloseWithError(0, "detached")
				l.log.Debug("relay: link detached", "server", server)
				every := l.keepalive
				if every <= 0 || every > keepAlive {
					every = keepAlive
				}
				go data.Load().keepalive(every)
			}
		}
		data.Store(startData(l, paths, server, l.dataToken, p.route, up))
		select {
		case <-l.done: // closed meanwhile: closeTransport may have missed it
			data.Load().remove()
		default:
		}
	}
	go l.readControl(st, nil)
	go func() {
		for {
			d, err := qc.ReceiveDatagram(context.Background())
			if err != nil {
				if !l.isDetached.Load() {
					l.fail(mapQUICErr(err))
				}
				return
			}
			if len(d) >= identityLen {
				l.packet(identity.PeerID(d[:identityLen]), d[identityLen:])
			}
		}
	}()
	return l, nil
}

// mapQUICErr turns the relay's application close into a *ServerError.
func mapQUICErr(err error) error {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote && ae.ErrorCode != 0 && ae.ErrorCode < 0x100 {
		return &ServerError{Code: byte(ae.ErrorCode), Reason: ae.ErrorMessage}
	}
	return err
}

// TLSDialer opens links as TLS 1.3 over TCP (by default to the server's
// TLS port, 443 where it may bind it) with length-prefixed frames.
type TLSDialer struct {
	// DialTCP opens the TCP connection. Nil: a net.Dialer.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Transport implements LinkDialer.
func (TLSDialer) Transport() string { return "tls" }

// DialLink implements LinkDialer.
func (d TLSDialer) DialLink(ctx context.Context, p LinkParams) (Link, error) {
	dial := d.DialTCP
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
	}
	raw, err := dial(ctx, "tcp", p.Server.TCPHostPort())
	if err != nil {
		return nil, err
	}
	return NewStreamLink(ctx, raw, "tls", p)
}

// NewStreamLink runs the relay protocol over conn, a reliable byte stream
// to the relay server (a TCP connection, a WebSocket, a proxy tunnel):
// a TLS 1.3 handshake that pins the server's key and proves the node's
// (in HELLO under ALPNRecord or ALPNKeyProof, which it offers first; with
// a client certificate under ALPN, for a server without them), then
// HELLO; under ALPNRecord the link leaves TLS for the relay's records
// after WELCOME. transport names the link. On error conn is closed. ctx
// bounds the setup only.
func NewStreamLink(ctx context.Context, conn net.Conn, transport string, p LinkParams) (Link, error) {
	alpns := []string{ALPNRecord, ALPNKeyProof, ALPN}[b2u(p.noRecords):]
	tlsCfg, pin, err := identity.ClientTLSConfig(p.Key, p.Server.ID, alpns...)
	if err != nil {
		conn.Close()
		return nil, err
	}
	// crypto/tls reads no further than the TLS record it needs: the
	// relay's first record after WELCOME stays on the connection.
	bounded := tlstake.NewBounded(conn)
	tc := tls.Client(bounded, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		if perr := pin.Err(); perr != nil {
			return nil, perr
		}
		return nil, err
	}
	var proof []byte
	cs := tc.ConnectionState()
	switch cs.NegotiatedProtocol {
	case ALPN:
	case ALPNKeyProof, ALPNRecord:
		if proof, err = appendKeyProof(nil, p.Key, cs); err != nil {
			conn.Close()
			return nil, err
		}
	default:
		conn.Close()
		return nil, fmt.Errorf("%w: server refused ALPN %s", ErrNoRelay, ALPN)
	}
	// rw: tc, or under ALPNRecord after WELCOME the records on conn.
	rw := &streamRW{tc: tc}
	l := &link{transport: transport, h: p.Handler, log: p.Logger, done: make(chan struct{}), ctl: writerFunc(rw.write),
		helloProof:     proof,
		closeTransport: func() { rw.close() },
		wantStreams:    p.acceptStream != nil,
		streamsOnly:    p.streamsOnly,
	}
	if cs.NegotiatedProtocol == ALPNRecord {
		if l.welcomed, err = rw.useRecords(cs, bounded); err != nil {
			conn.Close()
			return nil, err
		}
	}
	write := rw.write
	co := newCoalescer(write)
	l.sendPacket = co.send
	l.streams = newStreamMux(p.Key.ID(), co, p.acceptStream, p.Logger)
	stop := context.AfterFunc(ctx, func() { tc.SetReadDeadline(time.Now()) })
	err = p.gate.hello(ctx, p.gateFirst, func() error { return l.hello(ctx, p.Token, p.Consent, p.allowed, rw, tc.SetReadDeadline) })
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		rw.close()
		return nil, err
	}
	if !l.streamsOK {
		l.streams = nil
	}
	go l.readControl(rw, tc.SetReadDeadline)
	go l.pingLoop(write)
	go co.run(l)
	return l, nil
}

// link is a Link over a control byte stream plus a packet path (datagrams
// on QUIC, the same stream's PACKET frames on TLS).
type link struct {
	transport  string
	h          Handler
	log        *slog.Logger
	ctl        io.Writer
	sendPacket func(peer identity.PeerID, pkt []byte) error
	// sendSegments, if set, sends packets of one size at once (GSO);
	// false: send each with sendPacket.
	sendSegments   func(peer identity.PeerID, b []byte, seg int) bool
	closeTransport func()
	// helloProof starts HELLO's body: the node's key proof under
	// ALPNKeyProof and ALPNRecord; nil: none (its certificate proved it).
	helloProof []byte
	// welcomed, if set, runs once WELCOME was read (ALPNRecord: the link
	// moves to records).
	welcomed   func() error
	keepalive  time.Duration
	consent    bool                      // the relay understands ALLOW frames (WELCOME)
	dataToken  uint64                    // the relay takes data packets with this token (WELCOME); 0: not
	detachable bool                      // the relay lets the link detach (WELCOME)
	linkKey    [linkKeyLen]byte          // proves the node in a detached link's move (rebind.go)
	data       *atomic.Pointer[dataLink] // a UDP link's data packets; nil: none
	// detached, if set, is called when the relay answered DETACH: the
	// link goes on as data packets alone (a UDP link's).
	detached   func()
	isDetached atomic.Bool

	frags reassembler // fragments from detached senders (frag.go)

	// streams: a byte-stream link's relayed streams (nil: none: a UDP
	// link, or a relay without them); streamsOK: the relay offers them
	// (WELCOME); wantStreams: the node accepts them (FEATURES).
	streams     *streamMux
	streamsOK   bool
	wantStreams bool

	streamsOnly  bool // a streams-only link (STREAMS-HELLO)
	streamLinkOK bool // a UDP link whose relay takes a streams-only link beside it (WELCOME)

	once sync.Once
	done chan struct{}
	err  error
}

// packet hands a packet from src to the Handler, fragments joined first.
func (l *link) packet(src identity.PeerID, pkt []byte) {
	if isFrag(pkt) {
		full, ok := l.frags.add(src, pkt)
		if !ok {
			return
		}
		pkt = full
	}
	l.h.Packet(src, pkt)
}

func (l *link) Transport() string     { return l.transport }
func (l *link) Done() <-chan struct{} { return l.done }
func (l *link) Close() error          { l.fail(ErrClosed); return nil }
func (l *link) Send(p identity.PeerID, b []byte) error {
	select {
	case <-l.done:
		return l.err
	default:
	}
	return l.sendPacket(p, b)
}

func (l *link) Allow(p identity.PeerID) error {
	select {
	case <-l.done:
		return l.err
	default:
	}
	if !l.consent {
		return nil
	}
	if l.isDetached.Load() {
		return l.data.Load().allow(p)
	}
	_, err := l.ctl.Write(appendFrame(nil, frameAllow, p[:]))
	return err
}

func (l *link) Err() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

func (l *link) fail(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.done)
		l.closeTransport()
		if l.streams != nil {
			l.streams.fail(err)
		}
	})
}

// hello sends HELLO and waits for WELCOME (or ERROR); with consent, it
// then asks the relay for recipient consent (an empty ALLOW).
func (l *link) hello(ctx context.Context, token string, consent bool, allowed func() []identity.PeerID, r io.Reader, setDeadline func(time.Time) error) error {
	if _, err := l.ctl.Write(appendFrame(nil, l.helloType(), l.helloProof, []byte(token))); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		setDeadline(d)
	}
	typ, body, _, err := readFrame(r, nil)
	setDeadline(time.Time{})
	if err != nil {
		return err
	}
	switch {
	case typ == frameError && len(body) >= 1:
		return &ServerError{Code: body[0], Reason: string(body[1:])}
	case typ != frameWelcome || len(body) < 4:
		return fmt.Errorf("%w: want WELCOME, got frame 0x%02x", ErrProtocol, typ)
	}
	if l.welcomed != nil {
		if err := l.welcomed(); err != nil {
			return err
		}
	}
	l.keepalive = time.Duration(binary.BigEndian.Uint16(body[2:4])) * time.Second
	l.consent = len(body) >= 5 && body[4]&welcomeConsent != 0
	if len(body) >= 5+linkTokenLen && body[4]&welcomeData != 0 {
		l.dataToken = binary.BigEndian.Uint64(body[5 : 5+linkTokenLen])
		if k := body[5+linkTokenLen:]; body[4]&welcomeDetach != 0 && len(k) >= linkKeyLen {
			l.detachable = true
			l.linkKey = [linkKeyLen]byte(k[:linkKeyLen])
		}
	}
	l.streamsOK = len(body) >= 5 && body[4]&welcomeStreams != 0 && l.streams != nil
	l.streamLinkOK = len(body) >= 5 && body[4]&welcomeStreamLink != 0
	if l.streamsOK {
		// Also without streams: the relay then tells openers at once
		// that this node takes none.
		var f byte
		if l.wantStreams {
			f = featureStreams
		}
		if _, err := l.ctl.Write(appendFrame(nil, frameFeatures, []byte{f})); err != nil {
			return err
		}
	}
	if consent && l.consent {
		var peers []identity.PeerID
		if allowed != nil {
			peers = allowed()
		}
		return l.askConsent(ctx, peers, r, setDeadline)
	}
	return nil
}

// consentPing is the body of the PING that follows a link's empty ALLOW.
var consentPing = []byte("consent")

// askConsent asks the relay for recipient consent (an empty ALLOW),
// allows peers, and waits until the relay enforces both: the relay reads a link's control
// frames in order, so its answer to the PING sent after the ALLOW says
// that the ALLOW was applied. Without the wait, a stranger's packets in
// the round trip after WELCOME would open a session to this node (the
// relay ends it when the ALLOW arrives, but a QUIC handshake may have
// completed by then). Packets and notices that come first are handled
// as readControl would.
func (l *link) askConsent(ctx context.Context, peers []identity.PeerID, r io.Reader, setDeadline func(time.Time) error) error {
	b := appendFrame(nil, frameAllow)
	for _, p := range peers {
		b = append(b, appendFrame(nil, frameAllow, p[:])...)
	}
	if _, err := l.ctl.Write(append(b, appendFrame(nil, framePing, consentPing)...)); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		setDeadline(d)
	}
	defer setDeadline(time.Time{})
	var buf []byte
	for {
		typ, body, b, err := readFrame(r, buf)
		buf = b
		if err != nil {
			return err
		}
		switch typ {
		case framePong:
			if bytes.Equal(body, consentPing) {
				return nil
			}
		case framePacket, frameNotice:
			l.deliver(typ, body)
		case frameOpen, frameData, frameWindow, frameClose:
			if l.streams == nil || !l.streams.frame(typ, body) {
				return fmt.Errorf("%w: bad stream frame 0x%02x", ErrProtocol, typ)
			}
		case frameError:
			if len(body) >= 1 {
				return &ServerError{Code: body[0], Reason: string(body[1:])}
			}
			return fmt.Errorf("%w: empty ERROR frame", ErrProtocol)
		case framePing:
			if _, err := l.ctl.Write(appendFrame(nil, framePong, body)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: want PONG, got frame 0x%02x", ErrProtocol, typ)
		}
	}
}

// deliver hands a PACKET or NOTICE frame from the relay to the handler
// (a malformed one is ignored).
func (l *link) deliver(typ byte, body []byte) {
	switch {
	case typ == framePacket && len(body) >= identityLen:
		l.packet(identity.PeerID(body[:identityLen]), body[identityLen:])
	case typ == frameNotice && len(body) == identityLen+1:
		l.h.Notice(identity.PeerID(body[:identityLen]), noticeErr(body[identityLen]))
	}
}

// readControl reads frames until the link ends.
func (l *link) readControl(r io.Reader, setDeadline func(time.Time) error) {
	var buf []byte
	for {
		if setDeadline != nil && l.keepalive > 0 {
			setDeadline(time.Now().Add(3 * l.keepalive))
		}
		typ, body, b, err := readFrame(r, buf)
		buf = b
		if err != nil {
			l.fail(mapQUICErr(err))
			return
		}
		switch typ {
		case framePacket, frameNotice:
			l.deliver(typ, body)
		case frameOpen, frameData, frameWindow, frameClose:
			if l.streams == nil || !l.streams.frame(typ, body) {
				l.fail(fmt.Errorf("%w: bad stream frame 0x%02x", ErrProtocol, typ))
				return
			}
		case frameDetach:
			if l.detached != nil {
				l.detached()
				return
			}
			l.fail(fmt.Errorf("%w: unexpected frame 0x%02x", ErrProtocol, typ))
			return
		case frameError:
			if len(body) >= 1 {
				l.fail(&ServerError{Code: body[0], Reason: string(body[1:])})
				return
			}
		case framePing:
			l.ctl.Write(appendFrame(nil, framePong, body))
		case framePong:
		default:
			l.fail(fmt.Errorf("%w: unexpected frame 0x%02x", ErrProtocol, typ))
			return
		}
	}
}

// noticeErr is the named error of a NOTICE code.
func noticeErr(code byte) error {
	switch code {
	case noticeSessionLimit:
		return ErrRelayFull
	case noticeNotAllowed:
		return ErrNotAllowed
	}
	return ErrPeerNotConnected
}

// pingLoop keeps a byte-stream link alive (QUIC has its own keep-alive).
func (l *link) pingLoop(write func([]byte) error) {
	ka := l.keepalive
	if ka <= 0 {
		ka = 10 * time.Second
	}
	t := time.NewTicker(ka)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
			var b [8]byte
			rand.Read(b[:])
			if err := write(appendFrame(nil, framePing, b[:])); err != nil {
				l.fail(err)
				return
			}
		}
	}
}
