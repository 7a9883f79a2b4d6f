package relay

import (
	"net"
	"os"
	"sync"
	"time"

	"github.com/reachp2p/reach/identity"
)

// Network is what Addr.Network returns.
const Network = "reach-relay"

// Addr is the address of a peer on a relay: its peer ID. Relayed QUIC
// connections use it as their remote address, so a relayed session names
// its peer, not a path; see docs/architecture.md for why this keeps a later
// move to a direct path possible.
type Addr struct {
	Peer identity.PeerID
}

// Network implements net.Addr.
func (Addr) Network() string { return Network }

// String implements net.Addr: the peer ID.
func (a Addr) String() string { return a.Peer.String() }

// PacketConn is a net.PacketConn over the client's relay link: WriteTo an
// Addr sends the packet to that peer through the relay, ReadFrom returns
// packets peers sent through it. Writes while there is no link are
// dropped, as a UDP socket drops packets without a route; QUIC retransmits.
type PacketConn struct {
	c      *Client
	in     chan inPacket // queue(): made on first use
	inOnce sync.Once
	closed chan struct{}
	once   sync.Once

	mu       sync.Mutex
	deadline time.Time
	dlChange chan struct{} // closed and replaced when the deadline changes
}

type inPacket struct {
	from identity.PeerID
	b    []byte // from getBuf; ReadFrom returns it to the pool
}

// inQueue is how many received packets may wait for ReadFrom; more are
// dropped.
const inQueue = 1024

func newPacketConn(c *Client) *PacketConn {
	return &PacketConn{c: c, closed: make(chan struct{}), dlChange: make(chan struct{})}
}

// queue returns the received-packet queue, made on first use: a client
// whose packets go to ClientConfig.Deliver (a node's) never reads from the
// PacketConn, and its 1024 slots (56 KB) are then never allocated.
func (pc *PacketConn) queue() chan inPacket {
	pc.inOnce.Do(func() { pc.in = make(chan inPacket, inQueue) })
	return pc.in
}

func (pc *PacketConn) deliver(from identity.PeerID, b []byte) {
	if len(b) > MaxPayload {
		return
	}
	buf := append(getBuf(), b...)
	select {
	case pc.queue() <- inPacket{from, buf}:
	default: // full: drop, like a socket buffer
		putBuf(buf)
	}
}

// ReadFrom implements net.PacketConn.
func (pc *PacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		pc.mu.Lock()
		dl, changed := pc.deadline, pc.dlChange
		pc.mu.Unlock()
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case p := <-pc.queue():
			n := copy(b, p.b)
			putBuf(p.b)
			return n, Addr{p.from}, nil
		case <-pc.closed:
			return 0, nil, net.ErrClosed
		case <-timeout:
			return 0, nil, os.ErrDeadlineExceeded
		case <-changed:
		}
	}
}

// WriteTo implements net.PacketConn. addr must be an Addr.
func (pc *PacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	select {
	case <-pc.closed:
		return 0, net.ErrClosed
	default:
	}
	a, ok := addr.(Addr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: Network, Addr: addr, Err: net.InvalidAddrError("not a relay address")}
	}
	if l := pc.c.current(); l != nil {
		l.Send(a.Peer, b) // errors mean the link is going: drop
	}
	return len(b), nil
}

// Close implements net.PacketConn.
func (pc *PacketConn) Close() error {
	pc.once.Do(func() { close(pc.closed) })
	return nil
}

// LocalAddr implements net.PacketConn: the node's own peer ID.
func (pc *PacketConn) LocalAddr() net.Addr { return Addr{pc.c.cfg.Key.ID()} }

// SetDeadline implements net.PacketConn (writes never block long).
func (pc *PacketConn) SetDeadline(t time.Time) error { return pc.SetReadDeadline(t) }

// SetReadDeadline implements net.PacketConn.
func (pc *PacketConn) SetReadDeadline(t time.Time) error {
	pc.mu.Lock()
	pc.deadline = t
	close(pc.dlChange)
	pc.dlChange = make(chan struct{})
	pc.mu.Unlock()
	return nil
}

// SetWriteDeadline implements net.PacketConn; writes do not block long.
func (pc *PacketConn) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer accepts and ignores a socket buffer size: a relayed
// PacketConn queues in memory, not in a kernel socket. It exists so that
// quic-go, which sizes the buffers of every PacketConn it is given, does
// not print a warning for relayed transports.
func (pc *PacketConn) SetReadBuffer(int) error { return nil }

// SetWriteBuffer: see SetReadBuffer.
func (pc *PacketConn) SetWriteBuffer(int) error { return nil }
