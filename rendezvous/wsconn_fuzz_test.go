package rendezvous

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// fuzzWire is the client end of a wsConn in memory: reads come from wire
// in chunks of at most chunk bytes (a deadline passing between every two,
// as a relay link's short deadlines do), then io.EOF; writes (pongs,
// close frames) are counted and dropped.
type fuzzWire struct {
	wire    []byte
	chunk   int
	timeout bool // the next read times out first
	written int
}

type fuzzTimeout struct{}

func (fuzzTimeout) Error() string   { return "i/o timeout" }
func (fuzzTimeout) Timeout() bool   { return true }
func (fuzzTimeout) Temporary() bool { return true }

func (w *fuzzWire) Read(p []byte) (int, error) {
	if w.timeout {
		w.timeout = false
		return 0, fuzzTimeout{}
	}
	if len(w.wire) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), w.chunk)], w.wire)
	w.wire = w.wire[n:]
	w.timeout = true
	return n, nil
}
func (w *fuzzWire) Write(p []byte) (int, error)      { w.written += len(p); return len(p), nil }
func (w *fuzzWire) Close() error                     { return nil }
func (w *fuzzWire) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (w *fuzzWire) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (w *fuzzWire) SetDeadline(time.Time) error      { return nil }
func (w *fuzzWire) SetReadDeadline(time.Time) error  { return nil }
func (w *fuzzWire) SetWriteDeadline(time.Time) error { return nil }

// FuzzWSConnRead: whatever a WebSocket's client sends, in any chunking
// with timeouts between the chunks, the server's end never panics, never
// returns more bytes than came, turns a timeout into a timeout (nothing
// lost: the valid seeds come out whole), and ends with io.EOF (the wire
// or a close frame ended), io.ErrUnexpectedEOF (inside a frame) or
// ErrWebSocket.
func FuzzWSConnRead(f *testing.F) {
	msg := bytes.Repeat([]byte("reach"), 100)
	var valid []byte
	valid = append(valid, clientFrame(ws.OpBinary, false, msg[:7])...)
	valid = append(valid, clientFrame(ws.OpPing, true, []byte("p"))...)
	valid = append(valid, clientFrame(ws.OpContinuation, true, msg[7:])...)
	valid = append(valid, clientFrame(ws.OpBinary, true, make([]byte, 1500))...)
	f.Add(valid, uint8(1))
	f.Add(valid, uint8(200))
	f.Add(clientFrame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")), uint8(3))
	f.Add(clientFrame(ws.OpText, true, []byte("x")), uint8(2))
	f.Add([]byte{0x82, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}, uint8(5))
	// A 64-bit length (70,000) and the payload cut short.
	f.Add(append([]byte{0x82, 0xff, 0, 0, 0, 0, 0, 1, 0x11, 0x70, 9, 8, 7, 6}, make([]byte, 100)...), uint8(7))
	f.Fuzz(func(t *testing.T, wire []byte, chunk uint8) {
		if len(wire) > 8<<10 {
			return // large inputs make the engine crawl; 8 KB spans every header form
		}
		w := &fuzzWire{wire: bytes.Clone(wire), chunk: int(chunk)%64 + 1}
		c := newWSConn(w, nil)
		var out []byte
		buf := make([]byte, 1000)
		for range 10 * (len(wire) + 2) {
			n, err := c.Read(buf)
			out = append(out, buf[:n]...)
			if err == nil {
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrWebSocket) {
				t.Fatalf("read ended with %v", err)
			}
			break
		}
		if len(out) > len(wire) {
			t.Fatalf("%d bytes out of %d in", len(out), len(wire))
		}
		if bytes.Equal(wire, valid) && len(out) != len(msg)+1500 {
			t.Fatalf("the valid messages came out as %d bytes, want %d", len(out), len(msg)+1500)
		}
	})
}
