package stream

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/tcpinfo"
)

// Client runs the dialling side of a TLS+yamux session over conn, a byte
// stream such as a TCP connection: TLS 1.3 proving key and requiring want's
// key (a different key gives an error wrapping identity.ErrWrongPeer), then
// yamux. The session owns conn; on error conn is closed. ctx and
// cfg.HandshakeTimeout bound the TLS handshake only.
func Client(ctx context.Context, conn net.Conn, key *identity.Key, want identity.PeerID, cfg Config) (*Session, error) {
	tlsConf, pin, err := identity.ClientTLSConfig(key, want, ALPN)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("stream: client: %w", err)
	}
	bc := &batchConn{Conn: conn}
	tc := tls.Client(bc, tlsConf)
	start := time.Now()
	if err := handshake(ctx, tc, cfg); err != nil {
		conn.Close()
		if perr := pin.Err(); perr != nil {
			err = perr
		}
		return nil, fmt.Errorf("stream: client handshake with %v: %w", conn.RemoteAddr(), err)
	}
	fc := &frameConn{Conn: tc, batch: bc, in: &frameReader{}}
	ys, err := yamux.Client(fc, yamuxConfig(cfg, pathRTT(conn, time.Since(start))))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("stream: client: %w", err)
	}
	return newYamuxSession(ys, fc, tc, key.ID(), want, cfg), nil
}

// Server runs the accepting side of a TLS+yamux session over conn: TLS 1.3
// proving key and requiring the client to prove a key of its own, then
// yamux. The session owns conn; on error conn is closed. ctx and
// cfg.HandshakeTimeout bound the TLS handshake only.
func Server(ctx context.Context, conn net.Conn, key *identity.Key, cfg Config) (*Session, error) {
	tlsConf, err := identity.ServerTLSConfig(key, ALPN)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("stream: server: %w", err)
	}
	bc := &batchConn{Conn: conn}
	tc := tls.Server(bc, tlsConf)
	start := time.Now()
	if err := handshake(ctx, tc, cfg); err != nil {
		conn.Close()
		return nil, fmt.Errorf("stream: server handshake with %v: %w", conn.RemoteAddr(), err)
	}
	remote, err := identity.PeerIDFromState(tc.ConnectionState())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("stream: server: %w", err)
	}
	fc := &frameConn{Conn: tc, batch: bc, in: &frameReader{}}
	ys, err := yamux.Server(fc, yamuxConfig(cfg, pathRTT(conn, time.Since(start))))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("stream: server: %w", err)
	}
	return newYamuxSession(ys, fc, tc, key.ID(), remote, cfg), nil
}

func handshake(ctx context.Context, tc *tls.Conn, cfg Config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.handshakeTimeout())
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		return fmt.Errorf("%w (%q)", ErrBadALPN, p)
	}
	return nil
}

// pathRTT is the round trip of conn: the kernel's estimate for TCP (on
// Linux), else hs, the time the TLS handshake took (about one round trip
// plus the handshake's computation).
func pathRTT(conn net.Conn, hs time.Duration) time.Duration {
	if rtt := tcpinfo.RTT(conn); rtt > 0 {
		return rtt
	}
	return hs
}

// yamuxConfig is the yamux configuration of a session over a path whose
// round trip is rtt.
func yamuxConfig(cfg Config, rtt time.Duration) *yamux.Config {
	yc := yamux.DefaultConfig()
	yc.AcceptBacklog = int(min(cfg.maxStreams(), math.MaxInt32))
	yc.EnableKeepAlive = false // we ping ourselves, to measure RTT
	yc.ConnectionWriteTimeout = cfg.idleTimeout()
	yc.MaxStreamWindowSize = uint32(min(yamuxWindow(cfg.streamWindow(), rtt), math.MaxUint32))
	yc.LogOutput = nil
	yc.Logger = slog.NewLogLogger(cfg.logger().Handler(), slog.LevelDebug)
	return yc
}

// yamuxWindowRate is the rate a TCP path's stream window is sized for:
// 1 Gbit/s over the path's round trip (pathRTT).
const yamuxWindowRate = 125 << 20 // bytes per second

// minYamuxWindow is yamux's own initial stream window, the least it
// accepts.
const minYamuxWindow = 256 << 10

// floorYamuxWindow is the least window a TCP path gets, however short
// its round trip: on a LAN the round trip says little about how late a
// window update comes (the receiving goroutines' scheduling), and a
// sender that waits for one idles. In the lab (zero delay), 1 MiB ran
// streams at a median 795 MB/s where 256 KiB ran them at 680 MB/s; 4 MiB
// gained nothing more (BenchmarkLabTCPThroughput, 2026-12-01).
const floorYamuxWindow = 1 << 20

// yamuxWindow is a TCP path's stream receive window: enough for
// yamuxWindowRate over the path's round trip hs, at least
// floorYamuxWindow (never below minYamuxWindow), at most limit
// (Config.StreamReceiveWindow). Not simply
// max: yamux buffers what a stream received and the application has not
// read yet in a bytes.Buffer that grows by doubling, fresh for every
// stream, so a window far beyond the path's bandwidth-delay product only
// costs allocations (on a LAN, a 16 MiB window made a stream run at 0.4x
// TLS over plain TCP, 256 KiB at 0.9x: BenchmarkLabTCPThroughput).
func yamuxWindow(limit uint64, hs time.Duration) uint64 {
	w := max(uint64(hs.Seconds()*yamuxWindowRate), floorYamuxWindow)
	return max(min(limit, w), minYamuxWindow)
}

// yamuxBackend is a TLS+yamux session. A goroutine pings the peer every
// keep-alive period (measuring RTT) and cancels ctx when the session ends.
type yamuxBackend struct {
	ys     *yamux.Session
	fc     *frameConn
	tc     *tls.Conn
	ctx    context.Context
	cancel context.CancelFunc
	lastRT atomic.Int64
	done   chan struct{}
	once   sync.Once
}

func newYamuxSession(ys *yamux.Session, fc *frameConn, tc *tls.Conn, local, remote identity.PeerID, cfg Config) *Session {
	b := &yamuxBackend{ys: ys, fc: fc, tc: tc, done: make(chan struct{})}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	go b.run(cfg)
	s := newSession(b, nil, local, remote, cfg)
	s.log.Debug("stream: TLS+yamux session up", "peer", remote.Short(), "remote", b.remoteAddr())
	return s
}

func (b *yamuxBackend) run(cfg Config) {
	defer close(b.done)
	defer b.cancel()
	period := cfg.keepAlive()
	var tick <-chan time.Time
	if period > 0 {
		t := time.NewTicker(period)
		defer t.Stop()
		tick = t.C
	}
	ping := func() bool {
		rtt, err := b.ys.Ping()
		if err != nil {
			b.ys.Close()
			return false
		}
		b.lastRT.Store(int64(rtt))
		return true
	}
	// One ping at once, for a first RTT sample.
	pinged := make(chan bool, 1)
	go func() { pinged <- ping() }()
	for {
		select {
		case <-b.ys.CloseChan():
			if pinged != nil {
				<-pinged // Ping returns once the session is shut down
			}
			return
		case ok := <-pinged:
			if !ok {
				<-b.ys.CloseChan()
				return
			}
			pinged = nil
		case <-tick:
			if pinged == nil && !ping() {
				<-b.ys.CloseChan()
				return
			}
		}
	}
}

func (b *yamuxBackend) open(ctx context.Context) (rawStream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := b.ys.OpenStream()
	if err != nil {
		return nil, err
	}
	return &yamuxStream{Stream: st, fc: b.fc}, nil
}

func (b *yamuxBackend) accept(ctx context.Context) (rawStream, error) {
	st, err := b.ys.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, err
	}
	return &yamuxStream{Stream: st, fc: b.fc}, nil
}

func (b *yamuxBackend) closeWithError(uint64, string) error {
	err := b.ys.Close() // closes the TLS conn and the transport under it
	<-b.done
	return err
}

func (b *yamuxBackend) context() context.Context   { return b.ctx }
func (b *yamuxBackend) rtt() time.Duration         { return time.Duration(b.lastRT.Load()) }
func (b *yamuxBackend) localAddr() netip.AddrPort  { return addrPort(b.tc.LocalAddr()) }
func (b *yamuxBackend) remoteAddr() netip.AddrPort { return addrPort(b.tc.RemoteAddr()) }

// yamuxStream adapts a yamux stream. yamux's Close is a half-close (FIN);
// it cannot tell the peer to stop sending, so abortRead does nothing and
// unread data is dropped when the peer closes too or yamux's stream close
// timeout passes. reset sends an RST with a code of our own
// (yamuxreset.go), and the peer's reset fails Read, Write and closeWrite
// with a *PeerError.
//
// yamux lets Read and Write proceed when data or window is available even
// if their deadline has passed; net.Conn requires them to fail, so the
// adapter checks the deadlines first.
type yamuxStream struct {
	*yamux.Stream
	fc       *frameConn
	rdl, wdl atomic.Int64  // deadlines in Unix nanoseconds, 0: none
	code     atomic.Uint64 // the peer's reset code + 1, once known; 0: none yet
}

func deadlinePassed(d *atomic.Int64) bool {
	ns := d.Load()
	return ns != 0 && time.Now().UnixNano() >= ns
}

func storeDeadline(d *atomic.Int64, t time.Time) {
	if t.IsZero() {
		d.Store(0)
	} else {
		d.Store(t.UnixNano())
	}
}

func (s *yamuxStream) Read(p []byte) (int, error) {
	if deadlinePassed(&s.rdl) {
		return 0, os.ErrDeadlineExceeded
	}
	n, err := s.Stream.Read(p)
	return n, s.resetErr(err)
}

func (s *yamuxStream) Write(p []byte) (int, error) {
	if deadlinePassed(&s.wdl) {
		return 0, os.ErrDeadlineExceeded
	}
	n, err := s.Stream.Write(p)
	return n, s.resetErr(err)
}

func (s *yamuxStream) SetReadDeadline(t time.Time) error {
	storeDeadline(&s.rdl, t)
	return s.Stream.SetReadDeadline(t)
}

func (s *yamuxStream) SetWriteDeadline(t time.Time) error {
	storeDeadline(&s.wdl, t)
	return s.Stream.SetWriteDeadline(t)
}

// closeWrite sends FIN, or fails once the peer has reset the stream
// (yamux's Close says nothing then).
func (s *yamuxStream) closeWrite() error {
	if c, ok := s.peerCode(); ok {
		return &PeerError{Code: c, Err: yamux.ErrConnectionReset}
	}
	return s.Stream.Close()
}

func (s *yamuxStream) abortRead()              {}
func (s *yamuxStream) id() int64               { return int64(s.Stream.StreamID()) }
func (s *yamuxStream) onFinalSize(func(int64)) {}
