package pathsock

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// BenchmarkThroughput: one QUIC stream's throughput on loopback over three
// kinds of socket, interleaved in one run so the ratios mean something on
// a shared machine:
//
//   - bare: quic-go on the *net.UDPConn itself (GSO, recvmmsg, ECN);
//   - pathsock: the same socket wrapped in a Conn, the session dialled to
//     a virtual address whose current path is direct;
//   - plain-wrapper: the socket behind a wrapper that is only a
//     net.PacketConn (what a naive virtual-address layer gives quic-go:
//     one syscall per packet, no GSO);
//   - pathsock-gro: pathsock with UDP GRO on both sockets (EnableGRO).
//
// Metrics: MB/s of each and the ratios pathsock/bare and plain/bare.
//
//	go test -run '^$' -bench Throughput -benchtime 5x -count 5 ./internal/pathsock
func BenchmarkThroughput(b *testing.B) {
	const size = 64 << 20
	buf := make([]byte, 64<<10)

	// bare
	ua, aReal := rawListen(b)
	ub, bReal := rawListen(b)
	bareC, bareS := session(b, &quic.Transport{Conn: ua}, &quic.Transport{Conn: ub}, bReal)
	_ = aReal
	// pathsock
	p := newPair(b)
	p.direct(b)
	psC, psS := session(b, &quic.Transport{Conn: p.a}, &quic.Transport{Conn: p.b}, p.aPeer)
	// pathsock with UDP GRO on both sockets
	g := newPair(b)
	g.a.EnableGRO()
	g.b.EnableGRO()
	g.direct(b)
	grC, grS := session(b, &quic.Transport{Conn: g.a}, &quic.Transport{Conn: g.b}, g.aPeer)
	// plain wrapper
	wa, _ := rawListen(b)
	wb, wbReal := rawListen(b)
	plC, plS := session(b, &quic.Transport{Conn: plainConn{wa}}, &quic.Transport{Conn: plainConn{wb}}, wbReal)

	kinds := []struct {
		name   string
		c, s   *quic.Conn
		total  time.Duration
		amount int64
	}{{name: "bare", c: bareC, s: bareS}, {name: "pathsock", c: psC, s: psS}, {name: "plain-wrapper", c: plC, s: plS}, {name: "pathsock-gro", c: grC, s: grS}}
	b.ResetTimer()
	for range b.N {
		for i := range kinds {
			k := &kinds[i]
			el := move(b, k.c, k.s, size, buf)
			k.total += el
			k.amount += size
		}
	}
	b.StopTimer()
	rate := func(i int) float64 { return float64(kinds[i].amount) / 1e6 / kinds[i].total.Seconds() }
	for i, k := range kinds {
		b.ReportMetric(rate(i), k.name+"-MB/s")
	}
	b.ReportMetric(rate(1)/rate(0), "pathsock/bare")
	b.ReportMetric(rate(2)/rate(0), "plain/bare")
	b.ReportMetric(rate(3)/rate(0), "gro/bare")
}

func rawListen(b *testing.B) (*net.UDPConn, netip.AddrPort) {
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { u.Close() })
	return u, u.LocalAddr().(*net.UDPAddr).AddrPort()
}

// move sends size bytes on a new stream from c to s and returns how long
// until s read the last byte.
func move(b *testing.B, c, s *quic.Conn, size int, buf []byte) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		st, err := s.AcceptStream(ctx)
		if err == nil {
			_, err = io.Copy(io.Discard, st)
		}
		done <- err
	}()
	start := time.Now()
	st, err := c.OpenStreamSync(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := st.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	st.Close()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// plainConn hides everything of a *net.UDPConn but net.PacketConn.
type plainConn struct{ u *net.UDPConn }

func (p plainConn) ReadFrom(b []byte) (int, net.Addr, error)  { return p.u.ReadFrom(b) }
func (p plainConn) WriteTo(b []byte, a net.Addr) (int, error) { return p.u.WriteTo(b, a) }
func (p plainConn) Close() error                              { return p.u.Close() }
func (p plainConn) LocalAddr() net.Addr                       { return p.u.LocalAddr() }
func (p plainConn) SetDeadline(t time.Time) error             { return p.u.SetDeadline(t) }
func (p plainConn) SetReadDeadline(t time.Time) error         { return p.u.SetReadDeadline(t) }
func (p plainConn) SetWriteDeadline(t time.Time) error        { return p.u.SetWriteDeadline(t) }
