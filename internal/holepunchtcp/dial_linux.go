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
	"time"

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
	f := os.NewFile(uintptr(fd), "holepunch-tcp")
	c, err := net.FileConn(f) // a dup, in the runtime's poller
	f.Close()
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	rc, err := tc.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { tc.SetWriteDeadline(time.Unix(1, 0)) })
	var cerr error
	werr := rc.Write(func(fd uintptr) bool {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			cerr = err
			return true
		}
		switch info.State {
		case unix.BPF_TCP_ESTABLISHED:
			return true
		case unix.BPF_TCP_SYN_SENT, unix.BPF_TCP_SYN_RECV:
			return false // wait until it is writable or fails
		}
		if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
			cerr = syscall.Errno(v)
		} else {
			cerr = unix.ECONNREFUSED
		}
		return true
	})
	if !stop() || ctx.Err() != nil {
		c.Close()
		return nil, ctx.Err()
	}
	if werr == nil {
		werr = cerr
	}
	if werr != nil {
		c.Close()
		return nil, os.NewSyscallError("connect", werr)
	}
	return &conn{TCPConn: tc,
		local:  net.TCPAddrFromAddrPort(local),
		remote: net.TCPAddrFromAddrPort(remote)}, nil
}

// conn is a connection made from a raw socket: net.FileConn does not
// know its peer (it was not connected yet), so the addresses are ours.
type conn struct {
	*net.TCPConn
	local, remote net.Addr
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

// taken reports whether err says the connection's four-tuple is in use:
// the peer's connection reached this node's listener already.
func taken(err error) bool {
	return errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.EADDRINUSE)
}

// refused reports whether err is an attempt the peer's side turned away
// (a reset or an ICMP error): a fresh socket may try again.
func refused(err error) bool {
	return errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ECONNRESET) ||
		errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.ETIMEDOUT)
}
