package rendezvous

import (
	"net"
	"sync"
)

// heldConn is the TCP connection under a server's TLS connections. A
// Protocol that writes many records at once (the relay coalesces up to
// 64 KB of packets into one tls.Conn.Write, which crypto/tls sends as one
// write call per 16 KB record) can hold the writes and send them in one
// call: the relay finds the HoldWrites and FlushWrites methods on
// tls.Conn.NetConn. Other writes go straight through.
type heldConn struct {
	net.Conn
	mu   sync.Mutex
	held *[]byte // from heldBufs while held; nil: write through
}

// heldBufs recycles the buffers of held writes, so that an idle
// connection keeps none.
var heldBufs = sync.Pool{New: func() any { b := make([]byte, 0, 80<<10); return &b }}

// Write implements net.Conn.
func (c *heldConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held != nil {
		*c.held = append(*c.held, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// HoldWrites keeps what is written from now on until FlushWrites.
func (c *heldConn) HoldWrites() {
	c.mu.Lock()
	if c.held == nil {
		c.held = heldBufs.Get().(*[]byte)
		*c.held = (*c.held)[:0]
	}
	c.mu.Unlock()
}

// FlushWrites sends what was held, in one write, and writes through again.
func (c *heldConn) FlushWrites() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.held
	if h == nil {
		return nil
	}
	c.held = nil
	var err error
	if len(*h) > 0 {
		_, err = c.Conn.Write(*h)
	}
	if cap(*h) <= 256<<10 {
		heldBufs.Put(h)
	}
	return err
}
