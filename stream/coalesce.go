package stream

import (
	"encoding/binary"
	"net"
)

// yamuxHeaderLen is the size of a yamux frame header: version, type,
// flags (2), stream ID (4), length (4).
const yamuxHeaderLen = 12

// coalesceConn is the connection yamux writes to: it holds back the
// header of a data frame and writes it together with the frame's body,
// which yamux's send loop writes next, so that each frame is one TLS
// write (one record for a small frame, and no 12-byte record of its own
// with a syscall for every frame). Other frames (window updates, pings)
// have no body and go out at once. Only yamux's send loop writes to it.
type coalesceConn struct {
	net.Conn
	held []byte // a data frame's header, waiting for its body
	buf  []byte // header and body, reused
}

func (c *coalesceConn) Write(p []byte) (int, error) {
	if c.held == nil && len(p) == yamuxHeaderLen && p[1] == 0 /* data */ && binary.BigEndian.Uint32(p[8:12]) > 0 {
		c.held = append(c.buf[:0], p...)
		return len(p), nil
	}
	if c.held == nil {
		return c.Conn.Write(p)
	}
	c.buf = append(c.held, p...)
	c.held = nil
	n, err := c.Conn.Write(c.buf)
	return max(n-yamuxHeaderLen, 0), err
}
