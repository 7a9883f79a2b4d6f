package stream

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/sock"
)

// The throughput benchmarks send one stream's worth of data over loopback,
// in benchChunk writes, and report MB/s. BenchmarkBareQUICThroughput is the
// same transfer with quic-go alone (same sockets, TLS configs and flow
// control windows), so `go test -bench Throughput -count 5` gives the cost of
// the stream layer as a ratio.
const benchChunk = 64 << 10

// runThroughput writes b.N chunks to w and waits until r has read them all.
func runThroughput(b *testing.B, w io.Writer, closeWrite func() error, r io.Reader) {
	b.Helper()
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, r)
		done <- n
	}()
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	for range b.N {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := closeWrite(); err != nil {
		b.Fatal(err)
	}
	n := <-done
	b.StopTimer()
	if n != int64(b.N)*benchChunk {
		b.Fatalf("read %d bytes, want %d", n, int64(b.N)*benchChunk)
	}
}

func benchStreams(b *testing.B, p pair) {
	a, c, err := streams(b, p.client, p.server)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	defer c.Close()
	runThroughput(b, a, a.CloseWrite, c)
}

// BenchmarkStreamThroughput: a reach stream over QUIC on plain UDP sockets.
func BenchmarkStreamThroughput(b *testing.B) {
	benchStreams(b, quicPair(b, Config{}))
}

// BenchmarkStreamThroughputSock: the same over internal/sock sockets (the
// node's real socket: dual-stack, non-QUIC reader running).
func BenchmarkStreamThroughputSock(b *testing.B) {
	cs, err := sock.Listen(sock.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer cs.Close()
	ss, err := sock.Listen(sock.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer ss.Close()
	ck, sk := newKey(b), newKey(b)
	ln, err := Listen(ss.Transport(), sk, Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acc := make(chan *Session, 1)
	go func() {
		s, _ := ln.Accept(ctx)
		acc <- s
	}()
	c, err := Dial(ctx, cs.Transport(), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ss.Port()), ck, sk.ID(), Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Abort()
	s := <-acc
	if s == nil {
		b.Fatal("accept failed")
	}
	defer s.Abort()
	benchStreams(b, pair{client: c, server: s})
}

// BenchmarkStreamThroughputYamux: a reach stream over TLS+yamux on TCP.
func BenchmarkStreamThroughputYamux(b *testing.B) {
	benchStreams(b, yamuxPair(b, Config{}))
}

// BenchmarkBareQUICThroughput: quic-go alone, as the baseline.
func BenchmarkBareQUICThroughput(b *testing.B) {
	ctr, _ := newTransport(b)
	str, saddr := newTransport(b)
	ck, sk := newKey(b), newKey(b)
	stls, err := identity.ServerTLSConfig(sk, ALPN)
	if err != nil {
		b.Fatal(err)
	}
	ctls, _, err := identity.ClientTLSConfig(ck, sk.ID(), ALPN)
	if err != nil {
		b.Fatal(err)
	}
	qconf := QUICConfig(Config{})
	ln, err := str.Listen(stls, qconf)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acc := make(chan *quic.Conn, 1)
	go func() {
		c, _ := ln.Accept(ctx)
		acc <- c
	}()
	cc, err := ctr.Dial(ctx, net.UDPAddrFromAddrPort(saddr), ctls, qconf)
	if err != nil {
		b.Fatal(err)
	}
	defer cc.CloseWithError(0, "")
	sc := <-acc
	if sc == nil {
		b.Fatal("accept failed")
	}
	defer sc.CloseWithError(0, "")
	st, err := cc.OpenStreamSync(ctx)
	if err != nil {
		b.Fatal(err)
	}
	// quic-go announces the stream with its first data: the reader accepts
	// it lazily.
	r := &lazyStream{conn: sc, ctx: ctx}
	runThroughput(b, st, st.Close, r)
}

type lazyStream struct {
	conn *quic.Conn
	ctx  context.Context
	st   *quic.Stream
}

func (l *lazyStream) Read(p []byte) (int, error) {
	if l.st == nil {
		st, err := l.conn.AcceptStream(l.ctx)
		if err != nil {
			return 0, err
		}
		l.st = st
	}
	return l.st.Read(p)
}
