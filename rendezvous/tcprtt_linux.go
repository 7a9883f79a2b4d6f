//go:build linux

package rendezvous

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// tcpRTT returns a function that reads the kernel's smoothed round-trip
// time of c (TCP_INFO), or nil when c is not a plain TCP connection.
func tcpRTT(c net.Conn) func() time.Duration {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return func() time.Duration {
		var rtt time.Duration
		rc.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				rtt = time.Duration(info.Rtt) * time.Microsecond
			}
		})
		return rtt
	}
}
