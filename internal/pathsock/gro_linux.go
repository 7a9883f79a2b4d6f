//go:build linux

package pathsock

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// msgTrunc is the flag of a message the kernel cut to its buffer.
const msgTrunc = unix.MSG_TRUNC

// EnableGRO asks the kernel to coalesce the datagrams this socket receives
// (UDP_GRO: a run from one source, of one size, as one message), so that
// one recvmmsg message and one wake-up carry a sender's whole GSO batch.
// The Conn splits the runs again: quic-go and the InterceptFuncs still see
// one datagram at a time. Call it before anything reads from the Conn (a
// read already waiting with quic-go's small buffers would truncate a run).
// It reports whether the kernel took the option; without it the Conn
// reads as before.
func (c *Conn) EnableGRO() bool {
	if c.raw == nil {
		return false
	}
	var serr error
	if err := c.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1)
	}); err != nil || serr != nil {
		return false
	}
	c.gro.Store(true)
	return true
}

// splitGRO takes the segment size out of a message's control messages: it
// returns the size (0 if there is none) and the length of oob with the
// UDP_GRO message removed (the others moved down in place).
func splitGRO(oob []byte) (seg, nn int) {
	rest := oob
	for len(rest) > 0 {
		h, data, r, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			return seg, nn
		}
		space := len(rest) - len(r)
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 4 {
			seg = int(binary.NativeEndian.Uint32(data))
		} else {
			nn += copy(oob[nn:], rest[:space])
		}
		rest = r
	}
	return seg, nn
}
