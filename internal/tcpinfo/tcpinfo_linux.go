//go:build linux

package tcpinfo

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// RTT returns the kernel's smoothed round-trip time of c, a plain TCP
// connection (TCP_INFO), or zero (not TCP, or unknown yet).
func RTT(c net.Conn) time.Duration {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	var rtt time.Duration
	rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			rtt = time.Duration(info.Rtt) * time.Microsecond
		}
	})
	return rtt
}

// Supported reports whether RTT can say anything on this system.
const Supported = true
