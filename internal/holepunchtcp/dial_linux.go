//go:build linux

package holepunchtcp

import (
	"context"
	"encoding/binary"
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
// ctx is done. inNet runs the socket's creation where the node's sockets
// belong; sent is called once connect() has sent the first SYN.
//
// With primerTTL > 0 the first SYN is a primer: it carries that TTL (the
// socket's own is restored at once, so retransmissions and the SYN-ACK of
// a simultaneous open go at full TTL), and until the connection is
// established the socket drops the ICMP time-exceeded its expiry brings
// back (primerMinTTL), which would kill it in SYN-SENT and SYN-RECV
// whenever it came, while the peer's SYN gets in at any time.
func dialFrom(ctx context.Context, inNet func(func() error) error, local, remote netip.AddrPort, primerTTL int, sent func()) (net.Conn, error) {
	if !local.Addr().Unmap().Is4() || !remote.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("holepunch-tcp: IPv4 only: %v -> %v", local, remote)
	}
	fd, err := tcpSocket(inNet)
	if err != nil {
		return nil, err
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
	if primerTTL > 0 {
		if old, err = unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL); err != nil {
			return fail("getsockopt", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, primerTTL); err != nil {
			return fail("setsockopt", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MINTTL, primerMinTTL); err != nil {
			return fail("setsockopt", err)
		}
	}
	to := &unix.SockaddrInet4{Port: int(remote.Port()), Addr: remote.Addr().Unmap().As4()}
	err = unix.Connect(fd, to)
	sent()
	if primerTTL > 0 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, old); err != nil {
			return fail("setsockopt", err)
		}
	}
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fail("connect", err)
	}
	// Wait outside the runtime's poller: a socket registered while it
	// connects can carry an error event from that phase (an ICMP error,
	// say) that the poller then reports on the first read of the
	// established connection ("not pollable"). The connection is handed
	// to the poller only once established.
	if err := waitConnected(ctx, fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if primerTTL > 0 {
		// Established: the primer's ICMP error, should it come now, is
		// out of the window and ignored anyway.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MINTTL, 0); err != nil {
			return fail("setsockopt", err)
		}
	}
	f := os.NewFile(uintptr(fd), "holepunch-tcp")
	c, err := net.FileConn(f) // a dup, in the runtime's poller
	f.Close()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// primerMinTTL is a primer's IP_MINTTL while it connects. The kernel
// holds an ICMP error against IP_MINTTL by the TTL in the header the
// error quotes, the packet's own as it reached the router that sent the
// error (tcp_v4_err), not by the TTL the error itself arrives with. A
// router quotes an expired packet with a TTL of 1 (or 0): the primer's
// own time-exceeded is dropped, while segments and errors for packets
// that went out at full TTL pass (a segment is held against IP_MINTTL by
// the TTL it arrives with: the peer's SYN, sent at 64 or 128, arrives
// with far more than 2). IP_MINTTL 255, as before, made the primer deaf
// to the peer's SYN as well, so it could stay deaf only for a hold timed
// to end before that SYN came and after its own ICMP error did: under
// load one of the two came late (the CI, 2 dials in 13 runs relayed).
const primerMinTTL = 2

// tcpSocket makes a non-blocking IPv4 TCP socket where inNet says.
func tcpSocket(inNet func(func() error) error) (int, error) {
	fd := -1
	err := inNet(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// startProbe sends a SYN of the given TTL to to from an ephemeral port,
// on a socket that queues the ICMP error it gets (IP_RECVERR: even one
// that arrives while connect() holds the socket, which would otherwise
// leave no trace). It returns the socket, or -1 if it could not.
func startProbe(inNet func(func() error) error, to *unix.SockaddrInet4, ttl int) int {
	fd, err := tcpSocket(inNet)
	if err != nil {
		return -1
	}
	if unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl) != nil ||
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1) != nil {
		unix.Close(fd)
		return -1
	}
	if err := unix.Connect(fd, to); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return -1
	}
	return fd
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

// measureHop sends one SYN of the given TTL to to (the server) from an
// ephemeral port and reports what came back within wait: the time until
// an ICMP time-exceeded and the router that sent it (a router within ttl
// hops answers, as it will answer a primer), or silent (the SYN reached
// the server: no router within ttl hops answers on that path), or
// neither (nothing came back).
func measureHop(ctx context.Context, inNet func(func() error) error, to netip.AddrPort, ttl int, wait time.Duration) (hop time.Duration, silent bool, router netip.Addr) {
	if !to.Addr().Unmap().Is4() {
		return 0, false, netip.Addr{}
	}
	start := time.Now()
	fd := startProbe(inNet, &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().Unmap().As4()}, ttl)
	if fd < 0 {
		return 0, false, netip.Addr{}
	}
	// Closed with a reset, not a FIN, if the server answered.
	defer func() {
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}()
	for deadline := start.Add(wait); ctx.Err() == nil; {
		d := time.Until(deadline)
		if d <= 0 {
			return 0, false, netip.Addr{}
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(min(d, 20*time.Millisecond)/time.Millisecond)+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return 0, false, netip.Addr{}
		}
		if n == 0 {
			continue
		}
		el := time.Since(start)
		if from, ok := icmpTimeExceeded(fd); ok { // queued by IP_RECVERR, dead socket or not
			return el, false, from
		}
		v, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		switch e := syscall.Errno(v); {
		case v == 0 && pfd[0].Revents&unix.POLLOUT != 0, e == unix.ECONNREFUSED, e == unix.ECONNRESET:
			return 0, true, netip.Addr{} // connected or refused: the SYN got there
		case v != 0:
			return 0, false, netip.Addr{} // another error: nothing learned
		}
	}
	return 0, false, netip.Addr{}
}

// icmpTimeExceeded reports whether fd's error queue holds an ICMP time-
// exceeded (queued by IP_RECVERR even when the socket lives on), and the
// router that sent it (the offender address after the extended error).
func icmpTimeExceeded(fd int) (netip.Addr, bool) {
	buf := make([]byte, 64)
	oob := make([]byte, 512)
	_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
	if err != nil {
		return netip.Addr{}, false
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return netip.Addr{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR && len(m.Data) >= 6 {
			// struct sock_extended_err: errno (4), origin (1), type (1),
			// code, pad, info (4), data (4); then the offender's
			// sockaddr_in: family (2), port (2), address (4).
			if m.Data[4] == unix.SO_EE_ORIGIN_ICMP && m.Data[5] == 11 {
				var from netip.Addr
				if len(m.Data) >= 24 && binary.NativeEndian.Uint16(m.Data[16:18]) == unix.AF_INET {
					from = netip.AddrFrom4([4]byte(m.Data[20:24]))
				}
				return from, true
			}
		}
	}
	return netip.Addr{}, false
}
