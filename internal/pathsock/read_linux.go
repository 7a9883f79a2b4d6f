//go:build linux

package pathsock

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr: a msghdr and the length received.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// sysReader reads with recvmmsg into storage it keeps from call to call
// (the message headers, their iovecs and their source addresses), where
// x/net's ReadBatch makes a *net.UDPAddr for every datagram.
type sysReader struct {
	rc    syscall.RawConn
	hs    []mmsghdr
	iov   []unix.Iovec
	names []unix.RawSockaddrInet6
	zones map[uint32]string // interface names of IPv6 scope ids

	// One call's: what recv does and what it found.
	flags, n int
	errno    syscall.Errno
	recvFn   func(fd uintptr) bool // r.recv, made once
}

// sysRead reads a batch with recvmmsg; ok is false when it cannot (a
// message of other than one buffer, no raw access to the socket), and
// the caller reads with x/net's ReadBatch.
// The sources go to froms (at least len(ms) long).
func (c *Conn) sysRead(s *sysReader, ms []ipv4.Message, froms []netip.AddrPort, flags int) (n int, ok bool, err error) {
	if c.raw == nil || len(ms) == 0 || !s.prepare(ms) {
		return 0, false, nil
	}
	if s.recvFn == nil {
		s.recvFn = s.recv
	}
	s.flags, s.n, s.errno = flags, 0, 0
	if err := c.raw.Read(s.recvFn); err != nil {
		return 0, true, err
	}
	if s.errno != 0 {
		return 0, true, &net.OpError{Op: "read", Net: "udp", Source: c.udp.LocalAddr(), Err: os.NewSyscallError("recvmmsg", s.errno)}
	}
	for i := range ms[:s.n] {
		m, h := &ms[i], &s.hs[i]
		m.N = int(h.len)
		m.NN = int(h.hdr.Controllen)
		m.Flags = int(h.hdr.Flags)
		froms[i] = s.source(i)
	}
	return s.n, true, nil
}

// prepare points the headers at ms's buffers; false if a message has
// other than one non-empty buffer.
func (s *sysReader) prepare(ms []ipv4.Message) bool {
	if len(s.hs) < len(ms) {
		s.hs = make([]mmsghdr, len(ms))
		s.iov = make([]unix.Iovec, len(ms))
		s.names = make([]unix.RawSockaddrInet6, len(ms))
	}
	for i := range ms {
		m := &ms[i]
		if len(m.Buffers) != 1 || len(m.Buffers[0]) == 0 {
			return false
		}
		iov := &s.iov[i]
		iov.Base = &m.Buffers[0][0]
		iov.SetLen(len(m.Buffers[0]))
		h := &s.hs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&s.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = iov
		h.SetIovlen(1)
		if len(m.OOB) > 0 {
			h.Control = &m.OOB[0]
			h.SetControllen(len(m.OOB))
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
		h.Flags = 0
		s.hs[i].len = 0
	}
	return true
}

// recv is the raw read: false to wait until the socket is readable.
func (s *sysReader) recv(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&s.hs[0])), uintptr(len(s.hs)), uintptr(s.flags), 0, 0)
		switch e {
		case 0:
			s.n = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			s.errno = e
			return true
		}
	}
}

// source is the source address of message i, as the kernel wrote it.
func (s *sysReader) source(i int) netip.AddrPort {
	sa := &s.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port(&sa4.Port))
	case unix.AF_INET6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			a = a.WithZone(s.zone(sa.Scope_id))
		}
		return netip.AddrPortFrom(a, port(&sa.Port))
	}
	return netip.AddrPort{}
}

// port reads a port in network byte order.
func port(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// zone names the interface of an IPv6 scope id (as the net package does).
func (s *sysReader) zone(id uint32) string {
	if z, ok := s.zones[id]; ok {
		return z
	}
	z := strconv.FormatUint(uint64(id), 10)
	if ifi, err := net.InterfaceByIndex(int(id)); err == nil {
		z = ifi.Name
	}
	if s.zones == nil || len(s.zones) >= 64 {
		s.zones = map[uint32]string{}
	}
	s.zones[id] = z
	return z
}
