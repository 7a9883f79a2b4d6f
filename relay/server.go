package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

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
	ips      map[netip.Prefix]*ipState  // by source (ipKey)
	nets     map[netip.Prefix]*netState // by network (netKey)
	bigNet   *netState                  // the network with the most sessions, at bigAt
	bigAt    time.Time
	total    *rate.Limiter        // TotalRate; nil: unlimited
	data     map[uint64]*peerLink // QUIC links that take data packets, by link token

	// streamLinks are the streams-only links (streamlink.go), beside
	// peers: at most one per peer ID, counted in MaxClients and
	// MaxLinksPerIP with the others; guarded by mu.
	streamLinks map[identity.PeerID]*peerLink

	sock atomic.Pointer[rendezvous.PacketSocket] // ServeDatagrams; nil: none

	st streamTable // relayed streams (streamserver.go)

	watch    watcher        // parked TLS links (tlslink.go)
	tlsLinks sync.WaitGroup // TLS links served and not ended (Wait)
	// noRecords: the server offers no ALPNRecord (a test's server of
	// the last age).
	noRecords bool

	sweeping sync.Once

	// clock is forward's time; nil: time.Now (a test's clock makes its
	// rate checks independent of the machine's speed).
	clock func() time.Time
}

func (s *Server) now() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
}

// NewServer makes a relay server.
func NewServer(cfg ServerConfig) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:   cfg,
		m:     new(metrics),
		log:   cfg.Logger,
		peers: make(map[identity.PeerID]*peerLink),
		ips:   make(map[netip.Prefix]*ipState),
		nets:  make(map[netip.Prefix]*netState),
		data:  make(map[uint64]*peerLink),
	}
	s.watch.srv = s
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
	// DataPackets: a UDP link whose packets travel as data packets
	// (docs/protocol.md), not DATAGRAM frames.
	DataPackets bool
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
			Packets: p.nPackets.Load(), Bytes: p.nBytes.Load(), DataPackets: p.data.dataOn.Load()})
	}
	return out
}

// peerLink is one connected peer, over either transport.
type peerLink struct {
	srv       *Server
	id        identity.PeerID
	ip        netip.Addr
	ipk       netip.Prefix // the source it counts against (ipKey)
	ipst      *ipState     // its source's state, once registered
	expiry    *time.Timer  // ends the link when its token expires; nil: never
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

	qmu       sync.Mutex
	queue     [][]byte
	wake      chan struct{}
	closed    bool
	writing   bool            // a writeLoop runs (or is starting)
	writerCtx context.Context // ends the writers; nil until the link serves (startWriter)

	omu     sync.Mutex
	out     map[identity.PeerID]time.Time // destinations of its sessions → last packet
	notices map[identity.PeerID]time.Time // last NOTICE sent about a destination
	consent bool                          // it receives only from peers it allowed (empty ALLOW)
	allowed map[identity.PeerID]time.Time // peers it consented to receive from → when
	gone    bool                          // unregistered
	// expired: its token expired, and it lives on for its sessions
	// (KeepSessionsPastExpiry); set under omu.
	expired atomic.Bool
	// Sessions to it opened before it asked for consent (consentGrace
	// after it linked): checked when it asks (enableConsent). Beyond
	// maxEarly of them, strict: every packet to it is checked.
	linkedAt time.Time
	early    []*peerLink
	strict   atomic.Bool

	nPackets, nBytes atomic.Uint64 // what it sent that was forwarded

	// streams: a byte-stream link whose client takes relayed streams
	// (FEATURES); qStream: the stream bytes queued for it (dataLen).
	streams  atomic.Bool
	featured atomic.Bool // it sent FEATURES
	qStream  atomic.Int64
	qData    atomic.Int64  // DATA frames queued for it
	goneRef  atomic.Uint64 // the last stream it heard CLOSE gone about (bit 32 set)

	// streamsOnly: a streams-only link (STREAMS-HELLO, streamlink.go),
	// registered beside the peer's link; it opens relayed streams and
	// carries nothing else. Set before it registers.
	streamsOnly bool

	data linkData // a QUIC link's data packets (zero token: none)
	// q is a UDP link's QUIC connection; nil once the link detached (or
	// for other transports).
	q atomic.Pointer[quicLink]
	// tls is a TLS link's connection (tlslink.go); nil for other
	// transports.
	tls *tlsConn
}

// hello reads HELLO from r, checks the token and limits, registers p and
// answers WELCOME. On failure it has closed the link.
func (s *Server) hello(ctx context.Context, p *peerLink, r io.Reader) bool {
	s.sweeping.Do(func() { go s.sweep(ctx) })
	typ, body, _, err := readFrame(r, nil)
	p.streamsOnly = err == nil && typ == frameHelloStreams && p.tls != nil && s.streamsOffered()
	if err != nil || typ != frameHello && !p.streamsOnly {
		s.m.rejected[rejectHandshake].Add(1)
		p.fail(codeProtocol, "want HELLO")
		return false
	}
	if !s.allowConn(p) {
		s.m.rejected[rejectRateLimited].Add(1)
		p.fail(codeRateLimited, "too many connections from "+p.ip.String())
		return false
	}
	if p.tls != nil && p.tls.proof {
		id, token, err := checkKeyProof(p.tls.tc.ConnectionState(), body)
		if err != nil {
			s.m.auth[authKeyProof].Add(1)
			s.log.Debug("relay: key proof refused", "ip", p.ip, "err", err)
			p.fail(codeKeyProof, err.Error())
			return false
		}
		p.id, body = id, token
	}
	var expires time.Time
	if len(s.cfg.Secrets) > 0 || s.cfg.Authorize != nil {
		check := func() (time.Time, error) {
			return tokenExpiry(string(body)), CheckToken(s.cfg.Secrets, p.id, string(body), time.Now())
		}
		if s.cfg.Authorize != nil {
			check = func() (time.Time, error) { return s.cfg.Authorize(p.id, string(body)) }
		}
		var err error
		if expires, err = check(); err != nil {
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
	p.lim = s.peerLimiter()
	p.wake = make(chan struct{}, 1)
	old, refused, ok := s.register(p)
	if !ok {
		s.m.rejected[refused].Add(1)
		if refused == rejectFull {
			p.fail(codeFull, "relay is at its client limit")
		} else {
			p.fail(codeRateLimited, "too many links from "+p.ipk.String())
		}
		return false
	}
	if old != nil {
		old.fail(codeReplaced, "a newer link of this peer took over")
	}
	s.m.clients[p.transport].Add(1)
	s.m.conns[p.transport].Add(1)
	w := make([]byte, 5, 5+linkTokenLen+linkKeyLen)
	binary.BigEndian.PutUint16(w[0:2], MaxPayload)
	binary.BigEndian.PutUint16(w[2:4], uint16(min(s.cfg.IdleTimeout/3/time.Second, 65535)))
	w[4] = welcomeConsent
	if p.streamsOnly {
		w[4] = 0 // no consent, no packets: it opens streams only
	}
	if p.transport == transportTLS && s.streamsOffered() {
		w[4] |= welcomeStreams
	}
	if p.transport == transportUDP && s.streamsOffered() && !s.cfg.QUICLinks {
		w[4] |= welcomeStreamLink
	}
	if p.data.token != 0 {
		w[4] |= welcomeData
		w = binary.BigEndian.AppendUint64(w, p.data.token)
		if !s.cfg.QUICLinks {
			w[4] |= welcomeDetach
			w = append(w, p.data.key[:]...)
		}
	}
	if err := p.write(appendFrame(nil, frameWelcome, w)); err != nil {
		s.unregister(p)
		p.fail(0, "")
		return false
	}
	if !expires.IsZero() {
		s.expireAt(p, expires)
	}
	s.log.Debug("relay: peer connected", "peer", p.id.Short(), "transport", p.transport.String(), "ip", p.ip)
	return true
}

// peerLimiter is a new link's PeerRate bucket; nil: no limit.
func (s *Server) peerLimiter() *rate.Limiter {
	if s.cfg.PeerRate <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(s.cfg.PeerRate), s.cfg.PeerBurst)
}

// unregister removes p (if it is still the registered link for its ID)
// and the sessions it started.
func (s *Server) unregister(p *peerLink) {
	p.qmu.Lock()
	if p.closed {
		p.qmu.Unlock()
		return
	}
	p.closed = true
	p.queue = nil
	p.qmu.Unlock()
	if p.wake != nil { // a lingering writer ends at once (not after writerLinger)
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
	p.omu.Lock()
	n := len(p.out)
	p.out, p.allowed, p.gone = nil, nil, true
	p.omu.Unlock()
	s.mu.Lock()
	if s.peers[p.id] == p {
		delete(s.peers, p.id)
	}
	if s.streamLinks[p.id] == p {
		delete(s.streamLinks, p.id)
	}
	if s.data[p.data.token] == p {
		delete(s.data, p.data.token)
	}
	s.sessions -= n
	if st := p.ipst; st != nil {
		st.addSessions(-n)
		st.links--
		delete(st.peers, p)
		st.seen = time.Now()
	}
	s.mu.Unlock()
	if p.expiry != nil {
		p.expiry.Stop()
	}
	if p.data.detached.Load() {
		s.m.detached.Add(-1)
	}
	s.m.clients[p.transport].Add(-1)
	s.dropStreams(p)
	p.fail(0, "")
	s.log.Debug("relay: peer gone", "peer", p.id.Short(), "transport", p.transport.String())
}

// forward relays one packet from src to the peer dst: within src's rate
// and the relay's, to a linked peer that consented, on a session within
// the session caps.
func (s *Server) forward(src *peerLink, dst identity.PeerID, pkt []byte) {
	if len(pkt) > MaxPayload || len(pkt) == 0 || src.streamsOnly {
		s.m.drop(dropMalformed)
		return
	}
	now := s.now()
	cost := max(len(pkt), MinPacketCost)
	if src.lim != nil && !src.lim.AllowN(now, cost) {
		s.m.drop(dropPeerRate)
		return
	}
	if s.total != nil && !s.total.AllowN(now, cost) {
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
	_, open := src.out[dst]
	if open {
		src.out[dst] = now
	}
	src.omu.Unlock()
	if open && to.strict.Load() && !to.consents(src.id, now) {
		s.closeSession(src, dst)
		s.m.drop(dropNotAllowed)
		return
	}
	if !open {
		if src.expired.Load() && to.expired.Load() {
			// Neither end is vouched for by a token now.
			s.m.drop(dropTokenExpired)
			src.notice(dst, noticeNotAllowed, now)
			return
		}
		if !to.consents(src.id, now) {
			// Sending to a peer is consent to hear from it: when both
			// sides of a session fall back to the relay at once, each
			// one's first packet lets the other's through.
			src.permit(dst, now)
			s.m.drop(dropNotAllowed)
			src.notice(dst, noticeNotAllowed, now)
			return
		}
		if reason, ok := s.openSession(src, dst, now); !ok {
			s.m.drop(reason)
			if reason != dropNoPeer {
				src.notice(dst, noticeSessionLimit, now)
			}
			return
		}
		if !to.earlyOpen(src, now) {
			// The recipient asked for consent meanwhile.
			s.closeSession(src, dst)
			s.m.drop(dropNotAllowed)
			return
		}
	}
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

func addrPortOf(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
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
