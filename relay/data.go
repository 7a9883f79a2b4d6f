package relay

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// Data packets carry relayed packets on a UDP link beside its QUIC
// connection, as plain UDP datagrams between the node's socket and the
// relay's (docs/protocol.md, "Relay data packets"): no second encryption
// (the packets are the peers' own QUIC packets, encrypted end to end), no
// DATAGRAM frame queue inside quic-go (which drops past 128 frames), and
// batched reads on both ends. The QUIC connection stays the link's control
// channel: it proves the node's key, and WELCOME hands the node a random
// link token that its data packets carry, so the relay forwards only for
// the linked peer at the link's address.
//
//	node → relay: 0x2c, link token (8), destination peer key (32), packet
//	relay → node: 0x2d, link token (8), source peer key (32), packet
//
// A data packet whose destination (or source) key is all zeros is a probe
// (node → relay) or its answer (relay → node): a node sends its packets as
// data packets only once a probe was answered, and the relay sends data
// packets to a node only once one of its data packets (not a probe) came:
// a network that drops non-QUIC UDP keeps the link on DATAGRAM frames.
const (
	dataToRelay   = 0x2c
	dataFromRelay = 0x2d
	linkTokenLen  = 8
	dataHeader    = 1 + linkTokenLen + identityLen
	// maxDataPayload is the largest packet sent as a data packet, so that
	// it fits a 1500-byte MTU on IPv6 with its headers; larger ones take
	// the link's QUIC connection.
	maxDataPayload = 1500 - 40 - 8 - dataHeader
)

var zeroToken [linkTokenLen]byte

// welcomeData is the WELCOME flag of a relay that takes data packets on
// this link; the link token follows the flags byte. welcomeDetach: the
// link may detach (DETACH) once its data packets work.
const (
	welcomeData   = 0x02
	welcomeDetach = 0x04
)

// newLinkToken returns a random non-zero link token.
func newLinkToken() uint64 {
	var b [linkTokenLen]byte
	for {
		rand.Read(b[:])
		if t := binary.BigEndian.Uint64(b[:]); t != 0 {
			return t
		}
	}
}

// ServeDatagrams makes s take data packets on sock, the UDP socket its QUIC
// links arrive on (the rendezvous server's, or a supernode's), until stop
// is called: links that arrive afterwards are offered data packets
// (WELCOME). Without it links carry packets in DATAGRAM frames only.
func (s *Server) ServeDatagrams(sock rendezvous.PacketSocket) (stop func()) {
	s.sock.Store(&sock)
	remove := sock.Intercept(dataToRelay, netip.AddrPort{}, s.takeData)
	return func() {
		// Detached links have no connection that closes with the
		// server: tell each that the server stops.
		for _, p := range s.detachedLinks() {
			p.fail(codeShutdown, "server shutting down")
		}
		remove()
		s.sock.Store(nil)
	}
}

// takeData forwards one data packet from a node (on the socket's read
// loop): only from the address of the link whose token it carries.
func (s *Server) takeData(b []byte, from netip.AddrPort) (int, netip.AddrPort) {
	if len(b) < dataHeader {
		s.m.drop(dropMalformed)
		return 0, netip.AddrPort{}
	}
	tok := binary.BigEndian.Uint64(b[1 : 1+linkTokenLen])
	s.mu.RLock()
	p := s.data[tok]
	s.mu.RUnlock()
	if p == nil || !p.dataFrom(from) {
		if p == nil || !p.data.detached.Load() || !s.moveTo(p, b, from) {
			s.m.drop(dropUnknownLink)
		}
		return 0, netip.AddrPort{}
	}
	if !p.data.seen.Load() {
		p.data.seen.Store(true)
	}
	dst := identity.PeerID(b[1+linkTokenLen : dataHeader])
	if dst == (identity.PeerID{}) {
		if len(b) == dataHeader {
			// A probe: answer it in kind (as large as it, no larger).
			b[0] = dataFromRelay
			p.sendDatagram(b[:dataHeader])
			return 0, netip.AddrPort{}
		}
		s.takeControl(p, b[dataHeader:])
		return 0, netip.AddrPort{}
	}
	if !p.data.dataOn.Load() {
		p.data.dataOn.Store(true)
	}
	s.m.dataIn.Add(1)
	s.forward(p, dst, b[dataHeader:])
	return 0, netip.AddrPort{}
}

// takeControl handles a control frame that came in a data packet of a
// detached link (docs/protocol.md, "Detached links"): PING (answered with
// PONG), ALLOW (echoed as its acknowledgement), or ERROR (the node is
// leaving). Answers are no larger than what they answer.
func (s *Server) takeControl(p *peerLink, f []byte) {
	if !p.data.detached.Load() || len(f) < frameHeader || int(f[1])<<8|int(f[2]) != len(f)-frameHeader {
		s.m.drop(dropMalformed)
		return
	}
	typ, body := f[0], f[frameHeader:]
	switch {
	case typ == framePing && len(body) <= 64:
		f[0] = framePong
		p.sendControl(f)
	case typ == frameAllow && s.allow(p, body):
		p.sendControl(f)
	case typ == frameError:
		s.log.Debug("relay: detached link left", "peer", p.id.Short())
		s.unregister(p)
	case typ == framePong:
	default:
		s.m.drop(dropMalformed)
	}
}

// sendControl sends a control frame to a detached link as a data packet
// from the all-zero peer key.
func (p *peerLink) sendControl(frame []byte) {
	b := make([]byte, dataHeader, dataHeader+len(frame))
	b[0] = dataFromRelay
	p.sendDatagram(append(b, frame...))
}

// linkData is a QUIC link's data-packet state on the server.
type linkData struct {
	token  uint64
	sock   rendezvous.PacketSocket
	addr   atomic.Pointer[netip.AddrPort] // where the link's QUIC connection is
	dataOn atomic.Bool                    // the node sends data packets: send it data packets
	// detached: the link has no QUIC connection any more; it ends when
	// nothing came from it for IdleTimeout (seen, lastSeen: the sweep's).
	detached atomic.Bool
	seen     atomic.Bool // a data packet came since the last sweep
	lastSeen time.Time   // the sweep's: when it last found seen set
	fragID   atomic.Uint32
	// key authenticates a detached link's move to a new address (rebind.go);
	// it went to the node inside the QUIC connection only (WELCOME).
	key [linkKeyLen]byte
	mv  moveState
}

// sendFrags sends pkt from src to a detached link as two fragments.
func (p *peerLink) sendFrags(src, pkt []byte) {
	id := uint16(p.data.fragID.Add(1))
	b := append(getBuf(), dataFromRelay)
	b = binary.BigEndian.AppendUint64(b, p.data.token)
	b = append(b, src...)
	for i := range 2 {
		b = appendFrag(b[:dataHeader], id, i, pkt)
		if p.sendDatagram(b) {
			p.srv.m.dataOut.Add(1)
		}
	}
	putBuf(b)
}

// dataFrom reports whether a data packet with p's token may come from
// from: the link's address (which follows its QUIC connection when that
// migrates; a detached link's stays).
func (p *peerLink) dataFrom(from netip.AddrPort) bool {
	if a := p.data.addr.Load(); a != nil && *a == from {
		return true
	}
	if q := p.q.Load(); q != nil {
		if now := addrPortOf(q.qc.RemoteAddr()); now == from {
			p.data.addr.Store(&now)
			return true
		}
	}
	return false
}

// sendDatagram writes one data packet (a probe's answer, a control frame)
// to the link's address; false if the socket refused it.
func (p *peerLink) sendDatagram(b []byte) bool {
	a := p.data.addr.Load()
	if a == nil || p.data.sock == nil {
		return false
	}
	binary.BigEndian.PutUint64(b[1:1+linkTokenLen], p.data.token)
	_, err := p.data.sock.WriteToUDPAddrPort(b, *a)
	return err == nil
}

// segPool recycles the buffers of segmented sends (a GSO batch with a
// data header in front of each packet).
var segPool = sync.Pool{New: func() any { return new([]byte) }}

// writeDataBatch sends a batch of a QUIC link's queued messages: packets as
// data packets, runs of one size in one segmented send, when the node
// takes data packets; the rest one by one (p.write).
func (p *peerLink) writeDataBatch(bufs [][]byte) error {
	if !p.data.dataOn.Load() {
		for _, b := range bufs {
			if err := p.write(b); err != nil {
				return err
			}
		}
		return nil
	}
	a := p.data.addr.Load()
	bp := segPool.Get().(*[]byte)
	defer segPool.Put(bp)
	out, seg, ended := (*bp)[:0], 0, false
	flush := func() {
		if len(out) > 0 {
			n := (len(out) + seg - 1) / seg
			if err := p.data.sock.WriteSegments(out, seg, *a); err == nil {
				p.srv.m.dataOut.Add(uint64(n))
			}
			// Else dropped, as a full socket buffer would: the
			// session's QUIC resends.
		}
		out, seg, ended = out[:0], 0, false
	}
	for _, b := range bufs {
		if b[0] == framePacket && len(b)-frameHeader-identityLen > maxDataPayload && p.data.detached.Load() {
			// No QUIC connection to carry it: two fragments (frag.go).
			flush()
			p.sendFrags(b[frameHeader:frameHeader+identityLen], b[frameHeader+identityLen:])
			continue
		}
		if b[0] != framePacket || len(b)-frameHeader-identityLen > maxDataPayload || len(b) < frameHeader+identityLen {
			flush()
			if err := p.write(b); err != nil {
				*bp = out
				return err
			}
			continue
		}
		size := dataHeader + len(b) - frameHeader - identityLen
		if seg != 0 && (ended || size > seg) {
			flush()
		}
		if seg == 0 {
			seg = size
		}
		ended = size < seg // a shorter packet ends a GSO batch
		out = append(out, dataFromRelay)
		out = binary.BigEndian.AppendUint64(out, p.data.token)
		out = append(out, b[frameHeader:]...)
	}
	flush()
	*bp = out
	return nil
}
