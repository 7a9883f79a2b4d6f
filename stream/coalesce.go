package stream

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
)

// yamuxHeaderLen is the size of a yamux frame header: version, type,
// flags (2), stream ID (4), length (4).
const yamuxHeaderLen = 12

// frameConn is the connection yamux writes to, the session's TLS
// connection. yamux's send loop writes a data frame as two writes, its
// header and then its body, and TLS writes each record it makes with a
// syscall of its own: a 64 KiB frame would be six syscalls (the header's
// record and four 16 KiB ones and a little), where a plain TLS stream
// makes four. frameConn has batch, the byte stream under TLS, gather
// every record of a data frame and write them with one syscall.
// Frames without a body (window updates, pings, a bare FIN) go out at
// once. Only yamux's send loop writes to it, plus the stream resets
// (yamuxreset.go) it slips in between two frames, never between a data
// frame's header and its body.
type frameConn struct {
	net.Conn // the TLS connection over batch
	batch    *batchConn
	in       *frameReader // what yamux reads, parsed; nil: Conn's bytes as they are

	wmu     sync.Mutex // held for each write; with inFrame, keeps a frame whole
	idle    sync.Cond  // on wmu: a data frame's body went out
	inFrame bool       // under wmu: a data frame's header went into the batch; its body is next

	rmu      sync.Mutex // the resets waiting to go out
	resets   []byte     // under rmu: their headers
	flushing bool       // under rmu: a goroutine is writing them
}

func (c *frameConn) Read(p []byte) (int, error) {
	if c.in == nil {
		return c.Conn.Read(p)
	}
	return c.in.read(c.Conn, p)
}

func (c *frameConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case c.inFrame:
		c.inFrame = false
		if c.idle.L != nil {
			c.idle.Broadcast()
		}
		n, err := c.Conn.Write(p)
		if ferr := c.batch.end(); err == nil {
			err = ferr
		}
		return n, err
	case isDataHeader(p):
		c.batch.begin()
		n, err := c.Conn.Write(p)
		if err != nil {
			c.batch.end()
			return n, err
		}
		c.inFrame = true
		return n, nil
	default:
		return c.Conn.Write(p)
	}
}

// Close closes the TLS connection. A batch being written (the send loop
// blocked, the peer not reading) is broken first by closing the
// connection under TLS, as tls.Conn.Close does for a Write in flight:
// otherwise TLS's close_notify would queue behind it, up to the 5 s
// deadline TLS gives it.
func (c *frameConn) Close() error {
	c.batch.closing.Store(true)
	if c.batch.flushing.Load() {
		c.batch.Conn.Close()
	}
	return c.Conn.Close()
}

// isDataHeader reports whether p is the header of a yamux data frame
// with a body.
func isDataHeader(p []byte) bool {
	return len(p) == yamuxHeaderLen && p[1] == 0 /* data */ && binary.BigEndian.Uint32(p[8:12]) > 0
}

// maxBatch is the most batchConn gathers before it writes: a frame larger
// than that (a stream's window allows up to 16 MiB) goes out in pieces
// of about this size.
const maxBatch = 256 << 10

// batchBufs are batchConn's buffers, shared by every session: an idle
// session holds none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 80<<10); return &b }}

// batchConn is the byte stream under a TCP path's TLS connection.
// Between begin and end it gathers what TLS writes, and end writes it
// with one syscall. Outside a batch, writes (the handshake, TLS alerts,
// the close_notify) pass straight through.
type batchConn struct {
	net.Conn
	mu  sync.Mutex
	buf *[]byte // while a batch is on
	err error   // a batch's write error: TLS's stream is broken from then on
	// closing is set by frameConn.Close, flushing while a batch is
	// written: whichever comes second sees the other (a closing conn
	// writes no batch; a Close during a batch's write breaks it).
	closing, flushing atomic.Bool
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.buf == nil {
		return c.Conn.Write(p)
	}
	if len(*c.buf)+len(p) > maxBatch && len(*c.buf) > 0 {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

// begin starts gathering writes.
func (c *batchConn) begin() {
	c.mu.Lock()
	if c.buf == nil {
		c.buf = batchBufs.Get().(*[]byte)
	}
	c.mu.Unlock()
}

// end writes what was gathered since begin and stops gathering.
func (c *batchConn) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf == nil {
		return c.err
	}
	err := c.flushLocked()
	if cap(*c.buf) <= 2*maxBatch {
		batchBufs.Put(c.buf)
	}
	c.buf = nil
	return err
}

func (c *batchConn) flushLocked() error {
	if c.err == nil && len(*c.buf) > 0 {
		c.flushing.Store(true)
		if c.closing.Load() {
			c.err = net.ErrClosed
		} else {
			_, c.err = c.Conn.Write(*c.buf)
		}
		c.flushing.Store(false)
	}
	*c.buf = (*c.buf)[:0]
	return c.err
}
