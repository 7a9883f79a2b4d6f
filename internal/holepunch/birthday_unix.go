//go:build unix

package holepunch

import (
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// writeTTL sends b to `to` from c with the given IPv4 TTL, then restores
// the socket's default TTL, so the packets that follow (a pong, QUIC) go
// at full TTL. ttl 0: full TTL.
func writeTTL(c net.PacketConn, b []byte, to netip.AddrPort, ttl int) error {
	sc, ok := c.(syscall.Conn)
	if ttl <= 0 || !ok {
		_, err := c.WriteTo(b, net.UDPAddrFromAddrPort(to))
		return err
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	old := 64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL); err == nil {
			old = v
		}
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, ttl)
	}); err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	_, werr := c.WriteTo(b, net.UDPAddrFromAddrPort(to))
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, old) }); err != nil {
		return err
	}
	if werr != nil {
		return werr
	}
	return serr
}

// fdHeadroom is how many more file descriptors the process may open,
// keeping reserve for everything else.
func fdHeadroom(reserve int) int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	open := 0
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		open = len(ents)
	} else {
		open = reserve // no /proc: assume as much again is in use
	}
	return int(lim.Cur) - open - reserve
}
