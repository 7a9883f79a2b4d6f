package relay

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
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
// this link; the link token follows the flags byte.
const welcomeData = 0x02

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
		s.m.drop(dropUnknownLink)
		return 0, netip.AddrPort{}
	}
	dst := identity.PeerID(b[1+linkTokenLen : dataHeader])
	if dst == (identity.PeerID{}) {
		// A probe: answer it in kind (as large as it, no larger).
		b[0] = dataFromRelay
		p.sendDatagram(b[:dataHeader])
		return 0, netip.AddrPort{}
	}
	if !p.data.dataOn.Load() {
		p.data.dataOn.Store(true)
	}
	s.m.dataIn.Add(1)
	s.forward(p, dst, b[dataHeader:])
	return 0, netip.AddrPort{}
}

// linkData is a QUIC link's data-packet state on the server.
type linkData struct {
	token  uint64
	sock   rendezvous.PacketSocket
	addr   atomic.Pointer[netip.AddrPort] // where the link's QUIC connection is
	remote func() netip.AddrPort          // the QUIC connection's address now
	dataOn atomic.Bool                    // the node sends data packets: send it data packets
}

// dataFrom reports whether a data packet with p's token may come from
// from: the link's address (which follows its QUIC connection when that
// migrates).
func (p *peerLink) dataFrom(from netip.AddrPort) bool {
	if a := p.data.addr.Load(); a != nil && *a == from {
		return true
	}
	if p.data.remote != nil {
		if now := p.data.remote(); now == from {
			p.data.addr.Store(&now)
			return true
		}
	}
	return false
}

// sendDatagram writes one data packet (a probe's answer) to the link's address; false if the
// socket refused it.
func (p *peerLink) sendDatagram(b []byte) bool {
	a := p.data.addr.Load()
	if a == nil || p.data.sock == nil {
		return false
	}
	binary.BigEndian.PutUint64(b[1:1+linkTokenLen], p.data.token)
	_, err := p.data.sock.WriteToUDPAddrPort(b, *a)
	return err == nil
}

// dataLink is a UDP link's data packets on the node's side: it takes the
// relay's data packets on the node's socket (pathsock.Conn.Intercept) and
// sends the node's packets as data packets once a probe was answered.
type dataLink struct {
	l      *link
	paths  *pathsock.Conn
	server netip.AddrPort
	token  uint64
	on     atomic.Bool // a probe was answered: send packets as data packets
	route  routeFunc
	remove func()
}

// routeFunc says where on the node's socket a packet from a peer may be
// handed to quic-go in place (the peer's virtual address); false: hand
// it to the link's Handler instead.
type routeFunc func(from identity.PeerID, pkt []byte) (netip.AddrPort, bool)

// probeWaits are the waits before each probe of a new link's data path.
var probeWaits = []time.Duration{0, 200 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}

func startData(l *link, paths *pathsock.Conn, server netip.AddrPort, token uint64, route routeFunc) *dataLink {
	d := &dataLink{l: l, paths: paths, server: server, token: token, route: route}
	d.remove = paths.Intercept(dataFromRelay, server, d.take)
	go d.probe()
	return d
}

// take handles one data packet from the relay, on the socket's read loop.
func (d *dataLink) take(b []byte, _ netip.AddrPort) (int, netip.AddrPort) {
	if len(b) < dataHeader || binary.BigEndian.Uint64(b[1:1+linkTokenLen]) != d.token {
		return 0, netip.AddrPort{}
	}
	src := identity.PeerID(b[1+linkTokenLen : dataHeader])
	if src == (identity.PeerID{}) {
		if !d.on.Load() {
			d.on.Store(true)
			d.l.log.Debug("relay: data packets on", "server", d.server)
		}
		return 0, netip.AddrPort{}
	}
	pkt := b[dataHeader:]
	if d.route != nil {
		if virt, ok := d.route(src, pkt); ok {
			return copy(b, pkt), virt
		}
	}
	d.l.h.Packet(src, pkt)
	return 0, netip.AddrPort{}
}

// send sends pkt to peer as a data packet; false: the link's QUIC
// connection must carry it (no probe answered yet, too large, or the
// socket refused it).
func (d *dataLink) send(peer identity.PeerID, pkt []byte) bool {
	if !d.on.Load() || len(pkt) > maxDataPayload {
		return false
	}
	b := append(append(getBuf(), dataToRelay), zeroToken[:]...)
	binary.BigEndian.PutUint64(b[1:], d.token)
	b = append(append(b, peer[:]...), pkt...)
	_, err := d.paths.WriteToUDPAddrPort(b, d.server)
	putBuf(b)
	return err == nil
}

// probe sends probes until one is answered, the link ends or the waits
// run out (the link then stays on DATAGRAM frames).
func (d *dataLink) probe() {
	for _, w := range probeWaits {
		t := time.NewTimer(w)
		select {
		case <-t.C:
		case <-d.l.done:
			t.Stop()
			return
		}
		if d.on.Load() {
			return
		}
		var b [dataHeader]byte
		b[0] = dataToRelay
		binary.BigEndian.PutUint64(b[1:], d.token)
		d.paths.WriteToUDPAddrPort(b[:], d.server)
	}
}

// segPool recycles the buffers of segmented sends (a GSO batch with a
// data header in front of each packet).
var segPool = sync.Pool{New: func() any { return new([]byte) }}

// appendSegments appends the packets of b (seg bytes each, the last may
// be shorter) to out, each behind hdr; it returns out and the segment
// size.
func appendSegments(out, hdr, b []byte, seg int) ([]byte, int) {
	for off := 0; off < len(b); off += seg {
		out = append(append(out, hdr...), b[off:min(off+seg, len(b))]...)
	}
	return out, len(hdr) + seg
}

// sendSegments sends b (packets of seg bytes, the last may be shorter) to
// peer as data packets in one segmented send; false as for send.
func (d *dataLink) sendSegments(peer identity.PeerID, b []byte, seg int) bool {
	if !d.on.Load() || seg > maxDataPayload {
		return false
	}
	var hdr [dataHeader]byte
	hdr[0] = dataToRelay
	binary.BigEndian.PutUint64(hdr[1:], d.token)
	copy(hdr[1+linkTokenLen:], peer[:])
	bp := segPool.Get().(*[]byte)
	out, dseg := appendSegments((*bp)[:0], hdr[:], b, seg)
	err := d.paths.WriteSegments(out, dseg, d.server)
	*bp = out
	segPool.Put(bp)
	return err == nil
}

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
