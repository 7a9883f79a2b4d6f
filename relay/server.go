package relay

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/reachp2p/reach/identity"
)

// ServerConfig configures a relay Server. Every zero value is usable.
type ServerConfig struct {
	// Secrets are the token secrets. Empty: no token is required. With
	// secrets, a client must present a token (NewToken) made with any one
	// of them, so a secret is rotated by adding the new one first, issuing
	// tokens with it, and removing the old one once its tokens expired.
	Secrets [][]byte
	// MaxClients is how many peers may be connected at once; one more gets
	// ERROR full (ErrRelayFull). Zero: 100000.
	MaxClients int
	// MaxSessions is how many relay sessions may exist at once. A session
	// is an ordered pair of peers (from, to) that sent a packet within
	// SessionIdle. A packet that would open one more is dropped and its
	// sender gets a NOTICE session_limit (ErrRelayFull); existing sessions
	// are unaffected. Zero: 10000.
	MaxSessions int
	// SessionIdle is how long a session lasts without packets. Zero: 60s
	// (relayed QUIC sessions send keep-alives every 10s).
	SessionIdle time.Duration
	// PeerRate limits what one peer may send through the relay, in bytes
	// per second (the excess is dropped, which QUIC's congestion control
	// reads as loss). Zero: no limit.
	PeerRate int
	// PeerBurst is the bucket size of PeerRate in bytes. Zero: PeerRate/4
	// (250 ms at full rate), at least 64 KiB.
	PeerBurst int
	// ConnRate limits new links per second from one IP address; more are
	// refused with ERROR rate_limited (ErrRateLimited). Zero: 10 per
	// second. Negative: no limit.
	ConnRate float64
	// ConnBurst is the number of links an IP address may open at once
	// before ConnRate applies. Zero: 20.
	ConnBurst int
	// SendQueue is how many packets may wait for one peer's link; more are
	// dropped. Zero: 512.
	SendQueue int
	// IdleTimeout closes a link that sends nothing for this long (QUIC idle
	// timeout; TCP read deadline). Clients are told to ping at a third of
	// it. Zero: 30s.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds a new link's HELLO. Zero: 10s.
	HandshakeTimeout time.Duration
	// TotalRate limits what all peers together may send through the
	// relay, in bytes per second (the excess is dropped, like PeerRate's).
	// Its bucket is TotalRate/4, at least 64 KiB. Zero: no limit.
	TotalRate int
	// Authorize, if set, decides instead of Secrets whether a peer may
	// link: it gets the peer's proved ID and the token of its HELLO ("" for
	// none) and returns nil to admit it, or an error to refuse it
	// (ErrTokenExpired is sent as token_expired, anything else as
	// bad_token). A supernode uses it for its allow-list and for tokens
	// its rendezvous servers issued. Nil: Secrets decide.
	Authorize func(peer identity.PeerID, token string) error
	// Logger receives the server's logs. Nil: discard.
	Logger *slog.Logger
}

func (c ServerConfig) withDefaults() ServerConfig {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxClients, 100000)
	def(&c.MaxSessions, 10000)
	def(&c.SendQueue, 512)
	def(&c.ConnBurst, 20)
	defD(&c.SessionIdle, 60*time.Second)
	defD(&c.IdleTimeout, 30*time.Second)
	defD(&c.HandshakeTimeout, 10*time.Second)
	if c.ConnRate == 0 {
		c.ConnRate = 10
	}
	if c.PeerRate > 0 && c.PeerBurst <= 0 {
		c.PeerBurst = max(c.PeerRate/4, 64<<10)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Server forwards packets between peers connected to it, addressed by peer
// ID. It has no listeners of its own: the rendezvous server hands it the
// QUIC connections and TLS connections that negotiated ALPN (ServeQUIC,
// ServeTLS), so signalling and relay share the server's ports. Its
// methods are safe for concurrent use.
type Server struct {
	cfg ServerConfig
	log *slog.Logger
	m   *metrics

	mu       sync.RWMutex
	peers    map[identity.PeerID]*peerLink
	sessions int
	ipRates  map[netip.Addr]*ipRate
	total    *rate.Limiter // TotalRate; nil: unlimited

	sweepOnce sync.Once
}

type ipRate struct {
	lim  *rate.Limiter
	seen time.Time
}

// NewServer makes a relay server.
func NewServer(cfg ServerConfig) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:     cfg,
		m:       new(metrics),
		log:     cfg.Logger,
		peers:   make(map[identity.PeerID]*peerLink),
		ipRates: make(map[netip.Addr]*ipRate),
	}
	if cfg.TotalRate > 0 {
		s.total = rate.NewLimiter(rate.Limit(cfg.TotalRate), max(cfg.TotalRate/4, 64<<10))
	}
	return s
}

// PeerStats is one linked peer's share of a relay's work.
type PeerStats struct {
	Peer      identity.PeerID
	Transport string // "udp", "tls", ...
	Sessions  int    // sessions it sends on now (destinations)
	Packets   uint64 // packets it sent that were forwarded
	Bytes     uint64 // payload bytes it sent that were forwarded
}

// Peers returns the peers linked now and what the relay forwarded for
// each.
func (s *Server) Peers() []PeerStats {
	s.mu.RLock()
	peers := make([]*peerLink, 0, len(s.peers))
	for _, p := range s.peers {
		peers = append(peers, p)
	}
	s.mu.RUnlock()
	out := make([]PeerStats, 0, len(peers))
	for _, p := range peers {
		p.omu.Lock()
		n := len(p.out)
		p.omu.Unlock()
		out = append(out, PeerStats{Peer: p.id, Transport: p.transport.String(), Sessions: n,
			Packets: p.nPackets.Load(), Bytes: p.nBytes.Load()})
	}
	return out
}

// peerLink is one connected peer, over either transport.
type peerLink struct {
	srv       *Server
	id        identity.PeerID
	ip        netip.Addr
	transport transport
	lim       *rate.Limiter // nil: unlimited
	// write sends one queued message; buf has frameHeader bytes of room
	// in front of the peer key and payload.
	write func(buf []byte) error
	// writeBatch, if set, sends several queued messages at once (byte
	// stream links: one write instead of one per packet); nil: write
	// each.
	writeBatch func(bufs [][]byte) error
	// fail closes the link with an ERROR code (0: quietly).
	fail func(code byte, reason string)

	qmu    sync.Mutex
	queue  [][]byte
	wake   chan struct{}
	closed bool

	omu     sync.Mutex
	out     map[identity.PeerID]time.Time // destinations of its sessions → last packet
	notices map[identity.PeerID]time.Time // last NOTICE sent about a destination

	nPackets, nBytes atomic.Uint64 // what it sent that was forwarded
}

// ServeQUIC serves one QUIC connection that negotiated ALPN; it returns
// when the link ends. The connection must have datagrams enabled.
func (s *Server) ServeQUIC(ctx context.Context, qc *quic.Conn) {
	id, err := identity.PeerIDFromState(qc.ConnectionState().TLS)
	if err != nil || !qc.ConnectionState().SupportsDatagrams.Remote {
		qc.CloseWithError(codeProtocol, "protocol")
		return
	}
	ip := addrOf(qc.RemoteAddr())
	actx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	st, err := qc.AcceptStream(actx)
	cancel()
	if err != nil {
		qc.CloseWithError(codeProtocol, "protocol")
		return
	}
	var wmu sync.Mutex
	writeCtl := func(b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		st.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, err := st.Write(b)
		return err
	}
	closeWith := func(code byte, reason string) {
		if code != 0 {
			writeCtl(appendFrame(nil, frameError, []byte{code}, []byte(reason)))
		}
		st.Close()
		qc.CloseWithError(quic.ApplicationErrorCode(code), codeName(code))
	}
	st.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	p := &peerLink{srv: s, id: id, ip: ip, transport: transportUDP, fail: closeWith,
		write: func(buf []byte) error {
			if buf[0] != framePacket {
				return writeCtl(buf)
			}
			err := qc.SendDatagram(buf[frameHeader:])
			var tooLarge *quic.DatagramTooLargeError
			if errors.As(err, &tooLarge) {
				// Too large for a datagram on this link: the control
				// stream carries it as a PACKET frame.
				n := len(buf) - frameHeader
				buf[1], buf[2] = byte(n>>8), byte(n)
				return writeCtl(buf)
			}
			return err
		}}
	if !s.hello(ctx, p, st) {
		return
	}
	defer s.unregister(p)
	go func() { // control frames: pings, and packets too large for a datagram
		var buf []byte
		for {
			st.SetReadDeadline(time.Time{})
			typ, body, b, err := readFrame(st, buf)
			buf = b
			if err != nil {
				return
			}
			if typ == framePing {
				p.enqueue(appendFrame(nil, framePong, body))
				continue
			}
			if typ == framePacket && len(body) >= identityLen {
				// A packet too large for a datagram (see protocol.md).
				s.forward(p, identity.PeerID(body[:identityLen]), body[identityLen:])
				continue
			}
			s.log.Debug("relay: unexpected frame on QUIC control stream", "peer", id.Short(), "type", typ)
			closeWith(codeProtocol, "unexpected frame")
			return
		}
	}()
	go p.writeLoop(qc.Context())
	for {
		d, err := qc.ReceiveDatagram(ctx)
		if err != nil {
			if ctx.Err() != nil {
				closeWith(codeShutdown, "server shutting down")
			}
			return
		}
		if len(d) < identityLen {
			s.m.drop(dropMalformed)
			continue
		}
		s.forward(p, identity.PeerID(d[:identityLen]), d[identityLen:])
	}
}

// ServeTLS serves one TLS connection (handshake done) that negotiated
// ALPN; it returns when the link ends, and closes tc.
func (s *Server) ServeTLS(ctx context.Context, tc *tls.Conn) {
	defer tc.Close()
	stop := context.AfterFunc(ctx, func() {
		tc.SetWriteDeadline(time.Now().Add(time.Second))
		tc.Write(appendFrame(nil, frameError, []byte{codeShutdown}, []byte("server shutting down")))
		tc.Close()
	})
	defer stop()
	id, err := identity.PeerIDFromState(tc.ConnectionState())
	if err != nil {
		return
	}
	var wmu sync.Mutex
	write := func(buf []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		tc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, err := tc.Write(buf)
		return err
	}
	p := &peerLink{srv: s, id: id, ip: addrOf(tc.RemoteAddr()), transport: transportTLS,
		fail: func(code byte, reason string) {
			if code != 0 {
				write(appendFrame(nil, frameError, []byte{code}, []byte(reason)))
			}
			tc.Close()
		},
		write: func(buf []byte) error {
			if buf[0] == framePacket {
				n := len(buf) - frameHeader
				buf[1], buf[2] = byte(n>>8), byte(n)
			}
			return write(buf)
		}}
	// The write loop coalesces what is queued into writes of up to
	// maxCoalesce bytes: one TLS record and one syscall for many packets.
	var out []byte
	p.writeBatch = func(bufs [][]byte) error {
		for _, b := range bufs {
			if len(out) > 0 && len(out)+len(b) > maxCoalesce {
				if err := write(out); err != nil {
					return err
				}
				out = out[:0]
			}
			out = append(out, b...)
		}
		if len(out) == 0 {
			return nil
		}
		err := write(out)
		out = out[:0]
		return err
	}
	tc.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if !s.hello(ctx, p, tc) {
		return
	}
	defer s.unregister(p)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go p.writeLoop(lctx)
	var buf []byte
	for {
		tc.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		typ, body, b, err := readFrame(tc, buf)
		buf = b
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				p.fail(codeProtocol, err.Error())
			}
			return
		}
		switch typ {
		case framePacket:
			if len(body) < identityLen {
				p.fail(codeProtocol, "short packet frame")
				return
			}
			s.forward(p, identity.PeerID(body[:identityLen]), body[identityLen:])
		case framePing:
			p.enqueue(appendFrame(nil, framePong, body))
		case framePong:
		default:
			p.fail(codeProtocol, "unexpected frame")
			return
		}
	}
}

// hello reads HELLO from r, checks the token and limits, registers p and
// answers WELCOME. On failure it has closed the link.
func (s *Server) hello(ctx context.Context, p *peerLink, r io.Reader) bool {
	s.sweepOnce.Do(func() { go s.sweep(ctx) })
	typ, body, _, err := readFrame(r, nil)
	if err != nil || typ != frameHello {
		s.m.rejected[rejectHandshake].Add(1)
		p.fail(codeProtocol, "want HELLO")
		return false
	}
	if !s.allowConn(p.ip) {
		s.m.rejected[rejectRateLimited].Add(1)
		p.fail(codeRateLimited, "too many connections from "+p.ip.String())
		return false
	}
	if len(s.cfg.Secrets) > 0 || s.cfg.Authorize != nil {
		check := func() error { return CheckToken(s.cfg.Secrets, p.id, string(body), time.Now()) }
		if s.cfg.Authorize != nil {
			check = func() error { return s.cfg.Authorize(p.id, string(body)) }
		}
		if err := check(); err != nil {
			code, reason := byte(codeBadToken), authBadToken
			if errors.Is(err, ErrTokenExpired) {
				code, reason = codeTokenExpired, authTokenExpired
			}
			s.m.auth[reason].Add(1)
			s.log.Debug("relay: token refused", "peer", p.id.Short(), "err", err)
			p.fail(code, err.Error())
			return false
		}
	}
	if s.cfg.PeerRate > 0 {
		p.lim = rate.NewLimiter(rate.Limit(s.cfg.PeerRate), s.cfg.PeerBurst)
	}
	p.wake = make(chan struct{}, 1)
	s.mu.Lock()
	old := s.peers[p.id]
	if old == nil && len(s.peers) >= s.cfg.MaxClients {
		s.mu.Unlock()
		s.m.rejected[rejectFull].Add(1)
		p.fail(codeFull, "relay is at its client limit")
		return false
	}
	s.peers[p.id] = p
	s.mu.Unlock()
	if old != nil {
		old.fail(codeReplaced, "a newer link of this peer took over")
	}
	s.m.clients[p.transport].Add(1)
	s.m.conns[p.transport].Add(1)
	var w [4]byte
	binary.BigEndian.PutUint16(w[0:2], MaxPayload)
	binary.BigEndian.PutUint16(w[2:4], uint16(min(s.cfg.IdleTimeout/3/time.Second, 65535)))
	if err := p.write(appendFrame(nil, frameWelcome, w[:])); err != nil {
		s.unregister(p)
		p.fail(0, "")
		return false
	}
	s.log.Debug("relay: peer connected", "peer", p.id.Short(), "transport", p.transport.String(), "ip", p.ip)
	return true
}

// unregister removes p (if it is still the registered link for its ID)
// and the sessions it started.
func (s *Server) unregister(p *peerLink) {
	p.qmu.Lock()
	p.closed = true
	p.queue = nil
	p.qmu.Unlock()
	p.omu.Lock()
	n := len(p.out)
	p.out = nil
	p.omu.Unlock()
	s.mu.Lock()
	if s.peers[p.id] == p {
		delete(s.peers, p.id)
	}
	s.sessions -= n
	s.mu.Unlock()
	s.m.clients[p.transport].Add(-1)
	p.fail(0, "")
	s.log.Debug("relay: peer gone", "peer", p.id.Short(), "transport", p.transport.String())
}

// allowConn applies the per-IP connection rate.
func (s *Server) allowConn(ip netip.Addr) bool {
	if s.cfg.ConnRate < 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.ipRates[ip]
	if r == nil {
		r = &ipRate{lim: rate.NewLimiter(rate.Limit(s.cfg.ConnRate), s.cfg.ConnBurst)}
		s.ipRates[ip] = r
	}
	r.seen = time.Now()
	return r.lim.Allow()
}

// forward relays one packet from src to the peer dst.
func (s *Server) forward(src *peerLink, dst identity.PeerID, pkt []byte) {
	if len(pkt) > MaxPayload || len(pkt) == 0 {
		s.m.drop(dropMalformed)
		return
	}
	now := time.Now()
	if src.lim != nil && !src.lim.AllowN(now, len(pkt)) {
		s.m.drop(dropPeerRate)
		return
	}
	if s.total != nil && !s.total.AllowN(now, len(pkt)) {
		s.m.drop(dropTotalRate)
		return
	}
	s.mu.RLock()
	to := s.peers[dst]
	s.mu.RUnlock()
	if to == nil || to == src {
		s.m.drop(dropNoPeer)
		src.notice(dst, noticeNoPeer, now)
		return
	}
	src.omu.Lock()
	if src.out == nil {
		src.out = make(map[identity.PeerID]time.Time)
	}
	if _, ok := src.out[dst]; !ok {
		s.mu.Lock()
		if s.sessions >= s.cfg.MaxSessions {
			s.mu.Unlock()
			src.omu.Unlock()
			s.m.drop(dropSessionLimit)
			src.notice(dst, noticeSessionLimit, now)
			return
		}
		s.sessions++
		s.mu.Unlock()
	}
	src.out[dst] = now
	src.omu.Unlock()
	buf := appendFrame(getBuf(), framePacket, src.id[:], pkt) // writeLoop returns it to the pool
	if !to.enqueue(buf) {
		putBuf(buf)
		s.m.drop(dropQueueFull)
		return
	}
	s.m.packets.Add(1)
	s.m.bytes.Add(uint64(len(pkt)))
	src.nPackets.Add(1)
	src.nBytes.Add(uint64(len(pkt)))
}

// maxNotices bounds the destinations a link's NOTICE rate limit
// remembers (each ~100 B, a minute): a peer that sends to random peer IDs
// gets no notice about new ones once it has this many, instead of making
// the relay remember every one.
const maxNotices = 256

// notice tells p (at most once a second per destination, for at most
// maxNotices destinations a minute) why its packets to dst are dropped.
func (p *peerLink) notice(dst identity.PeerID, code byte, now time.Time) {
	p.omu.Lock()
	if p.notices == nil {
		p.notices = make(map[identity.PeerID]time.Time)
	}
	last, known := p.notices[dst]
	if known && now.Sub(last) < time.Second || !known && len(p.notices) >= maxNotices {
		p.omu.Unlock()
		return
	}
	p.notices[dst] = now
	p.omu.Unlock()
	p.enqueue(appendFrame(nil, frameNotice, dst[:], []byte{code}))
}

// maxCoalesce is the most a byte-stream link's write loop writes at once.
const maxCoalesce = 64 << 10

// enqueue queues a message for p's link; false if the queue is full.
func (p *peerLink) enqueue(buf []byte) bool {
	p.qmu.Lock()
	if p.closed || len(p.queue) >= p.srv.cfg.SendQueue {
		p.qmu.Unlock()
		return false
	}
	p.queue = append(p.queue, buf)
	p.qmu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return true
}

// writeLoop sends p's queued messages until ctx ends or a write fails.
func (p *peerLink) writeLoop(ctx context.Context) {
	var batch [][]byte
	for {
		select {
		case <-p.wake:
		case <-ctx.Done():
			return
		}
		p.qmu.Lock()
		batch, p.queue = p.queue, batch[:0]
		if len(p.queue) == 0 && cap(p.queue) > 64 {
			p.queue = nil // let an idle peer's queue shrink
		}
		p.qmu.Unlock()
		if p.writeBatch != nil {
			if err := p.writeBatch(batch); err != nil {
				p.fail(0, "")
				return
			}
		}
		for i, b := range batch {
			if p.writeBatch == nil {
				if err := p.write(b); err != nil {
					p.fail(0, "")
					return
				}
			}
			// Written (copied by SendDatagram or into a TLS record): a
			// pooled packet buffer can be used again.
			putBuf(b)
			batch[i] = nil
		}
		if cap(batch) > 64 {
			batch = nil
		}
	}
}

// sweep ends idle sessions and forgets idle per-IP rate state.
func (s *Server) sweep(ctx context.Context) {
	t := time.NewTicker(max(s.cfg.SessionIdle/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.RLock()
			peers := make([]*peerLink, 0, len(s.peers))
			for _, p := range s.peers {
				peers = append(peers, p)
			}
			s.mu.RUnlock()
			ended := 0
			for _, p := range peers {
				p.omu.Lock()
				for d, last := range p.out {
					if now.Sub(last) > s.cfg.SessionIdle {
						delete(p.out, d)
						ended++
					}
				}
				for d, last := range p.notices {
					if now.Sub(last) > time.Minute {
						delete(p.notices, d)
					}
				}
				p.omu.Unlock()
			}
			s.mu.Lock()
			s.sessions -= ended
			for ip, r := range s.ipRates {
				if now.Sub(r.seen) > time.Minute {
					delete(s.ipRates, ip)
				}
			}
			s.mu.Unlock()
		}
	}
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	if a != nil {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return ap.Addr().Unmap()
		}
	}
	return netip.Addr{}
}
