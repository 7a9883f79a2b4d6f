// Package stream holds reach sessions and streams.
//
// A Session is an authenticated, encrypted connection to one peer that
// carries any number of bidirectional streams; each Stream is a net.Conn.
// Sessions come from two backends behind the one Session type:
//
//   - QUIC (quic-go) over the node's shared quic.Transport, for UDP paths:
//     Dial and Listen.
//   - TLS 1.3 with hashicorp/yamux on top, for byte-stream paths such as TCP
//     direct or TCP hole punching: Client and Server.
//
// Both pin TLS 1.3 to peer keys with the identity package: the dialling side
// accepts the remote only if it proves the key it dialled (a different key
// gives an error wrapping identity.ErrWrongPeer), the accepting side requires
// a client certificate and learns the remote peer ID from it. The ALPN is
// ALPN ("reach/1").
//
// Wire format of a stream: the opening side sends one header byte, the
// stream type, before any application data: 0x00 is an application stream,
// 0x01 the session's echo service (Session.Ping), 0x02 "done" (Session.
// Shutdown), 0x03 "drain" (Session.Close, see close.go); these are served
// inside AcceptStream, never returned; other values are reserved (the
// accepting side fails such a stream with ErrBadStreamHeader). The header also makes a freshly opened QUIC
// stream visible to the peer at once (quic-go announces a stream only with
// its first data), so AcceptStream returns even when the accepting side is
// the one that speaks first. The header is consumed by the first Read on
// the accepting side and never seen by applications.
package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

// ALPN is the TLS application protocol of reach sessions.
const ALPN = "reach/1"

// Stream types: the first byte the opening side sends on a stream.
const (
	streamTypeApp   = 0x00
	streamTypePing  = 0x01 // echo service, see Session.Ping
	streamTypeBye   = 0x02 // "done": see Session.Shutdown
	streamTypeDrain = 0x03 // "read what I sent": see Session.Close
)

// Named errors. Test with errors.Is.
var (
	// ErrBadStreamHeader: the peer opened a stream with an unknown type.
	ErrBadStreamHeader = errors.New("stream: peer opened a stream of unknown type")
	// ErrWriteClosed: Write after CloseWrite.
	ErrWriteClosed = errors.New("stream: write after CloseWrite")
	// ErrBadALPN: the peer does not speak ALPN.
	ErrBadALPN = errors.New("stream: peer did not negotiate the reach protocol")
)

// Addr is the address of either end of a Stream: the peer and the network
// path the session currently uses. String returns the peer ID, so an
// application calling conn.RemoteAddr().String() gets the remote peer ID.
type Addr struct {
	Peer identity.PeerID
	Path netip.AddrPort
}

// Network returns "reach".
func (Addr) Network() string { return "reach" }

// String returns the peer ID.
func (a Addr) String() string { return a.Peer.String() }

// backend is one session implementation (QUIC, TLS+yamux).
type backend interface {
	open(ctx context.Context) (rawStream, error)
	accept(ctx context.Context) (rawStream, error)
	closeWithError(code uint64, msg string) error
	context() context.Context
	rtt() time.Duration
	localAddr() netip.AddrPort
	remoteAddr() netip.AddrPort
}

// rawStream is one backend stream.
type rawStream interface {
	io.ReadWriter
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	// closeWrite sends FIN after the data written so far.
	closeWrite() error
	// abortRead discards unread and future data and tells the peer to stop
	// sending, where the backend can.
	abortRead()
	// reset abandons both directions at once with an error code for the
	// peer (on yamux, an RST of our own: yamuxreset.go).
	reset(code uint64)
	// onFinalSize has f called with the size of everything the peer sends
	// once that is known (QUIC); yamux never calls it.
	onFinalSize(f func(int64))
	// id is the backend's stream ID, the same number on both sides.
	id() int64
}

// Session is an authenticated connection to one peer carrying streams. Its
// methods are safe for concurrent use.
type Session struct {
	b      backend
	local  identity.PeerID
	remote identity.PeerID
	qc     *quic.Conn // nil for TLS+yamux
	log    *slog.Logger

	closeTimeout time.Duration

	mu       sync.Mutex
	strategy string
	detail   string                              // SetStrategyDetail
	resolve  func(netip.AddrPort) netip.AddrPort // SetPathResolver
	bye      chan struct{}                       // closed when the peer's bye stream arrives
	byeSeen  bool
	live     map[*Stream]struct{} // application streams in use (close.go)
	closing  bool                 // Close has begun: no new streams

	wrote     atomic.Bool // application data was written on some stream
	closeOnce sync.Once
	closeDone chan struct{} // closed when Close has finished
	closeErr  error         // Close's result, set before closeDone
}

func newSession(b backend, qc *quic.Conn, local, remote identity.PeerID, cfg Config) *Session {
	return &Session{
		b: b, qc: qc, local: local, remote: remote, log: cfg.logger(),
		closeTimeout: cfg.closeTimeout(),
		live:         map[*Stream]struct{}{},
		closeDone:    make(chan struct{}),
	}
}

// OpenStream opens a new stream to the peer. On QUIC it blocks while the
// peer's limit of concurrent streams is reached, until ctx ends; on
// TLS+yamux ctx is only checked before opening (yamux opens without
// waiting for the peer).
//
// After Close has begun it fails with an error wrapping net.ErrClosed.
func (s *Session) OpenStream(ctx context.Context) (*Stream, error) {
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return nil, fmt.Errorf("stream: open: %w", net.ErrClosed)
	}
	st, err := s.openStream(ctx, streamTypeApp)
	if err != nil {
		return nil, err
	}
	if !s.track(st) {
		st.Close()
		return nil, fmt.Errorf("stream: open: %w", net.ErrClosed)
	}
	return st, nil
}

func (s *Session) openStream(ctx context.Context, typ byte) (*Stream, error) {
	raw, err := s.b.open(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream: open: %w", err)
	}
	// The type header announces the stream to the peer (see package doc).
	if _, err := raw.Write([]byte{typ}); err != nil {
		raw.abortRead()
		raw.closeWrite()
		return nil, fmt.Errorf("stream: open: %w", err)
	}
	st := s.newStream(raw)
	st.hdrDone.Store(true)
	return st, nil
}

func (s *Session) newStream(raw rawStream) *Stream {
	st := &Stream{raw: raw, sess: s, readEnd: make(chan struct{})}
	st.final.Store(-1)
	raw.onFinalSize(func(n int64) {
		st.final.Store(n)
		st.checkConsumed()
	})
	return st
}

// AcceptStream waits for the peer to open a stream, until ctx ends or the
// session closes. Streams of the session's own services (Ping, Shutdown,
// the peer's Close) are served here and never returned, so a program that
// uses a Session directly keeps an AcceptStream call running for as long
// as the session is open (a Node always does). Once Close has begun, new
// streams from the peer are closed instead of returned.
func (s *Session) AcceptStream(ctx context.Context) (*Stream, error) {
	for {
		raw, err := s.b.accept(ctx)
		if err != nil {
			return nil, fmt.Errorf("stream: accept: %w", err)
		}
		st := s.newStream(raw)
		switch st.serviceType() {
		case streamTypePing:
			go st.serveEcho()
			continue
		case streamTypeBye:
			s.peerSaidBye()
			st.Close()
			continue
		case streamTypeDrain:
			go s.serveDrain(st)
			continue
		}
		if !s.track(st) {
			st.Close()
			continue
		}
		return st, nil
	}
}

// RemotePeer returns the peer's ID, proved in the TLS handshake.
func (s *Session) RemotePeer() identity.PeerID { return s.remote }

// LocalPeer returns this side's peer ID.
func (s *Session) LocalPeer() identity.PeerID { return s.local }

// LocalAddr returns the local address of the session's current path.
func (s *Session) LocalAddr() netip.AddrPort { return s.b.localAddr() }

// RemoteAddr returns the peer's address on the session's current path:
// invalid while the path is forwarded (a relay) and the session can move
// (see SetPathResolver).
func (s *Session) RemoteAddr() netip.AddrPort {
	a := s.b.remoteAddr()
	s.mu.Lock()
	r := s.resolve
	s.mu.Unlock()
	if r != nil {
		return r(a)
	}
	return a
}

// QUICAddr returns the address the session's QUIC connection uses for the
// peer: for a session that can move between paths, the peer's virtual
// address on the node's socket, which stays the same on every path.
func (s *Session) QUICAddr() netip.AddrPort { return s.b.remoteAddr() }

// SetPathResolver makes RemoteAddr report r(QUICAddr()): the node sets it
// for sessions whose QUIC address is virtual, so the path a user sees is
// the one the session uses now.
func (s *Session) SetPathResolver(r func(netip.AddrPort) netip.AddrPort) {
	s.mu.Lock()
	s.resolve = r
	s.mu.Unlock()
}

// RTT returns the smoothed round-trip time of the current path, or zero
// before the first sample.
func (s *Session) RTT() time.Duration { return s.b.rtt() }

// StrategyDetail says how the strategy made the path, when it has more to
// say than its name (holepunch: "port prediction: ..."); "" otherwise.
func (s *Session) StrategyDetail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.detail
}

// SetStrategyDetail records StrategyDetail.
func (s *Session) SetStrategyDetail(d string) {
	s.mu.Lock()
	s.detail = d
	s.mu.Unlock()
}

// CloseWithError closes the session at once with an application error
// code and a reason the peer can read (QUIC only; TLS+yamux sessions just
// close): data not yet delivered is lost, unlike Close. The peer's Read and
// Write calls fail with a *PeerError carrying code (see ErrorCode).
func (s *Session) CloseWithError(code uint64, msg string) error {
	return s.b.closeWithError(code, msg)
}

// Context returns a context that is cancelled when the session closes.
func (s *Session) Context() context.Context { return s.b.context() }

// Done returns a channel that is closed when the session closes.
func (s *Session) Done() <-chan struct{} { return s.b.context().Done() }

// Strategy returns the name of the strategy (ladder rung) whose path carries
// the session, as set by SetStrategy; "" if unset.
func (s *Session) Strategy() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.strategy
}

// SetStrategy records which strategy's path carries the session.
func (s *Session) SetStrategy(name string) {
	s.mu.Lock()
	s.strategy = name
	s.mu.Unlock()
}

// Transports a session runs on (Session.Transport).
const (
	TransportUDP = "udp" // QUIC over the node's UDP socket (or a forwarded path of it)
	TransportTCP = "tcp" // TLS 1.3 + yamux over a byte stream (a TCP connection)
)

// Transport returns TransportUDP for a QUIC session and TransportTCP for a
// TLS+yamux one.
func (s *Session) Transport() string {
	if s.qc != nil {
		return TransportUDP
	}
	return TransportTCP
}

// QUIC returns the underlying QUIC connection, or nil for a TLS+yamux
// session. It is for path management and statistics: streams opened on it
// directly bypass the stream header and will be rejected by the peer.
func (s *Session) QUIC() *quic.Conn { return s.qc }

// String describes the session for logs.
func (s *Session) String() string {
	return fmt.Sprintf("session(%s %v<->%v)", s.remote.Short(), s.LocalAddr(), s.RemoteAddr())
}

// Stream is one bidirectional stream of a Session. It is a net.Conn whose
// addresses are Addr values, plus CloseWrite for half-closing.
type Stream struct {
	raw  rawStream
	sess *Session

	wrote    atomic.Bool   // application data was written
	readEnd  chan struct{} // closed once reading is over (close.go)
	readOnce sync.Once
	consumed atomic.Int64 // bytes read from the backend stream
	final    atomic.Int64 // what the peer sends in all, -1 until known
	wend     atomic.Bool  // no more writes: FIN sent or the write side failed

	hdrMu     sync.Mutex
	hdrDone   atomic.Bool // the type header has been sent or consumed
	hdrErr    error       // under hdrMu: permanent header failure
	hdrFailed atomic.Bool // hdrErr is set

	wmu     sync.Mutex // serialises Write, CloseWrite and Close's FIN
	wclosed bool       // under wmu: FIN sent

	closed    atomic.Bool
	closeOnce sync.Once
}

var _ net.Conn = (*Stream)(nil)

// aLongTimeAgo is a deadline in the past, used to wake blocked calls.
var aLongTimeAgo = time.Unix(1, 0)

// Session returns the session the stream belongs to.
func (s *Stream) Session() *Session { return s.sess }

// Read reads data from the peer. It returns io.EOF after the peer's
// CloseWrite or Close and all data has been read, and net.ErrClosed after
// Close.
func (s *Stream) Read(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	if err := s.readHeader(); err != nil {
		s.readFailed(err)
		return 0, s.mapErr(err)
	}
	n, err := s.rawRead(p)
	if err != nil {
		s.readFailed(err)
		if s.allRead() && !isReset(err) && !s.closed.Load() {
			// The peer's final size was known, everything before it
			// read, and the session closed before the EOF itself was:
			// after a FIN the peer's Close had every byte, and so has
			// this side. A reset tells the final size too, and quic-go
			// reports the session's end before a reset that came with
			// it (a listener that refuses a stream and closes the
			// session: the refused dialler read a clean EOF). One more
			// read, which no longer blocks, says which it was.
			_, again := s.raw.Read(nil)
			if !isReset(again) {
				return n, io.EOF
			}
			err = again
		}
		err = s.mapErr(err)
	}
	return n, err
}

func (s *Stream) readHeader() error {
	if s.hdrDone.Load() && !s.hdrFailed.Load() {
		return nil
	}
	s.hdrMu.Lock()
	defer s.hdrMu.Unlock()
	if s.hdrDone.Load() {
		return s.hdrErr
	}
	var b [1]byte
	for {
		n, err := s.rawRead(b[:])
		if n == 1 {
			break
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			// The peer closed its side without sending anything.
			s.hdrErr = io.EOF
			s.hdrFailed.Store(true)
			s.hdrDone.Store(true)
		}
		return err // a timeout or reset: the next Read tries again
	}
	if b[0] != streamTypeApp {
		s.hdrErr = fmt.Errorf("%w: type %#x", ErrBadStreamHeader, b[0])
		s.hdrFailed.Store(true)
		s.raw.abortRead()
	}
	s.hdrDone.Store(true)
	return s.hdrErr
}

// Write writes data to the peer.
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	if s.wclosed {
		return 0, ErrWriteClosed
	}
	if len(p) > 0 {
		// Before writing: Close must know that data may be in flight.
		s.wrote.Store(true)
		s.sess.wrote.Store(true)
	}
	n, err := s.raw.Write(p)
	if err != nil {
		if !isTimeout(err) {
			s.writeEnded()
		}
		err = s.mapErr(err)
	}
	return n, err
}

func (s *Stream) mapErr(err error) error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	return peerError(err)
}

// CloseWrite half-closes the stream: the peer reads io.EOF after the data
// written so far, and this side can still read.
func (s *Stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return net.ErrClosed
	}
	if s.wclosed {
		return nil
	}
	s.wclosed = true
	// The FIN is something the peer reads (io.EOF): Close must not end
	// the session before it arrives, data or not.
	s.wrote.Store(true)
	s.sess.wrote.Store(true)
	err := s.raw.closeWrite()
	s.writeEnded()
	return err
}

// Close closes the stream in both directions, as net.Conn requires: blocked
// Read and Write calls return net.ErrClosed, data written so far is still
// delivered followed by EOF, and data from the peer is discarded (the peer's
// further writes fail with ErrPeerClosed, like writing to a reset TCP
// connection). Close does not wait for delivery: the session goes on
// sending in the background, and Session.Close (or Node.Close) waits,
// bounded by Config.CloseTimeout, until the peer has read it. Abort and
// CloseWithError discard undelivered data instead.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		// Wake blocked calls; they see closed and return net.ErrClosed.
		s.raw.SetReadDeadline(aLongTimeAgo)
		s.raw.SetWriteDeadline(aLongTimeAgo)
		s.raw.abortRead()
		s.wmu.Lock()
		if !s.wclosed {
			s.wclosed = true
			s.wrote.Store(true) // the FIN, as in CloseWrite
			s.sess.wrote.Store(true)
			// An error only means the FIN cannot be sent (the peer reset
			// the stream, or the session is gone): nothing to report.
			s.raw.closeWrite()
		}
		s.wmu.Unlock()
		s.readEnded()
		s.writeEnded()
	})
	return nil
}

// LocalAddr returns this side's peer ID and path address.
func (s *Stream) LocalAddr() net.Addr {
	return Addr{Peer: s.sess.local, Path: s.sess.LocalAddr()}
}

// RemoteAddr returns the remote peer ID and path address. Its String is
// the remote peer ID.
func (s *Stream) RemoteAddr() net.Addr {
	return Addr{Peer: s.sess.remote, Path: s.sess.RemoteAddr()}
}

// SetDeadline sets the read and write deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	if err := s.SetReadDeadline(t); err != nil {
		return err
	}
	return s.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline for Read calls; zero means none.
func (s *Stream) SetReadDeadline(t time.Time) error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	return s.raw.SetReadDeadline(t)
}

// SetWriteDeadline sets the deadline for Write calls; zero means none.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	return s.raw.SetWriteDeadline(t)
}
