package stream

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// onBackends runs f on a QUIC and on a TLS+yamux session pair.
func onBackends(t *testing.T, f func(t *testing.T, p pair)) {
	for _, tc := range backends {
		t.Run(tc.name, func(t *testing.T) { f(t, tc.mk(t, testConfig(t))) })
	}
}

// TestRefusedStream: the acceptor refuses a stream the opener wrote to
// and half-closed (Node's full accept queue): the opener learns it, with
// ErrPeerRefused, instead of a clean EOF that hides the lost data.
func TestRefusedStream(t *testing.T) {
	onBackends(t, func(t *testing.T, p pair) {
		a, b, err := streams(t, p.client, p.server)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		_, werr := a.Write([]byte("data the peer will never read"))
		cwerr := a.CloseWrite()
		b.CloseWithError(CodeRefused)
		a.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, rerr := io.ReadAll(a)
		t.Logf("write: %v; close-write: %v; read: %v", werr, cwerr, rerr)
		if !errors.Is(rerr, ErrPeerRefused) {
			t.Fatalf("read after the peer's refusal: %v, want ErrPeerRefused", rerr)
		}
		var pe *PeerError
		if !errors.As(rerr, &pe) || pe.Code != CodeRefused || pe.Session {
			t.Fatalf("read after the peer's refusal: %#v, want a stream's PeerError with CodeRefused", rerr)
		}
	})
}

// TestRefusedStreamWriter: a stream refused while its opener is still
// writing: the opener's Write (or its CloseWrite) fails with
// ErrPeerRefused.
func TestRefusedStreamWriter(t *testing.T) {
	onBackends(t, func(t *testing.T, p pair) {
		a, b, err := streams(t, p.client, p.server)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b.CloseWithError(CodeRefused)
		a.SetWriteDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64<<10)
		for i := 0; err == nil && i < 1000; i++ {
			_, err = a.Write(buf)
		}
		if err == nil {
			err = a.CloseWrite()
		}
		if !errors.Is(err, ErrPeerRefused) {
			t.Fatalf("write after the peer's refusal: %v, want ErrPeerRefused", err)
		}
	})
}

// TestResetCodes: the code of CloseWithError reaches the peer as it is:
// reach's own, CodeNone (ErrPeerClosed) and an application's.
func TestResetCodes(t *testing.T) {
	onBackends(t, func(t *testing.T, p pair) {
		for _, code := range []ErrorCode{CodeNone, CodeAborted, CodeInterrupted, CodeApplication + 0x14, 1<<32 - 2} {
			a, b, err := streams(t, p.client, p.server)
			if err != nil {
				t.Fatal(err)
			}
			a.Write([]byte("x"))
			b.CloseWithError(code)
			a.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = io.ReadAll(a)
			var pe *PeerError
			if !errors.As(err, &pe) || pe.Code != code {
				t.Errorf("read after CloseWithError(%#x): %v, want a PeerError with that code", uint64(code), err)
			}
			a.Close()
		}
	})
}

// TestResetFreesStream: a stream this side reset is forgotten by its own
// yamux too (yamux's Close would keep it until the peer's FIN, which a
// reset peer never sends, or for 5 minutes).
func TestResetFreesStream(t *testing.T) {
	p := yamuxPair(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const n = 50
	for range n {
		a, b, err := streams(t, p.client, p.server)
		if err != nil {
			t.Fatal(err)
		}
		a.Write([]byte("x"))
		b.CloseWithError(CodeRefused)
		defer a.Close()
	}
	// A frame for the refusing side to read: its resets reach its yamux
	// at the next frame boundary.
	a, b, err := streams(t, p.client, p.server)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	ys := p.server.b.(*yamuxBackend).ys
	for ys.NumStreams() > 1 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if k := ys.NumStreams() - 1; k != 0 {
		t.Fatalf("the refusing side holds %d of %d reset streams", k, n)
	}
}

// TestResetNeverSplitsFrame: resets slipped in while other streams carry
// large data frames never land inside one: every other stream arrives
// intact. Resets come from aborted streams and, denser, for streams that
// do not exist, all the while the data flows.
func TestResetNeverSplitsFrame(t *testing.T) {
	p := yamuxPair(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const writers, size = 4, 16 << 20
	type got struct {
		sum   [32]byte
		reset bool
		err   error
	}
	results := make(chan got, 64)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		p.server.Abort() // ends the readers of streams still open
		wg.Wait()
	}()
	wg.Go(func() {
		for {
			st, err := p.server.AcceptStream(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				defer st.Close()
				h := sha256.New()
				_, err := io.Copy(h, st)
				var r got
				copy(r.sum[:], h.Sum(nil))
				if errors.Is(err, ErrPeerAborted) {
					r.reset = true
				} else {
					r.err = err
				}
				select {
				case results <- r:
				case <-ctx.Done():
				}
			})
		}
	})
	want := map[[32]byte]bool{}
	var senders, writing sync.WaitGroup
	for range writers {
		data := make([]byte, size)
		rand.Read(data)
		want[sha256.Sum256(data)] = true
		writing.Go(func() {
			st, err := p.client.OpenStream(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			defer st.Close()
			// Writes of odd sizes: frames of every length.
			for off := 0; off < len(data); {
				n := min(len(data)-off, 1+mrand.IntN(300<<10))
				if _, err := st.Write(data[off : off+n]); err != nil {
					t.Error(err)
					return
				}
				off += n
			}
			if err := st.CloseWrite(); err != nil {
				t.Error(err)
			}
		})
	}
	done := make(chan struct{})
	go func() { writing.Wait(); close(done) }()
	var aborted, bogus [2]int
	for g := range 2 {
		senders.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				st, err := p.client.OpenStream(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				st.Write([]byte("to be reset"))
				st.Abort()
				aborted[g]++
				time.Sleep(200 * time.Microsecond)
			}
		})
		senders.Go(func() {
			fc := p.client.b.(*yamuxBackend).fc
			for id := uint32(1 << 30); ; id += 2 {
				select {
				case <-done:
					return
				default:
				}
				fc.sendReset(id+uint32(g), uint64(id))
				bogus[g]++
				time.Sleep(20 * time.Microsecond)
			}
		})
	}
	senders.Wait()
	<-done
	resets := aborted[0] + aborted[1]
	var intact, reset int
	for intact < writers || reset < resets {
		var r got
		select {
		case r = <-results:
		case <-ctx.Done():
			t.Fatalf("%d of %d streams intact, %d of %d reset (%d resets for no stream): %v", intact, writers, reset, resets, bogus[0]+bogus[1], ctx.Err())
		}
		switch {
		case r.err != nil:
			t.Fatalf("a stream failed: %v", r.err)
		case r.reset:
			reset++
		case want[r.sum]:
			intact++
			delete(want, r.sum)
		default:
			t.Fatalf("a stream arrived neither whole nor reset")
		}
	}
	t.Logf("%d streams of %d MiB intact around %d streams reset and %d resets for no stream", intact, size>>20, reset, bogus[0]+bogus[1])
}

// TestResetCodeFlood: a peer sending resets without end (for streams that
// do not exist) makes the session keep at most maxResetCodes codes, and
// the session goes on working.
func TestResetCodeFlood(t *testing.T) {
	p := yamuxPair(t, testConfig(t))
	fc := p.client.b.(*yamuxBackend).fc
	in := p.server.b.(*yamuxBackend).fc.in
	const flood = 5 * maxResetCodes
	for id := range uint32(flood) {
		fc.sendReset(1_000_001+2*id, uint64(id))
		if id%512 == 0 {
			time.Sleep(time.Millisecond) // let the queue drain: its own bound is not under test
		}
	}
	a, b, err := streams(t, p.client, p.server)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	if _, err := a.Write([]byte("after the flood")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 15)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "after the flood" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if k := in.recorded(); k != maxResetCodes {
		t.Fatalf("%d reset codes kept after a flood of %d, want the bound %d", k, flood, maxResetCodes)
	}
	// The newest are the ones kept.
	if c, ok := in.code(1_000_001 + 2*(flood-1)); !ok || c != flood-1 {
		t.Fatalf("the last reset's code: %v %v", c, ok)
	}
}

// TestFrameReader: the reader finds an RST's code only in headers, never
// in a data frame's body that looks like one, and hands injected resets
// to yamux between frames.
func TestFrameReader(t *testing.T) {
	rst := resetHeader(7, uint64(CodeRefused))
	var wire bytes.Buffer
	body := bytes.Repeat(rst[:], 100) // a body of fake RSTs for stream 7
	data := yamuxHeader(0, uint32(len(body)))
	wire.Write(data)
	wire.Write(body)
	real := resetHeader(9, 0x42)
	wire.Write(real[:])
	f := &frameReader{}
	f.resetLocal(5) // at the start: a boundary
	var out bytes.Buffer
	p := make([]byte, 100)
	injected := false
	for i := 0; ; i++ {
		n, err := f.read(&wire, p[:1+i%100])
		out.Write(p[:n])
		if !injected && out.Len() > 2*yamuxHeaderLen+50 {
			f.resetLocal(11) // mid-frame: handed out after the frame
			injected = true
		}
		if err == io.EOF {
			break
		}
	}
	if _, ok := f.code(7); ok {
		t.Error("an RST inside a data frame's body was taken for one")
	}
	if c, ok := f.code(9); !ok || c != 0x42 {
		t.Errorf("stream 9's code: %v %v, want 0x42", c, ok)
	}
	// What yamux reads: the injected reset of 5, the data frame whole,
	// the injected reset of 11, the peer's reset of 9.
	var want bytes.Buffer
	local := func(id uint32) []byte {
		h := resetHeader(id, 0)
		binary.BigEndian.PutUint32(h[8:12], 0)
		return h[:]
	}
	want.Write(local(5))
	want.Write(data)
	want.Write(body)
	want.Write(local(11))
	want.Write(real[:])
	if !bytes.Equal(out.Bytes(), want.Bytes()) {
		t.Fatalf("yamux would read %d bytes, want %d: %s", out.Len(), want.Len(), fmt.Sprintf("%x", out.Bytes()[:min(out.Len(), 48)]))
	}
}

// TestResetQueueBound: resets for a peer that reads nothing wait in a
// queue of at most maxPendingResets (the stream is then closed as yamux
// does it), and so do the ones for this side's yamux; closing the
// connection ends the goroutine writing them.
func TestResetQueueBound(t *testing.T) {
	a, b := net.Pipe() // b never reads: the first write blocks
	defer b.Close()
	c := &frameConn{Conn: a, batch: &batchConn{Conn: a}, in: &frameReader{}}
	var queued int
	for id := range uint32(3 * maxPendingResets) {
		if c.sendReset(2*id+1, 0) {
			queued++
		}
		c.in.resetLocal(2*id + 1)
	}
	c.rmu.Lock()
	pending := len(c.resets) / yamuxHeaderLen
	c.rmu.Unlock()
	if pending > maxPendingResets || queued >= 3*maxPendingResets {
		t.Fatalf("%d resets queued of %d, %d pending: want at most %d", queued, 3*maxPendingResets, pending, maxPendingResets)
	}
	c.in.mu.Lock()
	injected := len(c.in.inject) / yamuxHeaderLen
	c.in.mu.Unlock()
	if injected != maxPendingResets {
		t.Fatalf("%d resets for this side's yamux pending, want the bound %d", injected, maxPendingResets)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.rmu.Lock()
		busy := c.flushing
		c.rmu.Unlock()
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reset writer goes on after Close")
		}
		time.Sleep(time.Millisecond)
	}
}
