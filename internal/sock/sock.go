// Package sock owns a node's one UDP socket.
//
// Every UDP packet a node sends or receives goes through a single
// *net.UDPConn: QUIC sessions (to peers and to the rendezvous server), STUN
// binding requests and punch packets. That way the NAT mapping that STUN and
// the rendezvous server observe is the very mapping QUIC later uses.
//
// The UDPConn is handed to one *quic.Transport inside a pathsock.Conn,
// which gives each peer an address that outlives its paths and keeps
// quic-go's fast path (GSO/GRO, batched I/O, large buffers). Packets whose first byte
// is below 0x40 are not QUIC; quic-go queues them for
// Transport.ReadNonQUICPacket, and a Socket reads them in one goroutine and
// hands each to the Handler registered for its first byte. STUN responses to
// this socket's own requests are matched to the waiting STUN call first.
//
// Addresses handed out by a Socket are never IPv4-mapped IPv6 addresses: a
// dual-stack socket sees IPv4 peers as ::ffff:a.b.c.d, and Socket unmaps them.
// Conversely WriteTo accepts plain IPv4 destinations on a dual-stack socket.
package sock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/internal/pathsock"
)

// DefaultBufferSize is the socket buffer size requested when Config leaves
// ReadBuffer or WriteBuffer zero. quic-go asks for the same amount; the
// kernel may grant less (net.core.rmem_max / wmem_max).
const DefaultBufferSize = 7 << 20

// MaxNonQUICFirstByte is the largest first byte of a packet that quic-go
// treats as not QUIC (neither the long-header nor the fixed bit set).
const MaxNonQUICFirstByte = 0x3f

// Named errors. Test with errors.Is.
var (
	// ErrClosed: the Socket has been closed.
	ErrClosed = errors.New("sock: socket closed")
	// ErrSTUNTimeout: no STUN response arrived before the context ended or
	// the retransmissions ran out.
	ErrSTUNTimeout = errors.New("sock: STUN server did not answer")
	// ErrSTUNResponse: the STUN server answered with an error response or a
	// response without a mapped address.
	ErrSTUNResponse = errors.New("sock: bad STUN response")
)

// Config configures Listen. The zero value is ready to use.
type Config struct {
	// Addr is the local address to bind. The zero value binds all
	// interfaces, dual-stack ([::], IPv4 and IPv6) where the system allows
	// it, on a random port. An address with an invalid IP but a non-zero
	// port binds all interfaces on that port. An IPv4 address binds an
	// IPv4-only socket; any other IPv6 address binds an IPv6 socket.
	Addr netip.AddrPort
	// ReadBuffer is the kernel receive buffer size in bytes. Zero asks for
	// DefaultBufferSize (7 MiB). The kernel may grant less.
	ReadBuffer int
	// WriteBuffer is the kernel send buffer size in bytes. Zero asks for
	// DefaultBufferSize (7 MiB). The kernel may grant less.
	WriteBuffer int
	// Logger receives debug logs. Nil discards them.
	Logger *slog.Logger
	// GRO asks the kernel for UDP GRO on the socket (pathsock.EnableGRO):
	// a sender's run of datagrams read as one message and split again,
	// at the cost of 512 KiB of read buffers. False: one datagram per
	// message.
	GRO bool
}

// Handler handles one non-QUIC packet. It runs on the socket's single read
// goroutine, so it must not block: hand long work to another goroutine. pkt
// is only valid until the handler returns (the buffer is reused for the next
// packet); copy it to keep it. from is never an IPv4-mapped address.
type Handler func(pkt []byte, from netip.AddrPort)

// Socket is a node's UDP socket: a quic.Transport plus a demultiplexer for
// non-QUIC packets. Its methods are safe for concurrent use.
type Socket struct {
	conn  *net.UDPConn
	paths *pathsock.Conn
	tr    *quic.Transport
	log   *slog.Logger
	local netip.AddrPort
	ipv6  bool // the socket is AF_INET6: IPv4 destinations must be mapped

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	done   chan struct{} // closed when the read loop has returned

	mu       sync.Mutex
	handlers [MaxNonQUICFirstByte + 1]Handler
	stun     map[[12]byte]chan []byte // STUN transaction ID -> waiting call
	closed   bool
}

// Listen opens the socket and its QUIC transport and starts reading
// non-QUIC packets.
func Listen(cfg Config) (*Socket, error) {
	network := "udp"
	laddr := &net.UDPAddr{Port: int(cfg.Addr.Port())}
	if ip := cfg.Addr.Addr(); ip.IsValid() {
		laddr.IP = ip.AsSlice()
		laddr.Zone = ip.Zone()
		if ip.Is4() || ip.Is4In6() {
			network = "udp4"
			laddr.IP = ip.Unmap().AsSlice()
		} else if !ip.IsUnspecified() {
			network = "udp6"
		} else {
			laddr.IP = nil // [::]: dual-stack
		}
	}
	conn, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, fmt.Errorf("sock: listen: %w", err)
	}
	rb, wb := cfg.ReadBuffer, cfg.WriteBuffer
	if rb == 0 {
		rb = DefaultBufferSize
	}
	if wb == 0 {
		wb = DefaultBufferSize
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	// Failures only mean a smaller buffer; quic-go tries again and warns.
	if err := conn.SetReadBuffer(rb); err != nil {
		log.Debug("sock: set read buffer", "size", rb, "err", err)
	}
	if err := conn.SetWriteBuffer(wb); err != nil {
		log.Debug("sock: set write buffer", "size", wb, "err", err)
	}
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	paths := pathsock.New(conn)
	if cfg.GRO && !paths.EnableGRO() {
		log.Debug("sock: UDP GRO not available")
	}
	s := &Socket{
		conn:  conn,
		paths: paths,
		tr:    &quic.Transport{Conn: paths},
		log:   log,
		local: unmap(local),
		ipv6:  local.Addr().Is6() && !local.Addr().Is4In6(),
		done:  make(chan struct{}),
		stun:  make(map[[12]byte]chan []byte),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	// Tell quic-go to queue non-QUIC packets from now on (it drops them
	// until the first ReadNonQUICPacket call). The context is already
	// cancelled, so this returns at once; nothing can be queued yet.
	dead, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := s.tr.ReadNonQUICPacket(dead, nil); err != nil && !errors.Is(err, context.Canceled) {
		s.cancel()
		s.tr.Close()
		conn.Close()
		return nil, fmt.Errorf("sock: start transport: %w", err)
	}
	go s.readLoop()
	log.Debug("sock: listening", "addr", s.local, "dual-stack", s.ipv6 && s.local.Addr().IsUnspecified())
	return s, nil
}

// Transport returns the QUIC transport on the socket. Do not close it;
// close the Socket.
func (s *Socket) Transport() *quic.Transport { return s.tr }

// Paths returns the socket's table of peers' virtual addresses and paths.
func (s *Socket) Paths() *pathsock.Conn { return s.paths }

// LocalAddr returns the bound address, e.g. [::]:4900 for a dual-stack
// socket. It is never IPv4-mapped.
func (s *Socket) LocalAddr() netip.AddrPort { return s.local }

// Port returns the bound port.
func (s *Socket) Port() uint16 { return s.local.Port() }

// Handle registers h for non-QUIC packets whose first byte is first,
// replacing any previous handler; a nil h removes it. Packets with no handler
// are dropped. For first bytes 0x00 and 0x01 (STUN), h sees only packets that
// are not responses to this socket's own STUN requests, e.g. binding
// requests from others. Handle panics if first > MaxNonQUICFirstByte: quic-go
// would never deliver such packets.
func (s *Socket) Handle(first byte, h Handler) {
	if first > MaxNonQUICFirstByte {
		panic(fmt.Sprintf("sock: Handle(%#x): first byte must be below 0x40", first))
	}
	s.mu.Lock()
	s.handlers[first] = h
	s.mu.Unlock()
}

// WriteTo sends one packet to to through the QUIC transport. An IPv4
// destination is mapped to IPv6 when the socket is IPv6 (dual-stack).
func (s *Socket) WriteTo(b []byte, to netip.AddrPort) error {
	if s.ctx.Err() != nil {
		return ErrClosed
	}
	_, err := s.tr.WriteTo(b, net.UDPAddrFromAddrPort(s.wire(to)))
	if err != nil {
		if s.ctx.Err() != nil {
			return ErrClosed
		}
		return fmt.Errorf("sock: write to %v: %w", to, err)
	}
	return nil
}

// wire converts a destination to the form the socket's family needs.
func (s *Socket) wire(to netip.AddrPort) netip.AddrPort {
	ip := to.Addr()
	if s.ipv6 && ip.Is4() {
		ip = netip.AddrFrom16(ip.As16())
	} else if !s.ipv6 {
		ip = ip.Unmap()
	}
	return netip.AddrPortFrom(ip, to.Port())
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Close closes the QUIC transport (abruptly ending its connections: close
// sessions first for a clean shutdown) and the socket, and waits for the read
// goroutine to stop. Pending STUN calls return ErrClosed. Close is idempotent.
func (s *Socket) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.done
		return nil
	}
	s.closed = true
	s.mu.Unlock()

	s.cancel()
	err := s.tr.Close()
	if cerr := s.paths.Close(); err == nil {
		err = cerr
	}
	<-s.done
	return err
}

func (s *Socket) readLoop() {
	defer close(s.done)
	// Larger than any datagram quic-go hands over.
	buf := make([]byte, 1<<16)
	for {
		n, addr, err := s.tr.ReadNonQUICPacket(s.ctx, buf)
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Debug("sock: read loop stopped", "err", err)
			}
			return
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok || n == 0 {
			continue
		}
		s.dispatch(buf[:n], unmap(ua.AddrPort()))
	}
}

func (s *Socket) dispatch(pkt []byte, from netip.AddrPort) {
	first := pkt[0]
	if first <= 0x01 && s.stunResponse(pkt) {
		return
	}
	if first > MaxNonQUICFirstByte {
		return
	}
	s.mu.Lock()
	h := s.handlers[first]
	s.mu.Unlock()
	if h == nil {
		return
	}
	h(pkt, from)
}
