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
)

// dataLink is a UDP link's data packets on the node's side: it takes the
// relay's data packets on the node's socket (pathsock.Conn.Intercept) and
// sends the node's packets as data packets once a probe was answered.
// Once the link detached, its control frames travel as data packets too.
type dataLink struct {
	l      *link
	paths  *pathsock.Conn
	server netip.AddrPort
	token  uint64
	on     atomic.Bool // a probe was answered: send packets as data packets
	seen   atomic.Bool // a data packet came from the relay (keepalive's)
	fragID atomic.Uint32
	route  routeFunc
	up     func() // called (on its own goroutine) when a probe was first answered
	remove func()

	amu  sync.Mutex
	acks map[identity.PeerID]chan struct{} // ALLOWs sent as data packets, until echoed
}

// routeFunc says where on the node's socket a packet from a peer may be
// handed to quic-go in place (the peer's virtual address); false: hand
// it to the link's Handler instead.
type routeFunc func(from identity.PeerID, pkt []byte) (netip.AddrPort, bool)

// probeWaits are the waits before each probe of a new link's data path.
var probeWaits = []time.Duration{0, 200 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}

func startData(l *link, paths *pathsock.Conn, server netip.AddrPort, token uint64, route routeFunc, up func()) *dataLink {
	d := &dataLink{l: l, paths: paths, server: server, token: token, route: route, up: up}
	d.remove = paths.InterceptToken(dataFromRelay, server, token, d.take)
	go d.probe()
	return d
}

// take handles one data packet from the relay, on the socket's read loop.
func (d *dataLink) take(b []byte, _ netip.AddrPort) (int, netip.AddrPort) {
	if len(b) < dataHeader || binary.BigEndian.Uint64(b[1:1+linkTokenLen]) != d.token {
		return 0, netip.AddrPort{}
	}
	if !d.seen.Load() {
		d.seen.Store(true)
	}
	src := identity.PeerID(b[1+linkTokenLen : dataHeader])
	if src == (identity.PeerID{}) {
		if len(b) > dataHeader {
			d.control(b[dataHeader:])
		} else if !d.on.Load() {
			d.on.Store(true)
			d.l.log.Debug("relay: data packets on", "server", d.server)
			if d.up != nil {
				go d.up()
			}
		}
		return 0, netip.AddrPort{}
	}
	pkt := b[dataHeader:]
	if d.route != nil && !isFrag(pkt) {
		if virt, ok := d.route(src, pkt); ok {
			return copy(b, pkt), virt
		}
	}
	d.l.packet(src, pkt)
	return 0, netip.AddrPort{}
}

// control handles a control frame the relay sent as a data packet (to a
// detached link), on the socket's read loop: it must not block.
func (d *dataLink) control(f []byte) {
	if len(f) < frameHeader || int(f[1])<<8|int(f[2]) != len(f)-frameHeader {
		return
	}
	typ, body := f[0], f[frameHeader:]
	switch typ {
	case frameNotice:
		if len(body) == identityLen+1 {
			d.l.h.Notice(identity.PeerID(body[:identityLen]), noticeErr(body[identityLen]))
		}
	case frameAllow:
		if len(body) == identityLen {
			d.amu.Lock()
			if ch, ok := d.acks[identity.PeerID(body)]; ok {
				close(ch)
				delete(d.acks, identity.PeerID(body))
			}
			d.amu.Unlock()
		}
	case frameError:
		if len(body) >= 1 {
			err := &ServerError{Code: body[0], Reason: string(body[1:])}
			go d.l.fail(err)
		}
	case frameChallenge:
		// The relay sees this node at a new address: prove it is the
		// node (rebind.go).
		if len(body) == 8 && d.l.detachable {
			d.sendControl(appendFrame(nil, frameResponse, body, moveMAC(d.l.linkKey[:], d.token, body)))
		}
	}
}

// sendControl sends a control frame to the relay as a data packet to the
// all-zero peer key (a detached link's).
func (d *dataLink) sendControl(frame []byte) error {
	b := make([]byte, dataHeader, dataHeader+len(frame))
	b[0] = dataToRelay
	binary.BigEndian.PutUint64(b[1:], d.token)
	_, err := d.paths.WriteToUDPAddrPort(append(b, frame...), d.server)
	return err
}

// allowWaits are the waits between the sends of a detached link's ALLOW
// until the relay echoes it.
var allowWaits = []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond,
	800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond}

// allow sends ALLOW for peer as a data packet, again until the relay
// echoes it (or the waits run out).
func (d *dataLink) allow(peer identity.PeerID) error {
	ch := make(chan struct{})
	d.amu.Lock()
	if d.acks == nil {
		d.acks = make(map[identity.PeerID]chan struct{})
	}
	if _, ok := d.acks[peer]; ok {
		d.amu.Unlock()
		return nil // already being sent
	}
	d.acks[peer] = ch
	d.amu.Unlock()
	frame := appendFrame(nil, frameAllow, peer[:])
	if err := d.sendControl(frame); err != nil {
		return err
	}
	go func() {
		defer func() {
			d.amu.Lock()
			if d.acks[peer] == ch {
				delete(d.acks, peer)
			}
			d.amu.Unlock()
		}()
		for _, w := range allowWaits[1:] {
			t := time.NewTimer(w)
			select {
			case <-ch:
				t.Stop()
				return
			case <-d.l.done:
				t.Stop()
				return
			case <-t.C:
			}
			d.sendControl(frame)
		}
	}()
	return nil
}

// pingRetries are the waits for an answer to a detached link's PING
// before it is sent again; with none after the last, the link is lost.
// (An atomic: a test shortens them while other tests' links' keepalives
// may still read them.)
var pingRetries atomic.Pointer[[]time.Duration]

func init() {
	r := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	pingRetries.Store(&r)
}

// keepalive pings the relay from a detached link every `every` (which
// keeps the NAT's mapping and the relay's link alive) and ends the link
// with ErrLinkLost when nothing answers a PING or its resends.
func (d *dataLink) keepalive(every time.Duration) {
	t := time.NewTimer(every)
	defer t.Stop()
	wait := func(w time.Duration) bool {
		t.Reset(w)
		select {
		case <-t.C:
			return true
		case <-d.l.done:
			return false
		}
	}
	ping := func() {
		var b [8]byte
		rand.Read(b[:])
		d.sendControl(appendFrame(nil, framePing, b[:]))
	}
	t.Stop()
	for wait(every) {
		d.seen.Store(false)
		ping()
		answered := false
		for _, w := range *pingRetries.Load() {
			if !wait(w) {
				return
			}
			if d.seen.Load() {
				answered = true
				break
			}
			ping()
		}
		if !answered {
			d.l.log.Debug("relay: detached link lost", "server", d.server)
			d.l.fail(ErrLinkLost)
			return
		}
	}
}

// send sends pkt to peer as a data packet; false: the link's QUIC
// connection must carry it (no probe answered yet, too large, or the
// socket refused it).
func (d *dataLink) send(peer identity.PeerID, pkt []byte) bool {
	if !d.on.Load() {
		return false
	}
	if len(pkt) > maxDataPayload {
		if !d.l.isDetached.Load() || len(pkt) > MaxPayload {
			return false
		}
		// No QUIC connection to carry it: two fragments.
		id := uint16(d.fragID.Add(1))
		b := append(getBuf(), dataToRelay)
		b = binary.BigEndian.AppendUint64(b, d.token)
		b = append(b, peer[:]...)
		var err error
		for i := range 2 {
			f := appendFrag(b[:dataHeader], id, i, pkt)
			if _, err = d.paths.WriteToUDPAddrPort(f, d.server); err != nil {
				break
			}
			b = f
		}
		putBuf(b)
		return err == nil
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
