package relay

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/pion/transport/v4/deadline"
)

// streamConn is one end of a relayed stream: a net.Conn whose bytes travel
// in DATA frames on the node's link, flow-controlled by WINDOW frames (the
// receiver grants its sender StreamWindow bytes beyond what its
// application read). Each end may send StreamWindow bytes before any
// WINDOW: the opener's first bytes (a TLS ClientHello) follow its OPEN at
// once.
type streamConn struct {
	m      *streamMux
	ref    streamRef
	rd, wd *deadline.Deadline

	ready     chan struct{} // closed at the acceptor's first WINDOW (a dialled stream)
	readyOnce sync.Once
	done      chan struct{} // closed when the stream closed or failed
	doneOnce  sync.Once
	readable  chan struct{} // signalled when bytes, a FIN or a failure came
	writable  chan struct{} // signalled when the peer granted more

	wmu sync.Mutex // one Write at a time: its chunks stay in order

	mu       sync.Mutex
	rq       byteQueue // received, not read yet
	received uint64    // stream bytes received
	consumed uint64    // stream bytes the application read
	granted  uint64    // the limit this end last granted its peer
	sent     uint64    // stream bytes sent
	limit    uint64    // the limit the peer granted
	rfin     bool      // the peer closed the stream
	closed   bool      // Close was called
	err      error     // the stream failed: reads and writes return it
}

func newStreamConn(m *streamMux, ref streamRef) *streamConn {
	return &streamConn{m: m, ref: ref, rd: deadline.New(), wd: deadline.New(),
		ready: make(chan struct{}), done: make(chan struct{}),
		readable: make(chan struct{}, 1), writable: make(chan struct{}, 1),
		granted: StreamWindow, limit: StreamWindow}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *streamConn) finish() { c.doneOnce.Do(func() { close(c.done) }) }

// Read implements net.Conn.
func (c *streamConn) Read(b []byte) (int, error) {
	for {
		select {
		case <-c.rd.Done():
			return 0, os.ErrDeadlineExceeded
		default:
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if c.rq.Len() > 0 {
			n := c.rq.read(b)
			c.consumed += uint64(n)
			var grant []byte
			if c.err == nil && !c.rfin && c.consumed+StreamWindow-c.granted >= StreamWindow/4 {
				c.granted = c.consumed + StreamWindow
				grant = appendStreamFrame(nil, frameWindow, c.ref, windowBody(c.granted))
			}
			c.mu.Unlock()
			if grant != nil && !c.m.co.tryAppend(grant) {
				// The link is backed up: the grant goes when there is
				// room, and Read does not wait for it (a later grant
				// overtaking it is harmless: the peer keeps the highest).
				go c.m.send(grant)
			}
			return n, nil
		}
		if c.rfin {
			c.mu.Unlock()
			return 0, io.EOF
		}
		if err := c.err; err != nil {
			c.mu.Unlock()
			return 0, err
		}
		c.mu.Unlock()
		if len(b) == 0 {
			return 0, nil
		}
		select {
		case <-c.readable:
		case <-c.done:
		case <-c.rd.Done():
		}
	}
}

// Write implements net.Conn: it returns once b is queued on the link,
// waiting for the peer's window when it is used up.
func (c *streamConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := 0
	for {
		select {
		case <-c.wd.Done():
			return total, os.ErrDeadlineExceeded
		default:
		}
		c.mu.Lock()
		switch {
		case c.closed:
			c.mu.Unlock()
			return total, net.ErrClosed
		case c.err != nil:
			err := c.err
			c.mu.Unlock()
			return total, err
		case c.rfin:
			c.mu.Unlock()
			return total, ErrStreamClosed
		}
		if len(b) == 0 {
			c.mu.Unlock()
			return total, nil
		}
		avail := c.limit - c.sent
		if avail == 0 {
			c.mu.Unlock()
			select {
			case <-c.writable:
			case <-c.done:
			case <-c.wd.Done():
			}
			continue
		}
		n := int(min(avail, uint64(len(b)), streamChunk))
		c.sent += uint64(n)
		c.mu.Unlock()
		if err := c.m.sendData(c.ref, b[:n], c.wd.Done(), c.done); err == errNoRoom {
			// The deadline passed or the stream ended while the link
			// was backed up: not sent.
			c.mu.Lock()
			c.sent -= uint64(n)
			c.mu.Unlock()
			continue
		} else if err != nil {
			c.fail(err)
			return total, err
		}
		total += n
		b = b[n:]
	}
}

// Close implements net.Conn: the peer reads what was sent, then io.EOF;
// its writes fail with ErrStreamClosed.
func (c *streamConn) Close() error {
	c.end(closeFin)
	return nil
}

// abort resets the stream (a dial that gave up).
func (c *streamConn) abort() { c.end(closeReset) }

// end closes this end, telling the peer with a CLOSE of code unless the
// stream failed already.
func (c *streamConn) end(code byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	tell := c.err == nil
	c.rq.reset()
	c.mu.Unlock()
	c.finish()
	c.m.forget(c)
	if tell {
		// Not waiting while the link is backed up (Close returns at
		// once); what was queued before still goes first.
		frame := appendStreamFrame(nil, frameClose, c.ref, []byte{code})
		if !c.m.co.tryAppend(frame) {
			go c.m.send(frame)
		}
	}
}

// deliver takes stream bytes from the link (its read goroutine; p is only
// valid during the call); false if the peer went beyond its window.
func (c *streamConn) deliver(p []byte) bool {
	c.mu.Lock()
	defer signal(c.readable)
	defer c.mu.Unlock()
	if c.closed || c.err != nil {
		return true
	}
	if c.received+uint64(len(p)) > c.granted {
		return false
	}
	c.received += uint64(len(p))
	c.rq.write(p)
	return true
}

// grant takes a WINDOW from the peer.
func (c *streamConn) grant(body []byte) {
	limit := binary.BigEndian.Uint64(body)
	c.mu.Lock()
	if limit > c.limit {
		c.limit = limit
	}
	c.mu.Unlock()
	c.readyOnce.Do(func() { close(c.ready) })
	signal(c.writable)
}

// peerClosed takes the peer's CLOSE fin: what came is still read, then
// io.EOF; writes fail. It reports whether this end should close its side
// too (it had not).
func (c *streamConn) peerClosed() bool {
	c.mu.Lock()
	c.rfin = true
	answer := !c.closed && c.err == nil
	c.mu.Unlock()
	signal(c.readable)
	signal(c.writable)
	c.finish() // Read returns what is buffered before io.EOF
	return answer
}

// fail ends the stream with err (a reset, the link's end).
func (c *streamConn) fail(err error) {
	c.mu.Lock()
	if c.err == nil && !c.closed {
		c.err = err
	}
	c.mu.Unlock()
	c.finish()
	signal(c.readable)
	signal(c.writable)
}

// LocalAddr implements net.Conn: the node's relay address.
func (c *streamConn) LocalAddr() net.Addr { return Addr{c.m.local} }

// RemoteAddr implements net.Conn: the peer's relay address.
func (c *streamConn) RemoteAddr() net.Addr { return Addr{c.ref.peer} }

func (c *streamConn) SetDeadline(t time.Time) error {
	c.rd.Set(t)
	c.wd.Set(t)
	return nil
}

func (c *streamConn) SetReadDeadline(t time.Time) error  { c.rd.Set(t); return nil }
func (c *streamConn) SetWriteDeadline(t time.Time) error { c.wd.Set(t); return nil }
