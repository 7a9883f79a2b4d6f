// Package pathsock gives quic-go one address per peer that outlives the
// peer's paths.
//
// A Conn wraps a node's *net.UDPConn. Every peer gets a virtual address
// (AddPeer) from a range that is never a real source (240.0.0.0/4, reserved
// since RFC 1112); a QUIC connection dialled to it, or accepted from it, keeps
// that address for its whole life. Underneath, each peer has a current path:
//
//   - a direct UDP address (SetDirect): packets go out of the wrapped socket
//     unchanged but for the destination, and packets from that address come
//     in carrying the peer's virtual address;
//   - or a forwarded path (SetPath: a relay, a supernode, a TURN
//     allocation): packets to the peer go to Path.Send, and packets that
//     path receives are handed back with Inject.
//
// Moving a peer from one path to another is one call; quic-go sees no
// change of address, so streams keep going (its congestion controller
// adapts to the new path like to any change of conditions).
//
// The wrapper keeps quic-go's fast path: Conn implements
// quic.OOBCapablePacketConn and ReadBatch, so quic-go still reads with
// recvmmsg, writes with GSO and sets ECN; the wrapper only rewrites the
// address of each message (a map lookup under a read lock) and, when a peer's path
// is of another address family than the packet's control messages, those
// messages. docs/architecture.md has the measurement that chose this design.
// On Linux it reads with its own recvmmsg into storage it reuses (read.go):
// a datagram an InterceptFunc takes (a relay's data packets) costs no
// allocation, and one for quic-go gets its peer's virtual address or an
// address made once for its source.
package pathsock

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
)

// Named errors. Test with errors.Is.
var (
	// ErrClosed: the Conn has been closed.
	ErrClosed = net.ErrClosed
	// ErrUnknownPeer: a virtual address that AddPeer did not hand out, or
	// one that RemovePeer took back.
	ErrUnknownPeer = errors.New("pathsock: unknown virtual address")
	// ErrNoPath: the peer has neither a direct address nor a forwarded
	// path yet.
	ErrNoPath = errors.New("pathsock: peer has no path")
	// ErrFull: MaxPeers virtual addresses are in use.
	ErrFull = errors.New("pathsock: too many peers")
)

// MaxPeers bounds the virtual addresses one Conn hands out (the 240/4 range
// has room for 2^28; the bound keeps a flood of peers from growing the
// tables without limit). Callers remove peers whose sessions ended.
const MaxPeers = 1 << 16

// injectQueue bounds the packets Inject holds for the reader; beyond it
// packets are dropped, as a full socket buffer would.
const injectQueue = 1024

type injected struct {
	b    []byte
	from *net.UDPAddr
}

// Conn is a *net.UDPConn whose peers are virtual addresses. Create it with
// New; it is safe for concurrent use.
type Conn struct {
	udp   *net.UDPConn
	batch *ipv4.PacketConn
	raw   syscall.RawConn        // the socket, for reads without x/net (read_linux.go)
	rd    atomic.Pointer[reader] // the read loop's reader (read.go)
	v6    bool                   // the socket is IPv6 (dual-stack): IPv4 peers need mapping

	mu     sync.RWMutex // guards the tables and the address counter
	byVirt map[netip.AddrPort]*peer
	byReal map[netip.AddrPort]*peer // every peer's aliases
	byName map[string]*peer
	next   uint32
	// adopted counts keys that are real addresses (Adopt): while there
	// are none, writes to real addresses skip the table.
	adopted atomic.Int32

	icpt   intercepts // InterceptFuncs, by first byte and source
	tokens tokens     // InterceptToken's handlers

	flights flights // first flights, for ResendInitials
	// unproved keeps what went to peers' direct addresses that nothing
	// came from yet (set on a server's word): SetDirect sends it again
	// when such an address is replaced by one a check proved.
	unproved flights
	// noPktinfo: a send from a vanished local address failed; packet
	// info is dropped from now on (WriteMsgUDP).
	noPktinfo atomic.Bool
	// noGSO: the kernel refused a segmented send (WriteSegments); send
	// each datagram on its own from now on.
	noGSO atomic.Bool
	// gro: the socket hands datagrams coalesced (EnableGRO); reads go
	// through the reader's groReader.
	gro     atomic.Bool
	groRuns atomic.Uint64 // coalesced messages read (more than one datagram each)

	inj     chan injected
	queued  atomic.Int32 // packets in inj
	reading atomic.Bool  // the reader is (about to be) blocked in the socket
	woken   atomic.Bool  // Inject interrupted the reader
	rdl     atomic.Int64
	closed  atomic.Bool
}

// New wraps udp. The Conn owns it from now on: Close closes it.
func New(udp *net.UDPConn) *Conn {
	c := &Conn{udp: udp, batch: ipv4.NewPacketConn(udp), inj: make(chan injected, injectQueue)}
	c.unproved.max = maxUnproved
	if rc, err := udp.SyscallConn(); err == nil {
		c.raw = rc
	}
	if la, ok := udp.LocalAddr().(*net.UDPAddr); ok {
		c.v6 = la.IP.To4() == nil
	}
	c.byVirt, c.byReal, c.byName = map[netip.AddrPort]*peer{}, map[netip.AddrPort]*peer{}, map[string]*peer{}
	return c
}

// IsVirtual reports whether a is in the virtual range.
func IsVirtual(a netip.Addr) bool {
	a = a.Unmap()
	return a.Is4() && a.As4()[0]&0xf0 == 240
}

// Inject hands quic-go a packet that a forwarded path received from the
// peer at virt. It copies b. A full queue drops the packet (QUIC
// retransmits), as a full socket buffer would.
func (c *Conn) Inject(virt netip.AddrPort, b []byte) error {
	if c.closed.Load() {
		return ErrClosed
	}
	c.mu.RLock()
	p := c.byVirt[virt]
	c.mu.RUnlock()
	if p == nil {
		return ErrUnknownPeer
	}
	p.seen.Store(time.Now().UnixNano())
	select {
	case c.inj <- injected{b: append([]byte(nil), b...), from: p.virtUDP}:
	default:
		return nil
	}
	c.queued.Add(1)
	if c.reading.Load() && !c.woken.Swap(true) {
		// The reader may be blocked in the kernel: a deadline in the past
		// wakes it; it restores the deadline, clears woken and takes the
		// queue (in that order: see ReadBatch).
		c.udp.SetReadDeadline(time.Unix(1, 0))
	}
	return nil
}

// ReadBatch implements quic-go's batch reading: injected packets first,
// then one recvmmsg on the socket, every source address translated. A
// datagram an InterceptFunc takes costs no allocation; one handed to
// quic-go gets its peer's virtual address or an address made once for
// its source (read.go).
func (c *Conn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	r := c.takeReader()
	defer c.putReader(r)
	for {
		if c.closed.Load() {
			return 0, ErrClosed
		}
		if n := c.takeInjected(ms); n > 0 {
			return n, nil
		}
		if r.gro != nil && r.gro.pending() {
			if n := c.fill(r.gro, ms, r.fromsFor(len(ms))); n > 0 {
				c.address(r, ms, n)
				return n, nil
			}
			continue // all taken: read again
		}
		c.reading.Store(true)
		if c.queued.Load() > 0 { // an Inject between the take and the store
			c.reading.Store(false)
			continue
		}
		var n int
		var err error
		gro := c.gro.Load() && c.raw != nil
		if gro {
			err = c.readGRO(r, flags)
		} else {
			n, err = c.read(r, ms, flags)
		}
		c.reading.Store(false)
		if err != nil {
			if isTimeout(err) && c.woken.Load() {
				// Restore the deadline first, then clear woken: an Inject
				// that still saw woken set has queued its packet (taken
				// next), and one that sees it clear sets the deadline in
				// the past after our restore, so no wake-up is lost.
				if err := c.restoreDeadline(); err != nil {
					return 0, err
				}
				c.woken.Store(false)
				continue
			}
			return n, err
		}
		if gro {
			continue // hand the runs out above
		}
		if c.icpt.firsts.Load() != 0 {
			if n = c.intercept(ms, r.froms, n); n == 0 {
				continue // all taken: read again
			}
		}
		c.address(r, ms, n)
		return n, nil
	}
}

// takeInjected moves queued packets into ms without blocking.
func (c *Conn) takeInjected(ms []ipv4.Message) int {
	n := 0
	for n < len(ms) {
		select {
		case p := <-c.inj:
			c.queued.Add(-1)
			m := &ms[n]
			m.N = copy(m.Buffers[0], p.b)
			m.NN = 0
			m.Flags = 0
			m.Addr = p.from
			n++
		default:
			return n
		}
	}
	return n
}

// restoreDeadline puts back the caller's read deadline after a wake-up.
func (c *Conn) restoreDeadline() error {
	var t time.Time
	if d := c.rdl.Load(); d != 0 {
		t = time.Unix(0, d)
		if time.Now().After(t) {
			return os.ErrDeadlineExceeded
		}
	}
	return c.udp.SetReadDeadline(t)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// translate returns the virtual address of the peer whose real address
// (unmapped) ap is, and stamps the peer as heard; nil if ap is no peer's.
// c.mu is held for reading.
func (c *Conn) translate(ap netip.AddrPort, now int64) net.Addr {
	p := c.byReal[ap]
	if p == nil {
		return nil
	}
	if p.heard.Load() != now {
		p.heard.Store(now)
		p.seen.Store(now)
	}
	if ap == p.direct && p.proved.Load() != now {
		p.proved.Store(now)
	}
	return p.virtUDP
}

// WriteMsgUDP implements quic.OOBCapablePacketConn: a QUIC packet to a
// peer's key goes out on the peer's current path. A QUIC packet the
// network cannot take right now (no route while an interface changes its
// address, the interface down) is dropped, as a lossy link would drop it:
// quic-go closes a connection on any write error, and a session must
// outlive a network change.
//
// quic-go sends each packet from the local address its connection's first
// packet came to (packet-info control messages). When that address is
// gone (the host was renumbered), every send fails; from then on the Conn
// drops packet info and lets the kernel pick the source by its routes.
func (c *Conn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if c.noPktinfo.Load() {
		oob = stripPktinfo(oob)
	}
	n, oobn, err = c.writeMsgUDP(b, oob, addr)
	if err != nil && (addrGone(err) || transient(err)) && hasPktinfo(oob) {
		// The named source may be gone (the kernel says no route, or
		// no such address): without it, does the packet go?
		if n2, oobn2, err2 := c.writeMsgUDP(b, stripPktinfo(oob), addr); err2 == nil {
			c.noPktinfo.Store(true)
			return n2, oobn2, nil
		}
	}
	if err != nil && len(b) > 0 && b[0] >= 0x40 && transient(err) {
		return len(b), len(oob), nil
	}
	return n, oobn, err
}

func (c *Conn) writeMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if addr == nil || len(b) == 0 || b[0] < 0x40 {
		// Not QUIC (STUN, punch checks): always the real address.
		return c.udp.WriteMsgUDP(b, oob, addr)
	}
	virtual := isVirtualIP(addr.IP)
	if !virtual && isInitialV1(b) {
		to := unmapped(addr.AddrPort())
		seg := segmentSize(oob)
		if seg <= 0 || seg >= len(b) {
			seg = len(b)
		}
		for off := 0; off < len(b); off += seg {
			c.flights.note(to, b[off:min(off+seg, len(b))])
		}
	}
	if !virtual && c.adopted.Load() == 0 {
		return c.udp.WriteMsgUDP(b, oob, addr)
	}
	c.mu.RLock()
	p := c.byVirt[unmapped(addr.AddrPort())]
	if p == nil && !virtual {
		c.mu.RUnlock()
		return c.udp.WriteMsgUDP(b, oob, addr)
	}
	var (
		direct netip.AddrPort
		ua     *net.UDPAddr
		fwd    Path
		proved bool
	)
	if p != nil {
		direct, ua, fwd = p.direct, p.udp, p.fwd
		proved = p.proved.Load() != 0
	}
	c.mu.RUnlock()
	switch {
	case p == nil:
		return 0, 0, ErrUnknownPeer
	case direct.IsValid():
		now := time.Now().UnixNano()
		p.sent.Store(now)
		if p.unanswered.Load() <= p.heard.Load() {
			p.unanswered.Store(now)
		}
		if virtual && !proved {
			seg := segmentSize(oob)
			if seg <= 0 || seg >= len(b) {
				seg = len(b)
			}
			for off := 0; off < len(b); off += seg {
				c.unproved.note(p.virt, b[off:min(off+seg, len(b))])
			}
		}
		return c.udp.WriteMsgUDP(b, fixOOB(oob, direct.Addr().Is4()), ua)
	case fwd != nil:
		seg := segmentSize(oob)
		if seg <= 0 || seg >= len(b) {
			seg = len(b)
		}
		p.fwdSent.Add(int64((len(b) + seg - 1) / seg))
		return sendSegments(fwd, b, oob)
	default:
		return 0, 0, ErrNoPath
	}
}

// HandshakeOnly is implemented by a Path that carries the packets of QUIC
// handshakes only (long-header packets), such as a rendezvous server's
// first flight; it decides itself where a session's packets go (or drops
// them). Such a path is never a fallback (Fallback).
type HandshakeOnly interface {
	Path
	HandshakeOnly()
}

func isHandshakeOnly(p Path) bool {
	_, ok := p.(HandshakeOnly)
	return ok
}

func isVirtualIP(ip net.IP) bool {
	ip4 := ip.To4()
	return ip4 != nil && ip4[0]&0xf0 == 240
}

// WriteTo implements net.PacketConn.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return c.udp.WriteTo(b, addr)
	}
	n, _, err := c.WriteMsgUDP(b, nil, ua)
	return n, err
}

// ReadFrom implements net.PacketConn (quic-go reads with ReadBatch).
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	ms := []ipv4.Message{{Buffers: [][]byte{b}}}
	if _, err := c.ReadBatch(ms, 0); err != nil {
		return 0, nil, err
	}
	return ms[0].N, ms[0].Addr, nil
}

// ReadMsgUDP implements quic.OOBCapablePacketConn (quic-go reads with
// ReadBatch).
func (c *Conn) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	ms := []ipv4.Message{{Buffers: [][]byte{b}, OOB: oob}}
	if _, err := c.ReadBatch(ms, 0); err != nil {
		return 0, 0, 0, nil, err
	}
	ua, _ := ms[0].Addr.(*net.UDPAddr)
	return ms[0].N, ms[0].NN, ms[0].Flags, ua, nil
}

// Close closes the socket.
func (c *Conn) Close() error {
	c.closed.Store(true)
	return c.udp.Close()
}

// LocalAddr implements net.PacketConn.
func (c *Conn) LocalAddr() net.Addr { return c.udp.LocalAddr() }

// SetDeadline implements net.PacketConn.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.udp.SetWriteDeadline(t)
}

// SetReadDeadline implements net.PacketConn.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		c.rdl.Store(0)
	} else {
		c.rdl.Store(t.UnixNano())
	}
	return c.udp.SetReadDeadline(t)
}

// SetWriteDeadline implements net.PacketConn.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.udp.SetWriteDeadline(t) }

// SyscallConn implements quic.OOBCapablePacketConn: socket options (DF,
// packet info, GSO detection) are set on the wrapped socket. Reads and
// writes go through the Conn.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.udp.SyscallConn() }

// SetReadBuffer implements quic.OOBCapablePacketConn.
func (c *Conn) SetReadBuffer(n int) error { return c.udp.SetReadBuffer(n) }

// SetWriteBuffer lets quic-go size the send buffer.
func (c *Conn) SetWriteBuffer(n int) error { return c.udp.SetWriteBuffer(n) }
