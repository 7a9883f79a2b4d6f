package rendezvous

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// wsMaxMessage is the most payload wsConn.Write puts in one WebSocket
// message: a whole TLS record of what is tunnelled (16 KB of plaintext
// and its overhead), so that each goes out as one outer record.
const wsMaxMessage = 16<<10 + 256

// wsBatch is how many messages wsConn.Write frames into one write of
// the outer connection (one syscall when the outer TLS is taken over).
const wsBatch = 4

// wsBufs recycles wsConn's write buffers (up to wsBatch messages and
// their headers): only a write in progress holds one.
var wsBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, wsBatch*(ws.MaxHeaderSize+wsMaxMessage))
	return &b
}}

// ErrWebSocket: a WebSocket's client broke RFC 6455 (an unmasked frame, a
// text message, a control frame too long, reserved bits or opcodes...);
// the server closes the connection with status 1002 or 1003.
var ErrWebSocket = errors.New("rendezvous: websocket protocol error")

// wsConn is the server's end of a WebSocket on a TCP port, a net.Conn
// whose bytes are the payloads of the client's binary messages, in order,
// and whose writes are sent as binary messages (what the client's
// websocket.NetConn reads and writes). It reads and writes the frames
// itself, with gobwas/ws's header parsing, checks and unmasking, so that
//
//   - a read that times out loses nothing: the next one goes on in the
//     frame it stopped in (a partial header or payload is kept), and the
//     timeout is the outer connection's, which crypto/tls reading through
//     it treats as temporary. A relay link's read loop relies on that to
//     wait for frames with short deadlines (coder/websocket closes the
//     WebSocket when a read deadline passes);
//   - an idle one holds no buffer (the header's 14 bytes aside) and a
//     read or write allocates nothing.
//
// Pings are answered with pongs, a close frame with a close frame (and
// io.EOF for reads).
type wsConn struct {
	// tc is the outer TLS connection: crypto/tls's, or the record layer
	// taken over from it (tlstake.Conn: what a WebSocket normally gets).
	tc  net.Conn
	pre []byte // bytes read with the upgrade request, the tunnel's first

	rmu   sync.Mutex
	state ws.State                            // server side; fragmented inside a message of several frames
	hdr   [ws.MaxHeaderSize]byte              // the next frame's header, hn bytes of it read
	hn    int                                 //
	h     ws.Header                           // the current frame's
	left  int64                               // its payload bytes not yet read
	moff  int                                 // the mask offset of the next payload byte
	ctl   [ws.MaxControlFramePayloadSize]byte // a control frame's payload, read so far
	rerr  error                               // the first error that ended reading (not a timeout)
	// What ws.ReadHeaderBuffer reads a complete header from, and its
	// scratch (fields, so that passing them allocates nothing).
	hsrc headerSource
	hbuf [ws.MaxHeaderSize - 2]byte

	wmu    sync.Mutex
	closed bool // a close frame was sent (under wmu)
	hsink  headerSink
	whb    [ws.MaxHeaderSize]byte
}

func newWSConn(tc net.Conn, pre []byte) *wsConn {
	return &wsConn{tc: tc, pre: pre, state: ws.StateServerSide}
}

// readRaw reads from what came with the request, then the connection.
func (c *wsConn) readRaw(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		if c.pre = c.pre[n:]; len(c.pre) == 0 {
			c.pre = nil
		}
		return n, nil
	}
	return c.tc.Read(p)
}

// failRead records err unless it is a timeout (which loses nothing).
func (c *wsConn) failRead(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	c.rerr = err
	return err
}

// wsHeaderLen is the length of a WebSocket frame header whose second byte is b1.
func wsHeaderLen(b1 byte) int {
	n := 2
	if b1&0x80 != 0 {
		n += 4
	}
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	return n
}

// Read implements net.Conn.
func (c *wsConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if c.left > 0 && !c.h.OpCode.IsControl() {
			if len(p) == 0 {
				return 0, nil
			}
			n, err := c.readRaw(p[:min(int64(len(p)), c.left)])
			ws.Cipher(p[:n], c.h.Mask, c.moff)
			c.moff += n
			c.left -= int64(n)
			if n > 0 {
				return n, nil
			}
			return 0, c.failRead(err)
		}
		if c.h.OpCode.IsControl() {
			if err := c.readControl(); err != nil {
				return 0, err
			}
			continue
		}
		if err := c.readHeader(); err != nil {
			return 0, err
		}
	}
}

// readHeader reads the next frame's header (resuming a partial one) and
// makes it the current frame.
func (c *wsConn) readHeader() error {
	// A resumed header whose first 2 bytes are in knows its length.
	need := 2
	if c.hn >= 2 {
		need = wsHeaderLen(c.hdr[1])
	}
	for c.hn < need {
		n, err := c.readRaw(c.hdr[c.hn:need])
		c.hn += n
		if c.hn >= 2 {
			need = wsHeaderLen(c.hdr[1])
		}
		if err != nil && c.hn < need {
			return c.failRead(err)
		}
	}
	c.hsrc.b = c.hdr[:c.hn]
	h, err := ws.ReadHeaderBuffer(&c.hsrc, c.hbuf[:])
	c.hn = 0
	if err == nil {
		err = ws.CheckHeader(h, c.state)
	}
	if err == nil && h.OpCode == ws.OpText {
		c.fail(ws.StatusUnsupportedData, "binary messages only")
		return c.failRead(errors.Join(ErrWebSocket, errors.New("text message")))
	}
	if err != nil {
		c.fail(ws.StatusProtocolError, err.Error())
		return c.failRead(errors.Join(ErrWebSocket, err))
	}
	c.h, c.left, c.moff = h, h.Length, 0
	if !h.OpCode.IsControl() {
		if h.Fin {
			c.state = c.state.Clear(ws.StateFragmented)
		} else {
			c.state = c.state.Set(ws.StateFragmented)
		}
	}
	return nil
}

// readControl reads the current control frame's payload (resuming) and
// acts on it.
func (c *wsConn) readControl() error {
	have := int(c.h.Length - c.left)
	for c.left > 0 {
		n, err := c.readRaw(c.ctl[have:c.h.Length])
		have += n
		c.left -= int64(n)
		if err != nil && c.left > 0 {
			return c.failRead(err)
		}
	}
	body := c.ctl[:c.h.Length]
	ws.Cipher(body, c.h.Mask, 0)
	op := c.h.OpCode
	c.h = ws.Header{} // back to data: the next read takes a header
	switch op {
	case ws.OpPing:
		if err := c.writeFrame(ws.OpPong, body); err != nil {
			return c.failRead(err)
		}
	case ws.OpClose:
		code, _ := ws.ParseCloseFrameDataUnsafe(body)
		c.fail(code, "")
		c.rerr = io.EOF
		return io.EOF
	}
	return nil // a pong
}

// fail sends a close frame with code (best effort: a write already in
// progress keeps the connection, and the caller's error ends it).
func (c *wsConn) fail(code ws.StatusCode, reason string) {
	if !c.wmu.TryLock() {
		return
	}
	defer c.wmu.Unlock()
	c.writeCloseLocked(code, reason)
}

func (c *wsConn) writeCloseLocked(code ws.StatusCode, reason string) {
	if c.closed {
		return
	}
	c.closed = true
	if code == 0 {
		code = ws.StatusNormalClosure
	}
	c.tc.SetWriteDeadline(time.Now().Add(time.Second))
	c.writeFrameLocked(ws.OpClose, ws.NewCloseFrameBody(code, reason))
}

// writeFrame sends one unmasked, final frame.
func (c *wsConn) writeFrame(op ws.OpCode, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	return c.writeFrameLocked(op, payload)
}

func (c *wsConn) writeFrameLocked(op ws.OpCode, payload []byte) error {
	bp := wsBufs.Get().(*[]byte)
	defer wsBufs.Put(bp)
	b, err := c.appendFrame((*bp)[:0], op, payload)
	if err == nil {
		_, err = c.tc.Write(b)
	}
	*bp = b[:0]
	return err
}

// appendFrame appends an unmasked, final frame to b.
func (c *wsConn) appendFrame(b []byte, op ws.OpCode, payload []byte) ([]byte, error) {
	c.hsink.b = b
	err := ws.WriteHeaderBuffer(&c.hsink, ws.Header{Fin: true, OpCode: op, Length: int64(len(payload))}, c.whb[:])
	b, c.hsink.b = c.hsink.b, nil
	return append(b, payload...), err
}

// Write implements net.Conn: p in binary messages of at most
// wsMaxMessage bytes, up to wsBatch of them a write of the outer
// connection.
func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	bp := wsBufs.Get().(*[]byte)
	defer wsBufs.Put(bp)
	done := 0
	for len(p) > 0 {
		b := (*bp)[:0]
		batch := 0
		for i := 0; i < wsBatch && len(p) > 0; i++ {
			m := p[:min(len(p), wsMaxMessage)]
			var err error
			if b, err = c.appendFrame(b, ws.OpBinary, m); err != nil {
				return done, err
			}
			batch += len(m)
			p = p[len(m):]
		}
		*bp = b[:0]
		if _, err := c.tc.Write(b); err != nil {
			return done, err
		}
		done += batch
	}
	return done, nil
}

// Close sends a close frame (unless a write is in progress) and closes
// the connection.
func (c *wsConn) Close() error {
	if c.wmu.TryLock() {
		c.writeCloseLocked(ws.StatusNormalClosure, "")
		c.wmu.Unlock()
	}
	return c.tc.Close()
}

func (c *wsConn) LocalAddr() net.Addr                { return c.tc.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.tc.RemoteAddr() }
func (c *wsConn) SetDeadline(t time.Time) error      { return c.tc.SetDeadline(t) }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.tc.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.tc.SetWriteDeadline(t) }

// ParkConn returns the TCP connection under the outer TLS: a read of c
// that timed out lost nothing (c keeps a partial frame, the outer TLS a
// partial record, and neither holds a whole one unread), so nothing is
// waiting for a reader that this connection does not show as readable,
// once the first bytes that came with the request were read. A relay
// link parks on it (relay's parkable).
func (c *wsConn) ParkConn() net.Conn {
	nc := c.tc
	for range 4 {
		switch t := nc.(type) {
		case *tls.Conn:
			nc = t.NetConn()
		case interface{ ParkConn() net.Conn }:
			nc = t.ParkConn()
		default:
			return nc
		}
	}
	return nc
}

// Idle lets the outer connection drop its keys and buffers while the
// link is parked (tlstake.Conn.Idle; crypto/tls's cannot).
func (c *wsConn) Idle() {
	if i, ok := c.tc.(interface{ Idle() }); ok {
		i.Idle()
	}
}

// headerSource hands a complete header to ws.ReadHeaderBuffer.
type headerSource struct{ b []byte }

func (s *headerSource) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

// headerSink takes the header ws.WriteHeaderBuffer writes.
type headerSink struct{ b []byte }

func (w *headerSink) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
