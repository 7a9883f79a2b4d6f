package tlstake

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"time"
)

// memConn is an in-memory net.Conn: reads return r (at most chunk bytes
// each when chunk > 0), then io.EOF; writes go to w.
type memConn struct {
	r      []byte
	chunk  int
	w      bytes.Buffer
	closed bool
}

func (m *memConn) Read(p []byte) (int, error) {
	if m.closed {
		return 0, net.ErrClosed
	}
	if len(m.r) == 0 {
		return 0, io.EOF
	}
	if m.chunk > 0 && len(p) > m.chunk {
		p = p[:m.chunk]
	}
	n := copy(p, m.r)
	m.r = m.r[n:]
	return n, nil
}

func (m *memConn) Write(p []byte) (int, error) {
	if m.closed {
		return 0, net.ErrClosed
	}
	return m.w.Write(p)
}

func (m *memConn) Close() error { m.closed = true; return nil }

var memAddr = net.TCPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:443"))

func (m *memConn) LocalAddr() net.Addr                { return memAddr }
func (m *memConn) RemoteAddr() net.Addr               { return memAddr }
func (m *memConn) SetDeadline(t time.Time) error      { return nil }
func (m *memConn) SetReadDeadline(t time.Time) error  { return nil }
func (m *memConn) SetWriteDeadline(t time.Time) error { return nil }
