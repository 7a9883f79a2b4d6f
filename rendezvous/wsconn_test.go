package rendezvous

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/reachp2p/reach/identity"
)

// wsPair is a server-side wsConn and the raw client end of its outer TLS
// connection, over loopback TCP.
func wsPair(t *testing.T) (*wsConn, *tls.Conn) {
	t.Helper()
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := k.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		tc := c.(*tls.Conn)
		tc.Handshake()
		got <- tc
	}()
	cc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	sc := <-got
	if sc == nil {
		t.Fatal("no connection")
	}
	t.Cleanup(func() { cc.Close(); sc.Close() })
	return newWSConn(sc, nil), cc
}

// clientFrame is a masked frame as a client sends it.
func clientFrame(op ws.OpCode, fin bool, payload []byte) []byte {
	f := ws.MaskFrameWith(ws.NewFrame(op, fin, bytes.Clone(payload)), [4]byte{9, 8, 7, 6})
	b, err := ws.CompileFrame(f)
	if err != nil {
		panic(err)
	}
	return b
}

// TestWSConnResumes: bytes that arrive a few at a time, with read
// deadlines passing in the middle of frame headers and payloads, come out
// intact and in order: a timeout loses nothing and is reported as one
// (os.ErrDeadlineExceeded), so crypto/tls reading through the WebSocket
// may treat it as temporary. Fragmented messages and a ping between
// fragments are handled (the pong comes back).
func TestWSConnResumes(t *testing.T) {
	sc, cc := wsPair(t)
	want := make([]byte, 70000) // one message with a 64-bit length
	for i := range want {
		want[i] = byte(i * 7)
	}
	var wire []byte
	wire = append(wire, clientFrame(ws.OpBinary, false, []byte("abc"))...)
	wire = append(wire, clientFrame(ws.OpPing, true, []byte("hi"))...)
	wire = append(wire, clientFrame(ws.OpContinuation, true, []byte("defgh"))...)
	wire = append(wire, clientFrame(ws.OpBinary, true, want[:300])...)
	wire = append(wire, clientFrame(ws.OpBinary, true, want)...)
	go func() {
		// Dribble: a byte at a time for the first 400 bytes (through headers
		// and the ping), then bigger pieces, with pauses longer than the
		// reader's deadline.
		for i := 0; i < len(wire); {
			n := 1
			if i >= 400 {
				n = min(len(wire)-i, 9000)
			}
			if _, err := cc.Write(wire[i : i+n]); err != nil {
				return
			}
			i += n
			if i%97 == 0 || n > 1 {
				time.Sleep(15 * time.Millisecond)
			}
		}
	}()
	var out []byte
	buf := make([]byte, 1000)
	timeouts := 0
	deadline := time.Now().Add(20 * time.Second)
	for len(out) < 8+300+len(want) && time.Now().Before(deadline) {
		sc.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
		n, err := sc.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("after %d bytes: %v", len(out), err)
			}
			timeouts++
		}
	}
	if !bytes.Equal(out, append(append([]byte("abcdefgh"), want[:300]...), want...)) {
		t.Fatalf("read %d bytes, not what was sent", len(out))
	}
	if timeouts == 0 {
		t.Error("no read timed out: the test did not test resuming")
	}
	t.Logf("%d timeouts on the way", timeouts)
	// The pong.
	cc.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := ws.ReadFrame(cc)
	if err != nil || f.Header.OpCode != ws.OpPong || string(f.Payload) != "hi" {
		t.Fatalf("pong: %+v %q %v", f.Header, f.Payload, err)
	}
}

// TestWSConnRefuses: frames RFC 6455 forbids from a client end reading
// with ErrWebSocket and a close frame (unmasked, text, reserved bits, a
// long control frame, a continuation without a start); a close frame ends
// reading with io.EOF after the close is answered.
func TestWSConnRefuses(t *testing.T) {
	unmasked, _ := ws.CompileFrame(ws.NewBinaryFrame([]byte("x")))
	rsv := clientFrame(ws.OpBinary, true, []byte("x"))
	rsv[0] |= 0x40
	for _, c := range []struct {
		name string
		wire []byte
		want error
		code ws.StatusCode
	}{
		{"unmasked", unmasked, ErrWebSocket, ws.StatusProtocolError},
		{"text", clientFrame(ws.OpText, true, []byte("x")), ErrWebSocket, ws.StatusUnsupportedData},
		{"reserved bits", rsv, ErrWebSocket, ws.StatusProtocolError},
		{"long ping", clientFrame(ws.OpPing, true, make([]byte, 126)), ErrWebSocket, ws.StatusProtocolError},
		{"lone continuation", clientFrame(ws.OpContinuation, true, []byte("x")), ErrWebSocket, ws.StatusProtocolError},
		{"close", clientFrame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")), io.EOF, ws.StatusNormalClosure},
	} {
		t.Run(c.name, func(t *testing.T) {
			sc, cc := wsPair(t)
			go cc.Write(c.wire)
			sc.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := sc.Read(make([]byte, 10))
			if !errors.Is(err, c.want) {
				t.Fatalf("read: %v, want %v", err, c.want)
			}
			if _, err2 := sc.Read(make([]byte, 10)); !errors.Is(err2, c.want) {
				t.Errorf("a second read: %v (the first error must stick)", err2)
			}
			cc.SetReadDeadline(time.Now().Add(5 * time.Second))
			f, err := ws.ReadFrame(cc)
			if err != nil || f.Header.OpCode != ws.OpClose {
				t.Fatalf("no close frame: %+v %v", f.Header, err)
			}
			if code, _ := ws.ParseCloseFrameData(f.Payload); code != c.code {
				t.Errorf("close code %d, want %d", code, c.code)
			}
		})
	}
}

// TestWSConnWrites: a write larger than a message goes out as unmasked
// binary messages of at most wsMaxMessage bytes, intact; reads and writes
// allocate nothing. (coder/websocket's client against wsConn, through a
// server's upgrade: TestWebSocketPipelined, the lab's WebSocket tests.)
func TestWSConnWrites(t *testing.T) {
	sc, cc := wsPair(t)
	msg := make([]byte, 3*wsMaxMessage+5)
	for i := range msg {
		msg[i] = byte(i)
	}
	go func() { sc.Write(msg) }()
	var got []byte
	cc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < len(msg) {
		f, err := ws.ReadFrame(cc)
		if err != nil {
			t.Fatal(err)
		}
		if f.Header.OpCode != ws.OpBinary || !f.Header.Fin || f.Header.Masked || f.Header.Length > wsMaxMessage {
			t.Fatalf("frame %+v", f.Header)
		}
		got = append(got, f.Payload...)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("payload differs")
	}
	// Allocations per read and per write, steady state.
	if raceEnabled {
		return // allocation counts under -race are not the program's
	}
	frame := clientFrame(ws.OpBinary, true, make([]byte, 1200))
	go func() {
		for range 200 {
			if _, err := cc.Write(frame); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 1200)
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadFull(sc, buf) // warm up
	if a := testing.AllocsPerRun(100, func() { io.ReadFull(sc, buf) }); a > 0 {
		t.Errorf("%.1f allocations per read", a)
	}
	go io.Copy(io.Discard, cc)
	sc.Write(buf)
	if a := testing.AllocsPerRun(100, func() { sc.Write(buf) }); a > 0 {
		t.Errorf("%.1f allocations per write", a)
	}
}

// TestWSConnResumesInHeader (review of issue 14): a read deadline that
// passes after any number of a frame header's bytes (2-, 4- and 10-byte
// lengths, all masked: 6, 8 and 14 bytes) loses nothing: the next read
// finishes the header and returns the payload (it once parsed the partial
// header as a whole one once 2 bytes were in, and refused it).
func TestWSConnResumesInHeader(t *testing.T) {
	for _, size := range []int{5, 300, 70000} {
		payload := make([]byte, size)
		for i := range payload {
			payload[i] = byte(i * 13)
		}
		frame := clientFrame(ws.OpBinary, true, payload)
		hl := wsHeaderLen(frame[1])
		for cut := 1; cut < hl; cut++ {
			sc, cc := wsPair(t)
			if _, err := cc.Write(frame[:cut]); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, size)
			sc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if n, err := sc.Read(buf); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("%d-byte payload, %d of %d header bytes: read %d, %v; want a timeout", size, cut, hl, n, err)
			}
			go cc.Write(frame[cut:])
			sc.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAtLeast(sc, buf, size)
			if err != nil || !bytes.Equal(buf[:got], payload) {
				t.Fatalf("%d-byte payload, %d of %d header bytes before a timeout: read %d bytes, %v", size, cut, hl, got, err)
			}
		}
	}
}
