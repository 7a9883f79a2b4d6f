//go:build linux

package holepunchtcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// dialFrom connects from local (the node's listening port, shared with
// SO_REUSEADDR/SO_REUSEPORT) to remote, and returns once the connection
// is established (by a SYN-ACK or by a simultaneous open) or failed, or
// ctx is done. ttl > 0 is the TTL of the first SYN only: it is set before
// connect() and the socket's own is restored at once, so retransmissions
// and the SYN-ACK of a simultaneous open go at full TTL. inNet runs the
// socket's creation where the node's sockets belong; sent is called
// once connect() has sent the first SYN.
func dialFrom(ctx context.Context, inNet func(func() error) error, local, remote netip.AddrPort, ttl int, sent func()) (net.Conn, error) {
	if !local.Addr().Unmap().Is4() || !remote.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("holepunch-tcp: IPv4 only: %v -> %v", local, remote)
	}
	fd := -1
	err := inNet(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	fail := func(op string, err error) (net.Conn, error) {
		unix.Close(fd)
		return nil, os.NewSyscallError(op, err)
	}
	for _, o := range []int{unix.SO_REUSEADDR, unix.SO_REUSEPORT} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o, 1); err != nil {
			return fail("setsockopt", err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(local.Port()), Addr: local.Addr().Unmap().As4()}); err != nil {
		return fail("bind", err)
	}
	old := 0
	if ttl > 0 {
		if old, err = unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL); err != nil {
			return fail("getsockopt", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
			return fail("setsockopt", err)
		}
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(remote.Port()), Addr: remote.Addr().Unmap().As4()})
	sent()
	if ttl > 0 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, old); err != nil {
			return fail("setsockopt", err)
		}
	}
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fail("connect", err)
	}
	// Wait outside the runtime's poller: a socket registered while it
	// connects can carry an error event from that phase (an ICMP error
	// for the primer, say) that the poller then reports on the first read
	// of the established connection ("not pollable"). The connection is
	// handed to the poller only once established.
	if err := waitConnected(ctx, fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "holepunch-tcp")
	c, err := net.FileConn(f) // a dup, in the runtime's poller
	f.Close()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// waitConnected polls fd until its connection is established or failed,
// or ctx is done.
func waitConnected(ctx context.Context, fd int) error {
	for {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return os.NewSyscallError("getsockopt", err)
		}
		switch info.State {
		case unix.BPF_TCP_ESTABLISHED:
			// A soft error left from the connecting phase is not the
			// connection's.
			unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			return nil
		case unix.BPF_TCP_SYN_SENT, unix.BPF_TCP_SYN_RECV:
		default:
			if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
				return os.NewSyscallError("connect", syscall.Errno(v))
			}
			return os.NewSyscallError("connect", unix.ECONNREFUSED)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if _, err := unix.Poll(pfd, 20); err != nil && !errors.Is(err, unix.EINTR) {
			return os.NewSyscallError("poll", err)
		}
	}
}

// taken reports whether err says the connection's four-tuple is in use:
// the peer's connection reached this node's listener already.
func taken(err error) bool {
	return errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.EADDRINUSE)
}

// expired reports whether err is a primer's death by an ICMP error (its
// TTL ran out at a router).
func expired(err error) bool { return errors.Is(err, unix.EHOSTUNREACH) }

// refused reports whether err is an attempt the peer's side turned away
// (a reset or an ICMP error): a fresh socket may try again.
func refused(err error) bool {
	return errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ECONNRESET) ||
		errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.ETIMEDOUT)
}
