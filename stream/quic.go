package stream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
)

// Dial opens a QUIC session to the peer want at addr over the shared
// transport tr, proving key and requiring the remote to prove want's key. A
// different key gives an error wrapping identity.ErrWrongPeer (and a
// *identity.WrongPeerError). ctx bounds the handshake only: cancelling it
// after Dial returns does not affect the session. cfg.HandshakeTimeout also
// bounds the handshake.
func Dial(ctx context.Context, tr *quic.Transport, addr netip.AddrPort, key *identity.Key, want identity.PeerID, cfg Config) (*Session, error) {
	return DialAddr(ctx, tr, net.UDPAddrFromAddrPort(addr), key, want, cfg)
}

// DialAddr is Dial to any address tr's connection understands: a
// *net.UDPAddr on a UDP socket, or for example a relay.Addr on a relay's
// virtual packet connection.
func DialAddr(ctx context.Context, tr *quic.Transport, addr net.Addr, key *identity.Key, want identity.PeerID, cfg Config) (*Session, error) {
	tlsConf, pin, err := identity.ClientTLSConfig(key, want, ALPN)
	if err != nil {
		return nil, fmt.Errorf("stream: dial %v: %w", addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.handshakeTimeout())
	defer cancel()
	qc, err := tr.Dial(ctx, addr, tlsConf, QUICConfig(cfg))
	if err != nil {
		if perr := pin.Err(); perr != nil {
			// quic-go reports a TLS alert; the pin knows why.
			return nil, fmt.Errorf("stream: dial %v: %w", addr, perr)
		}
		return nil, fmt.Errorf("stream: dial %v: %w", addr, err)
	}
	if p := qc.ConnectionState().TLS.NegotiatedProtocol; p != ALPN {
		qc.CloseWithError(0, "bad alpn")
		return nil, fmt.Errorf("stream: dial %v: %w (%q)", addr, ErrBadALPN, p)
	}
	s := newQUICSession(qc, key.ID(), want, cfg)
	s.log.Debug("stream: dialled", "peer", want.Short(), "addr", addr)
	return s, nil
}

// Listener accepts QUIC sessions on a shared transport.
type Listener struct {
	ln     *quic.Listener
	key    *identity.Key
	cfg    Config
	others map[string]func(*quic.Conn)
}

// Listen starts accepting QUIC sessions on tr, proving key and requiring
// every client to prove a key of its own. A transport has at most one
// listener at a time.
func Listen(tr *quic.Transport, key *identity.Key, cfg Config) (*Listener, error) {
	tlsConf, err := identity.ServerTLSConfig(key, ALPN)
	if err != nil {
		return nil, fmt.Errorf("stream: listen: %w", err)
	}
	ln, err := tr.Listen(tlsConf, listenConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("stream: listen: %w", err)
	}
	return &Listener{ln: ln, key: key, cfg: cfg}, nil
}

// ListenWith is Listen that also serves other protocols on the same
// transport, by ALPN: a connection that negotiated one of others' ALPNs is
// handed to its function (which must not block: it runs inside Accept)
// instead of being returned by Accept. With others, the listener's
// connections have DATAGRAM frames (RFC 9221) enabled, which reach
// sessions ignore. A node that volunteers as a supernode serves relay
// links ("reach-relay/1") this way on its one socket.
func ListenWith(tr *quic.Transport, key *identity.Key, cfg Config, others map[string]func(*quic.Conn)) (*Listener, error) {
	alpns := []string{ALPN}
	for p := range others {
		if p != ALPN {
			alpns = append(alpns, p)
		}
	}
	tlsConf, err := identity.ServerTLSConfig(key, alpns...)
	if err != nil {
		return nil, fmt.Errorf("stream: listen: %w", err)
	}
	qcfg := listenConfig(cfg)
	qcfg.EnableDatagrams = len(others) > 0
	ln, err := tr.Listen(tlsConf, qcfg)
	if err != nil {
		return nil, fmt.Errorf("stream: listen: %w", err)
	}
	return &Listener{ln: ln, key: key, cfg: cfg, others: others}, nil
}

// MovablePacketSize is the packet size of sessions with a peer's virtual
// address (internal/pathsock): they may move to a forwarded path at any
// time, so their packets are sized to fit a relay frame (the QUIC
// minimum, like relay.PacketSize) and do not grow by path MTU discovery,
// which never shrinks them again.
const MovablePacketSize = 1200

// listenConfig is QUICConfig(cfg) for a listener: a client that comes
// from a virtual address gets MovablePacketSize.
func listenConfig(cfg Config) *quic.Config {
	q := QUICConfig(cfg)
	movable := cfg
	movable.PacketSize = MovablePacketSize
	mq := QUICConfig(movable)
	q.GetConfigForClient = func(info *quic.ClientInfo) (*quic.Config, error) {
		if ua, ok := info.RemoteAddr.(*net.UDPAddr); ok && pathsock.IsVirtual(ua.AddrPort().Addr()) {
			c := mq.Clone()
			c.EnableDatagrams = q.EnableDatagrams
			return c, nil
		}
		return q, nil
	}
	return q
}

// Accept waits for the next session whose handshake has completed, until
// ctx ends or the listener is closed.
func (l *Listener) Accept(ctx context.Context) (*Session, error) {
	for {
		qc, err := l.ln.Accept(ctx)
		if err != nil {
			return nil, fmt.Errorf("stream: accept: %w", err)
		}
		cs := qc.ConnectionState().TLS
		if serve := l.others[cs.NegotiatedProtocol]; serve != nil && cs.NegotiatedProtocol != ALPN {
			serve(qc)
			continue
		}
		remote, err := identity.PeerIDFromState(cs)
		if err == nil && cs.NegotiatedProtocol != ALPN {
			err = ErrBadALPN
		}
		if err != nil {
			// Cannot happen with ServerTLSConfig, but never hand out an
			// unauthenticated session.
			l.cfg.logger().Debug("stream: rejecting session", "remote", qc.RemoteAddr(), "err", err)
			qc.CloseWithError(0, "unauthenticated")
			continue
		}
		s := newQUICSession(qc, l.key.ID(), remote, l.cfg)
		s.log.Debug("stream: accepted", "peer", remote.Short(), "addr", s.RemoteAddr())
		return s, nil
	}
}

// Addr returns the transport's local address.
func (l *Listener) Addr() netip.AddrPort { return addrPort(l.ln.Addr()) }

// Close stops accepting sessions. Sessions already accepted stay open.
func (l *Listener) Close() error { return l.ln.Close() }

func newQUICSession(qc *quic.Conn, local, remote identity.PeerID, cfg Config) *Session {
	return newSession(quicBackend{qc}, qc, local, remote, cfg)
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a != nil {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
	}
	return netip.AddrPort{}
}

type quicBackend struct{ qc *quic.Conn }

func (b quicBackend) open(ctx context.Context) (rawStream, error) {
	st, err := b.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return quicStream{st}, nil
}

func (b quicBackend) accept(ctx context.Context) (rawStream, error) {
	st, err := b.qc.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return quicStream{st}, nil
}

func (b quicBackend) closeWithError(code uint64, msg string) error {
	err := b.qc.CloseWithError(quic.ApplicationErrorCode(code), msg)
	var appErr *quic.ApplicationError
	if errors.As(err, &appErr) {
		return nil // already closed
	}
	return err
}

func (b quicBackend) context() context.Context   { return b.qc.Context() }
func (b quicBackend) rtt() time.Duration         { return b.qc.ConnectionStats().SmoothedRTT }
func (b quicBackend) localAddr() netip.AddrPort  { return addrPort(b.qc.LocalAddr()) }
func (b quicBackend) remoteAddr() netip.AddrPort { return addrPort(b.qc.RemoteAddr()) }

type quicStream struct{ *quic.Stream }

func (s quicStream) closeWrite() error { return s.Stream.Close() }
func (s quicStream) abortRead()        { s.Stream.CancelRead(0) }
func (s quicStream) id() int64         { return int64(s.Stream.StreamID()) }

func (s quicStream) onFinalSize(f func(int64)) { s.Stream.SetReceiveFinalSizeCallback(f) }

func (s quicStream) reset(code uint64) {
	s.Stream.CancelWrite(quic.StreamErrorCode(code))
	s.Stream.CancelRead(quic.StreamErrorCode(code))
}
