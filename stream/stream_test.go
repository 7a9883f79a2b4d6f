package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"
	"golang.org/x/net/nettest"

	"github.com/reachp2p/reach/identity"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testConfig(t testing.TB) Config {
	return Config{Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

func newKey(t testing.TB) *identity.Key {
	t.Helper()
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newTransport(t testing.TB) (*quic.Transport, netip.AddrPort) {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: conn}
	t.Cleanup(func() { tr.Close(); conn.Close() })
	return tr, conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

type pair struct {
	client, server       *Session
	clientKey, serverKey *identity.Key
}

// quicPair makes a QUIC session pair on loopback; both are aborted by
// t.Cleanup.
func quicPair(t testing.TB, cfg Config) pair {
	t.Helper()
	ctr, _ := newTransport(t)
	str, saddr := newTransport(t)
	ck, sk := newKey(t), newKey(t)
	ln, err := Listen(str, sk, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		s   *Session
		err error
	}
	acc := make(chan res, 1)
	go func() {
		s, err := ln.Accept(ctx)
		acc <- res{s, err}
	}()
	c, err := Dial(ctx, ctr, saddr, ck, sk.ID(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Abort() })
	r := <-acc
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.s.Abort() })
	return pair{c, r.s, ck, sk}
}

// yamuxPair makes a TLS+yamux session pair over TCP on loopback.
func yamuxPair(t testing.TB, cfg Config) pair {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ck, sk := newKey(t), newKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		s   *Session
		err error
	}
	acc := make(chan res, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			acc <- res{nil, err}
			return
		}
		s, err := Server(ctx, conn, sk, cfg)
		acc <- res{s, err}
	}()
	conn, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := Client(ctx, conn, ck, sk.ID(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Abort() })
	r := <-acc
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.s.Abort() })
	return pair{c, r.s, ck, sk}
}

// streams opens a stream from a and accepts it on b.
func streams(t testing.TB, a, b *Session) (*Stream, *Stream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := a.OpenStream(ctx)
	if err != nil {
		return nil, nil, err
	}
	sb, err := b.AcceptStream(ctx)
	if err != nil {
		sa.Close()
		return nil, nil, err
	}
	return sa, sb, nil
}

func TestConn(t *testing.T) {
	for _, tc := range []struct {
		name string
		mk   func(testing.TB, Config) pair
	}{{"QUIC", quicPair}, {"TLS+yamux", yamuxPair}} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.mk(t, testConfig(t))
			mp := func(opener bool) nettest.MakePipe {
				return func() (c1, c2 net.Conn, stop func(), err error) {
					so, sa, err := streams(t, p.client, p.server)
					if err != nil {
						return nil, nil, nil, err
					}
					stop = func() { so.Close(); sa.Close() }
					if opener {
						return so, sa, stop, nil
					}
					return sa, so, stop, nil
				}
			}
			t.Run("opener", func(t *testing.T) { nettest.TestConn(t, mp(true)) })
			t.Run("acceptor", func(t *testing.T) { nettest.TestConn(t, mp(false)) })
		})
	}
}

// TestAcceptorSpeaksFirst: AcceptStream returns before the opener writes.
func TestAcceptorSpeaksFirst(t *testing.T) {
	p := quicPair(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	so, err := p.client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer so.Close()
	sa, err := p.server.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	if _, err := sa.Write([]byte("banner")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(so, buf); err != nil || string(buf) != "banner" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

func TestWrongPeer(t *testing.T) {
	t.Run("QUIC", func(t *testing.T) {
		ctr, _ := newTransport(t)
		str, saddr := newTransport(t)
		sk, other := newKey(t), newKey(t)
		ln, err := Listen(str, sk, testConfig(t))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = Dial(ctx, ctr, saddr, newKey(t), other.ID(), testConfig(t))
		checkWrongPeer(t, err, other.ID(), sk.ID())

		actx, acancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer acancel()
		if s, err := ln.Accept(actx); err == nil {
			s.Close()
			t.Fatal("server accepted a session the client rejected")
		}
	})
	t.Run("TLS+yamux", func(t *testing.T) {
		c1, c2 := net.Pipe()
		sk, other := newKey(t), newKey(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv := make(chan error, 1)
		go func() {
			s, err := Server(ctx, c2, sk, testConfig(t))
			if err == nil {
				s.Close()
			}
			srv <- err
		}()
		_, err := Client(ctx, c1, newKey(t), other.ID(), testConfig(t))
		checkWrongPeer(t, err, other.ID(), sk.ID())
		if err := <-srv; err == nil {
			t.Fatal("server side succeeded")
		}
	})
}

func checkWrongPeer(t *testing.T, err error, want, got identity.PeerID) {
	t.Helper()
	if !errors.Is(err, identity.ErrWrongPeer) {
		t.Fatalf("err = %v, want ErrWrongPeer", err)
	}
	var wp *identity.WrongPeerError
	if !errors.As(err, &wp) || wp.Want != want || wp.Got != got {
		t.Fatalf("err = %#v, want WrongPeerError{%v, %v}", wp, want, got)
	}
}

func TestDialCancel(t *testing.T) {
	ctr, _ := newTransport(t)
	// A UDP socket that never answers.
	black, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer black.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err = Dial(ctx, ctr, black.LocalAddr().(*net.UDPAddr).AddrPort(), newKey(t), newKey(t).ID(), testConfig(t))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Dial returned %v after the cancel", d)
	}

	// HandshakeTimeout bounds a dial with no deadline of its own.
	cfg := testConfig(t)
	cfg.HandshakeTimeout = 300 * time.Millisecond
	start = time.Now()
	_, err = Dial(context.Background(), ctr, black.LocalAddr().(*net.UDPAddr).AddrPort(), newKey(t), newKey(t).ID(), cfg)
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("Dial with HandshakeTimeout: %v after %v", err, time.Since(start))
	}
}

// TestDialContextOnlyBoundsHandshake: cancelling Dial's ctx afterwards
// leaves the session up (the net.Dialer contract).
func TestDialContextOnlyBoundsHandshake(t *testing.T) {
	ctr, _ := newTransport(t)
	str, saddr := newTransport(t)
	sk := newKey(t)
	ln, err := Listen(str, sk, testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		defer s.Close()
		st, err := s.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(st, st)
		st.Close()
		select { // closing now could drop the echo still in flight
		case <-s.Done():
		case <-ctx.Done():
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := Dial(ctx, ctr, saddr, newKey(t), sk.ID(), testConfig(t))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-c.Done():
		t.Fatal("session closed with the dial context")
	default:
	}
	octx, ocancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ocancel()
	st, err := c.OpenStream(octx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write([]byte("ping"))
	st.CloseWrite()
	got, err := io.ReadAll(st)
	if err != nil || string(got) != "ping" {
		t.Fatalf("echo = %q, %v", got, err)
	}
}

func TestHalfClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		mk   func(testing.TB, Config) pair
	}{{"QUIC", quicPair}, {"TLS+yamux", yamuxPair}} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.mk(t, testConfig(t))
			a, b, err := streams(t, p.client, p.server)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			defer b.Close()
			a.SetDeadline(time.Now().Add(5 * time.Second))
			b.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := a.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			if err := a.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Write([]byte("x")); !errors.Is(err, ErrWriteClosed) {
				t.Fatalf("Write after CloseWrite: %v", err)
			}
			got, err := io.ReadAll(b)
			if err != nil || string(got) != "hello" {
				t.Fatalf("b read %q, %v", got, err)
			}
			// b can still write after a's half-close, and a still reads.
			if _, err := b.Write([]byte("world")); err != nil {
				t.Fatal(err)
			}
			b.Close()
			got, err = io.ReadAll(a)
			if err != nil || string(got) != "world" {
				t.Fatalf("a read %q, %v", got, err)
			}
			if _, err := b.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read after Close: %v", err)
			}
		})
	}
}

func TestSessionInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		mk   func(testing.TB, Config) pair
	}{{"QUIC", quicPair}, {"TLS+yamux", yamuxPair}} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.mk(t, testConfig(t))
			if p.client.RemotePeer() != p.serverKey.ID() || p.server.RemotePeer() != p.clientKey.ID() {
				t.Fatal("wrong RemotePeer")
			}
			if p.client.LocalPeer() != p.clientKey.ID() {
				t.Fatal("wrong LocalPeer")
			}
			if p.client.RemoteAddr() != p.server.LocalAddr() || p.server.RemoteAddr() != p.client.LocalAddr() {
				t.Fatalf("addrs: client %v->%v server %v->%v", p.client.LocalAddr(), p.client.RemoteAddr(), p.server.LocalAddr(), p.server.RemoteAddr())
			}
			if !p.client.RemoteAddr().Addr().Is4() {
				t.Fatalf("address not unmapped: %v", p.client.RemoteAddr())
			}
			a, b, err := streams(t, p.client, p.server)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			defer b.Close()
			ra := a.RemoteAddr()
			if ra.Network() != "reach" || ra.String() != p.serverKey.ID().String() {
				t.Fatalf("RemoteAddr = %s/%s", ra.Network(), ra)
			}
			if ra.(Addr).Path != p.client.RemoteAddr() || b.LocalAddr().String() != p.serverKey.ID().String() {
				t.Fatalf("addr paths: %+v", ra)
			}
			if a.Session() != p.client {
				t.Fatal("Session()")
			}
			p.client.SetStrategy("direct")
			if p.client.Strategy() != "direct" {
				t.Fatal("Strategy")
			}
			// One round trip gives an RTT sample.
			a.Write([]byte{1})
			b.Read(make([]byte, 1))
			deadline := time.Now().Add(2 * time.Second)
			for p.client.RTT() == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if p.client.RTT() <= 0 {
				t.Fatal("no RTT sample")
			}
			if (p.client.QUIC() != nil) != (tc.name == "QUIC") {
				t.Fatal("QUIC()")
			}

			// Closing one side ends the other.
			p.client.CloseWithError(7, "bye")
			select {
			case <-p.server.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("server session not done after client close")
			}
			if p.client.Context().Err() == nil {
				t.Fatal("client context alive after close")
			}
			if _, err := p.client.OpenStream(context.Background()); err == nil {
				t.Fatal("OpenStream on closed session")
			}
		})
	}
}

// TestCloseResetsPeerWrites: after Close the peer's writes fail (QUIC can
// tell the peer to stop sending).
func TestCloseResetsPeerWrites(t *testing.T) {
	p := quicPair(t, testConfig(t))
	a, b, err := streams(t, p.client, p.server)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.Close()
	b.SetWriteDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64<<10)
	for i := 0; ; i++ {
		if _, err := b.Write(buf); err != nil {
			var se *quic.StreamError
			if !errors.As(err, &se) {
				t.Fatalf("peer write error %v, want a stream reset", err)
			}
			break
		}
		if i > 1000 {
			t.Fatal("peer writes never failed")
		}
	}
}

func TestBadStreamHeader(t *testing.T) {
	p := quicPair(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := p.client.QUIC().OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte{0x7f, 'x'})
	st, err := p.server.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Read(make([]byte, 4)); !errors.Is(err, ErrBadStreamHeader) {
		t.Fatalf("err = %v, want ErrBadStreamHeader", err)
	}
}

func TestConfigDefaults(t *testing.T) {
	q := QUICConfig(Config{})
	if q.KeepAlivePeriod != 10*time.Second || q.MaxIdleTimeout != 30*time.Second {
		t.Errorf("timeouts %v %v", q.KeepAlivePeriod, q.MaxIdleTimeout)
	}
	if q.MaxStreamReceiveWindow != 16<<20 || q.MaxConnectionReceiveWindow != 32<<20 {
		t.Errorf("windows %d %d", q.MaxStreamReceiveWindow, q.MaxConnectionReceiveWindow)
	}
	if q := QUICConfig(Config{KeepAlivePeriod: -1}); q.KeepAlivePeriod != 0 {
		t.Errorf("negative keep-alive: %v", q.KeepAlivePeriod)
	}
}

// TestPing: every session answers pings on both backends, and ping
// streams never reach the application's AcceptStream.
func TestPing(t *testing.T) {
	for name, mk := range map[string]func(testing.TB, Config) pair{"quic": quicPair, "yamux": yamuxPair} {
		t.Run(name, func(t *testing.T) {
			p := mk(t, testConfig(t))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			// the server side must be accepting for pings to be answered
			accepted := make(chan *Stream, 1)
			go func() {
				st, err := p.server.AcceptStream(ctx)
				if err == nil {
					accepted <- st
				}
			}()
			for i := 0; i < 3; i++ {
				rtt, err := p.client.Ping(ctx)
				if err != nil || rtt <= 0 {
					t.Fatalf("ping %d: rtt %v err %v", i, rtt, err)
				}
			}
			select {
			case st := <-accepted:
				t.Fatalf("a ping stream reached AcceptStream: %v", st)
			case <-time.After(200 * time.Millisecond):
			}
			// an application stream still arrives
			c, err := p.client.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case st := <-accepted:
				st.Close()
			case <-ctx.Done():
				t.Fatal("application stream not accepted after pings")
			}
		})
	}
}

// TestShutdownDeliversEverything: a side that writes a lot, half-closes and
// calls Shutdown at once does not lose the tail of its data (a plain Close
// would discard what the peer has not acknowledged), and Shutdown returns
// once the peer, having read everything, shuts down too.
func TestShutdownDeliversEverything(t *testing.T) {
	p := quicPair(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const size = 8 << 20
	got := make(chan int64, 1)
	go func() {
		st, err := p.server.AcceptStream(ctx)
		if err != nil {
			got <- -1
			return
		}
		time.Sleep(200 * time.Millisecond) // a slow reader
		n, _ := io.Copy(io.Discard, st)
		st.Close()
		got <- n
		// keep accepting so the bye arrives, then say bye ourselves
		go p.server.AcceptStream(ctx)
		p.server.Shutdown(ctx)
	}()
	c, err := p.client.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	done := make(chan error, 1)
	go func() {
		go p.client.AcceptStream(ctx) // serves the peer's bye
		done <- p.client.Shutdown(ctx)
	}()
	if n := <-got; n != size {
		t.Fatalf("peer read %d bytes, want %d", n, size)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case <-p.client.Done():
	default:
		t.Fatal("session still open after Shutdown")
	}
}
