package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// recordingConn records each Write; after failAfter writes (0: never) it
// fails with errBroken.
type recordingConn struct {
	net.Conn
	mu        sync.Mutex
	writes    [][]byte
	failAfter int
}

var errBroken = errors.New("broken pipe (test)")

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failAfter > 0 && len(c.writes) >= c.failAfter {
		return 0, errBroken
	}
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (c *recordingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.writes)
}

func yamuxHeader(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderLen)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:8], 1)
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

// TestFrameConn: a data frame's header and body leave in one write
// below; a window update and a data frame without a body (FIN) at once;
// each Write reports the bytes the caller gave it.
func TestFrameConn(t *testing.T) {
	rc := &recordingConn{}
	bc := &batchConn{Conn: rc}
	c := &frameConn{Conn: bc, batch: bc} // no TLS between: bytes as written
	body := bytes.Repeat([]byte("x"), 1000)
	steps := []struct {
		p      []byte
		writes int // below, after this step
	}{
		{yamuxHeader(0, 1000), 0},  // gathered
		{body, 1},                  // with the header
		{yamuxHeader(1, 65536), 2}, // window update: at once
		{yamuxHeader(0, 0), 3},     // data, FIN only: at once
	}
	for i, st := range steps {
		if n, err := c.Write(st.p); n != len(st.p) || err != nil {
			t.Fatalf("write %d: %d, %v; want %d", i, n, err, len(st.p))
		}
		if got := rc.count(); got != st.writes {
			t.Fatalf("after write %d: %d writes below, want %d", i, got, st.writes)
		}
	}
	want := [][]byte{append(yamuxHeader(0, 1000), body...), yamuxHeader(1, 65536), yamuxHeader(0, 0)}
	for i := range want {
		if !bytes.Equal(rc.writes[i], want[i]) {
			t.Errorf("write %d: %d bytes, want %d", i, len(rc.writes[i]), len(want[i]))
		}
	}
}

// recordSplitter writes as TLS does: in pieces of at most 16 KiB.
type recordSplitter struct{ net.Conn }

func (r recordSplitter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += 16 << 10 {
		if _, err := r.Conn.Write(p[off:min(off+16<<10, len(p))]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// TestBatchConnLargeFrame: a frame beyond maxBatch leaves in pieces of at
// most maxBatch, in order.
func TestBatchConnLargeFrame(t *testing.T) {
	rc := &recordingConn{}
	bc := &batchConn{Conn: rc}
	c := &frameConn{Conn: recordSplitter{bc}, batch: bc}
	body := make([]byte, 1<<20)
	for i := range body {
		body[i] = byte(i / 7)
	}
	c.Write(yamuxHeader(0, uint32(len(body))))
	if _, err := c.Write(body); err != nil {
		t.Fatal(err)
	}
	var all []byte
	for i, w := range rc.writes {
		if len(w) > maxBatch {
			t.Errorf("write %d: %d bytes, more than maxBatch", i, len(w))
		}
		all = append(all, w...)
	}
	if n := len(rc.writes); n < len(body)/maxBatch || n > len(body)/maxBatch+2 {
		t.Errorf("%d writes for a 1 MiB frame", n)
	}
	if !bytes.Equal(all, append(yamuxHeader(0, uint32(len(body))), body...)) {
		t.Error("the bytes below differ from the frame")
	}
}

// TestBatchConnError: a failed batch write is returned by the frame's
// write and by every write after it, so yamux ends the session instead of
// sending a TLS stream with a hole in it.
func TestBatchConnError(t *testing.T) {
	rc := &recordingConn{failAfter: 1}
	bc := &batchConn{Conn: rc}
	c := &frameConn{Conn: bc, batch: bc}
	for i := range 2 {
		c.Write(yamuxHeader(0, 3))
		_, err := c.Write([]byte("abc"))
		if i == 0 && err != nil {
			t.Fatalf("first frame: %v", err)
		}
		if i == 1 && !errors.Is(err, errBroken) {
			t.Fatalf("second frame: %v, want %v", err, errBroken)
		}
	}
	if _, err := c.Write(yamuxHeader(1, 65536)); !errors.Is(err, errBroken) {
		t.Fatalf("window update after the failure: %v, want %v", err, errBroken)
	}
}

// countingConn counts the writes that reach a TCP connection.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestOneSyscallPerFrame: over a real TLS+yamux session on loopback TCP,
// a stream writing 64 KiB at a time makes one write to the TCP
// connection per frame (plain TLS would make four), and the bytes arrive
// intact.
func TestOneSyscallPerFrame(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ck, sk := newKey(t), newKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type result struct {
		sum []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		s, err := Server(ctx, c, sk, Config{})
		if err != nil {
			got <- result{err: err}
			return
		}
		defer s.Close()
		st, err := s.AcceptStream(ctx)
		if err != nil {
			got <- result{err: err}
			return
		}
		b, err := io.ReadAll(st)
		got <- result{b, err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: raw}
	s, err := Client(ctx, cc, ck, sk.ID(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const frames = 64
	chunk := make([]byte, 64<<10)
	var sent []byte
	cc.mu.Lock()
	before := cc.writes
	cc.mu.Unlock()
	for i := range frames {
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		if _, err := st.Write(chunk); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, chunk...)
	}
	cc.mu.Lock()
	writes := cc.writes - before
	cc.mu.Unlock()
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil || !bytes.Equal(r.sum, sent) {
		t.Fatalf("received %d bytes (want %d), %v", len(r.sum), len(sent), r.err)
	}
	// One write per frame; a window update's wait may split a frame in
	// two, so allow a little beyond one per frame, far below four.
	if writes < frames || writes > frames*3/2 {
		t.Errorf("%d writes to TCP for %d frames of 64 KiB, want about one each", writes, frames)
	}
	t.Logf("%d writes to TCP for %d frames of 64 KiB", writes, frames)
}

// TestYamuxWindow: a TCP path's stream window follows the handshake's
// round trip between the floor and the configured most (never below
// yamux's least).
func TestYamuxWindow(t *testing.T) {
	for _, tc := range []struct {
		hs   time.Duration
		want uint64
	}{
		{0, floorYamuxWindow},
		{200 * time.Microsecond, floorYamuxWindow},
		{20 * time.Millisecond, 20 * yamuxWindowRate / 1000},
		{80 * time.Millisecond, 80 * yamuxWindowRate / 1000},
		{time.Second, DefaultStreamReceiveWindow},
	} {
		if got := yamuxWindow(DefaultStreamReceiveWindow, tc.hs); got != tc.want {
			t.Errorf("handshake %v: window %d, want %d", tc.hs, got, tc.want)
		}
	}
	// A configured window below the floor is kept, down to yamux's least.
	if got := yamuxWindow(512<<10, 0); got != 512<<10 {
		t.Errorf("StreamReceiveWindow 512 KiB: window %d", got)
	}
	if got := yamuxWindow(64<<10, 0); got != minYamuxWindow {
		t.Errorf("StreamReceiveWindow 64 KiB: window %d, want yamux's least %d", got, minYamuxWindow)
	}
}
