package stream

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"sync"
	"testing"
	"time"
)

var backends = []struct {
	name string
	mk   func(testing.TB, Config) pair
}{{"QUIC", quicPair}, {"TLS+yamux", yamuxPair}}

// acceptLoop runs AcceptStream on s until the test ends, as a Node does,
// and hands the streams to got.
func acceptLoop(t *testing.T, s *Session) <-chan *Stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan *Stream, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			st, err := s.AcceptStream(ctx)
			if err != nil {
				return
			}
			got <- st
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return got
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestCloseDeliversEverything: the obvious code (write, close the stream,
// close the session at once) loses nothing, even with a slow reader: the
// bytes that arrive have the SHA-256 of those written.
func TestCloseDeliversEverything(t *testing.T) {
	for _, tc := range backends {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.mk(t, testConfig(t))
			incoming := acceptLoop(t, p.server)
			data := randomBytes(t, 8<<20)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := p.client.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			closed := make(chan error, 1)
			go func() {
				if _, err := c.Write(data); err != nil {
					closed <- err
					return
				}
				c.Close()
				closed <- p.client.Close()
			}()

			var st *Stream
			select {
			case st = <-incoming:
			case <-ctx.Done():
				t.Fatal("no stream")
			}
			time.Sleep(300 * time.Millisecond) // a slow reader
			h := sha256.New()
			n, err := io.Copy(h, st)
			if err != nil {
				t.Fatalf("read %d bytes: %v", n, err)
			}
			if n != int64(len(data)) || [32]byte(h.Sum(nil)) != sha256.Sum256(data) {
				t.Fatalf("read %d bytes, SHA-256 differs from the %d written", n, len(data))
			}
			st.Close()
			if err := <-closed; err != nil {
				t.Fatalf("Close: %v", err)
			}
			<-p.client.Done()
		})
	}
}

// TestCloseBothAtOnce: two sides that each wrote to the other and close at
// the same moment both read everything and both Close calls succeed.
func TestCloseBothAtOnce(t *testing.T) {
	for _, tc := range backends {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.mk(t, testConfig(t))
			acceptLoop(t, p.client)
			incoming := acceptLoop(t, p.server)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := p.client.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			data := randomBytes(t, 1<<20)
			// Written while the peer reads: 1 MiB may be more than the
			// stream's window (a TCP path's is sized to its round trip).
			var wg sync.WaitGroup
			var cgot, sgot []byte
			var cerr, serr, werr error
			wg.Go(func() {
				if _, werr = c.Write(data); werr == nil {
					werr = c.CloseWrite()
				}
			})
			s := <-incoming
			wg.Go(func() { cgot, cerr = io.ReadAll(c) })
			wg.Go(func() { sgot, serr = io.ReadAll(s) })
			if _, err := s.Write(data); err != nil {
				t.Fatal(err)
			}
			s.CloseWrite()
			wg.Wait()
			if werr != nil {
				t.Fatalf("client write: %v", werr)
			}
			if cerr != nil || serr != nil || string(cgot) != string(data) || string(sgot) != string(data) {
				t.Fatalf("client read %d bytes (%v), server %d (%v), want %d each", len(cgot), cerr, len(sgot), serr, len(data))
			}
			errs := make(chan error, 2)
			go func() { errs <- p.client.Close() }()
			go func() { errs <- p.server.Close() }()
			for range 2 {
				if err := <-errs; err != nil {
					t.Errorf("Close: %v", err)
				}
			}
		})
	}
}

// TestCloseTimeout: a peer that never reads holds Close for CloseTimeout
// only; Close says so, and the peer learns that the rest was dropped.
func TestCloseTimeout(t *testing.T) {
	cfg := testConfig(t)
	cfg.CloseTimeout = 300 * time.Millisecond
	p := quicPair(t, cfg)
	incoming := acceptLoop(t, p.server)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := p.client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("unread")); err != nil {
		t.Fatal(err)
	}
	s := <-incoming
	if err := p.client.Close(); !errors.Is(err, ErrCloseTimeout) {
		t.Fatalf("Close = %v, want ErrCloseTimeout", err)
	}
	<-p.server.Done()
	_, err = io.ReadAll(s)
	if !errors.Is(err, ErrPeerAborted) {
		t.Fatalf("peer read error %v, want ErrPeerAborted", err)
	}
	t.Log(err)
}

// TestCloseNothingWritten: a session that carried no data from this side
// closes without asking the peer, even one that never accepts, and a
// stream the peer opened and holds without reading does not hold Close.
func TestCloseNothingWritten(t *testing.T) {
	for _, tc := range backends {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.CloseTimeout = time.Hour
			p := tc.mk(t, cfg)
			if err := p.client.Close(); err != nil {
				t.Fatal(err)
			}
			<-p.server.Done()
		})
		t.Run(tc.name+"/idle", func(t *testing.T) {
			cfg := testConfig(t)
			cfg.CloseTimeout = time.Hour
			p := tc.mk(t, cfg)
			toServer := acceptLoop(t, p.server)
			toClient := acceptLoop(t, p.client)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// The client writes on one stream, which the server reads
			// only later ...
			a, err := p.client.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			a.Write([]byte("x"))
			a.Close()
			// ... and holds a stream of the server's without writing on
			// it; the server never reads that one.
			b, err := p.server.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			b.Write([]byte("y"))
			<-toClient
			closed := make(chan error, 1)
			go func() { closed <- p.client.Close() }()
			select {
			case err := <-closed:
				t.Fatalf("Close returned (%v) before the server read the client's data", err)
			case <-time.After(200 * time.Millisecond):
			}
			got, err := io.ReadAll(<-toServer)
			if string(got) != "x" || err != nil {
				t.Fatalf("server read %q, %v", got, err)
			}
			select {
			case err := <-closed:
				if err != nil {
					t.Fatal(err)
				}
			case <-ctx.Done():
				t.Fatal("Close waited for a stream the client never wrote on")
			}
		})
	}
}

// TestCloseReaderSkipsEOF: a peer that reads exactly what it expects,
// never the EOF, and keeps the stream open has read everything: Close does
// not wait for it (QUIC knows the stream's final size; yamux does not),
// and the peer's late Read still returns io.EOF.
func TestCloseReaderSkipsEOF(t *testing.T) {
	cfg := testConfig(t)
	cfg.CloseTimeout = time.Hour
	p := quicPair(t, cfg)
	incoming := acceptLoop(t, p.server)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := p.client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	got := make([]byte, 5)
	s := <-incoming
	if _, err := io.ReadFull(s, got); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	// The EOF comes after the data was read, on its own.
	c.Close()
	closed := make(chan error, 1)
	go func() { closed <- p.client.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Close waited for the peer to read an EOF")
	}
	// The session is gone, but the stream had ended cleanly: EOF, not an
	// error, for the read that comes late.
	<-p.server.Done()
	if n, err := s.Read(got); n != 0 || err != io.EOF {
		t.Fatalf("late read: %d, %v; want io.EOF", n, err)
	}
}

// TestAbort: an aborted stream or session fails the peer's Read and Write
// with the named error of its code.
func TestAbort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	t.Run("stream", func(t *testing.T) {
		p := quicPair(t, testConfig(t))
		a, b, err := streams(t, p.client, p.server)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		a.Write([]byte("x"))
		a.Abort()
		if _, err := io.ReadAll(b); !errors.Is(err, ErrPeerAborted) {
			t.Fatalf("read after the peer's Abort: %v, want ErrPeerAborted", err)
		}
	})
	t.Run("session", func(t *testing.T) {
		p := quicPair(t, testConfig(t))
		a, b, err := streams(t, p.client, p.server)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		a.Write([]byte("x"))
		p.client.CloseWithError(uint64(CodeInterrupted), "interrupted")
		_, err = io.ReadAll(b)
		var pe *PeerError
		if !errors.Is(err, ErrPeerInterrupted) || !errors.As(err, &pe) || !pe.Session {
			t.Fatalf("read after the peer's interrupt: %v, want ErrPeerInterrupted", err)
		}
		t.Log(err)
		if _, err := p.server.OpenStream(ctx); err == nil {
			t.Fatal("OpenStream on a closed session")
		}
	})
	t.Run("close", func(t *testing.T) {
		// The peer's Close while this side still writes: ErrPeerClosed.
		p := quicPair(t, testConfig(t))
		a, b, err := streams(t, p.client, p.server)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b.Close()
		buf := make([]byte, 64<<10)
		for i := 0; ; i++ {
			if _, err = a.Write(buf); err != nil || i > 1000 {
				break
			}
		}
		if !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("write after the peer's Close: %v, want ErrPeerClosed", err)
		}
	})
}

// TestCloseAfterFINOnly: a side that wrote nothing but half-closed (a
// netcat listener with empty input) and then closes the session: the peer
// still reads io.EOF, not the session's end (`reach listen </dev/null`
// made `reach dial` exit 3 in 6 runs of 10).
func TestCloseAfterFINOnly(t *testing.T) {
	for _, tc := range backends {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 10 {
				p := tc.mk(t, testConfig(t))
				toServer := acceptLoop(t, p.server)
				acceptLoop(t, p.client) // a node always accepts (the drain request)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				c, err := p.client.OpenStream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				c.Write([]byte("hello"))
				c.CloseWrite()
				s := <-toServer
				s.CloseWrite() // nothing to say
				if got, err := io.ReadAll(s); string(got) != "hello" || err != nil {
					t.Fatalf("server read %q, %v", got, err)
				}
				closed := make(chan error, 1)
				go func() { closed <- p.server.Close() }()
				got, err := io.ReadAll(c)
				if len(got) != 0 || err != nil {
					t.Fatalf("run %d: client read %q, %v; want io.EOF", i, got, err)
				}
				if err := <-closed; err != nil {
					t.Fatal(err)
				}
				cancel()
			}
		})
	}
}
