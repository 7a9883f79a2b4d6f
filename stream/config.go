package stream

import (
	"io"
	"log/slog"
	"time"

	"github.com/quic-go/quic-go"
)

// A session's configuration and the QUIC settings it gives.

// Defaults for the zero values of Config.
const (
	DefaultKeepAlivePeriod  = 10 * time.Second
	DefaultMaxIdleTimeout   = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultStreamReceiveWindow is 16 MiB: a single stream can keep
	// 1 Gbit/s flowing over a 130 ms round trip (bandwidth-delay product
	// 16 MB), or 100 Mbit/s over more than a second.
	DefaultStreamReceiveWindow = 16 << 20
	// DefaultMaxIncomingStreams is the number of concurrently open streams
	// a peer may have towards us.
	DefaultMaxIncomingStreams = 1024
	// DefaultCloseTimeout bounds how long Session.Close waits for the
	// peer to read what this side wrote.
	DefaultCloseTimeout = 10 * time.Second
	// initialWindow is where quic-go's window auto-tuning starts; it grows
	// the windows towards the maxima as the measured bandwidth-delay product
	// requires.
	initialWindow = 1 << 20
)

// Config tunes sessions. The zero value is ready to use; both sides should
// use compatible values (the effective idle timeout is the smaller of the
// two sides').
type Config struct {
	// KeepAlivePeriod is how often an otherwise idle session sends a packet
	// so that NAT mappings and firewall state along the path stay open.
	// Zero means DefaultKeepAlivePeriod (10 s), a third of the 30 s UDP
	// mapping timeout common in NATs (RFC 4787 asks for at least 2 min,
	// many routers use 30 s). Negative disables keep-alives.
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout closes a session after this long without receiving
	// anything from the peer. Zero means DefaultMaxIdleTimeout (30 s).
	MaxIdleTimeout time.Duration
	// HandshakeTimeout bounds the connection and TLS handshake, in addition
	// to the context passed to Dial or Client. Zero means
	// DefaultHandshakeTimeout (10 s).
	HandshakeTimeout time.Duration
	// StreamReceiveWindow is the largest flow-control window of one stream:
	// the most unread data the peer may send ahead on it. Windows start at
	// 1 MiB and grow up to this as quic-go measures the path's
	// bandwidth-delay product. Zero means DefaultStreamReceiveWindow
	// (16 MiB). For TLS+yamux sessions (TCP paths) it caps the yamux
	// stream window, which is sized once to the path: 1 Gbit/s over its
	// round trip (the kernel's, TCP_INFO, or the TLS handshake's time), at
	// least 256 KiB, at most this and 4 GiB - 1.
	StreamReceiveWindow uint64
	// ConnectionReceiveWindow is the largest flow-control window of a whole
	// QUIC session, across its streams. Zero means twice
	// StreamReceiveWindow (32 MiB by default), so two streams can run at
	// full speed at once. Not used by TLS+yamux sessions.
	ConnectionReceiveWindow uint64
	// MaxIncomingStreams is how many streams the peer may have open towards
	// us at once; opening more blocks in OpenStream on the peer's side. Zero
	// means DefaultMaxIncomingStreams (1024). For TLS+yamux sessions it is
	// the backlog of opened but not yet accepted streams.
	MaxIncomingStreams int64
	// PacketSize fixes the size of the QUIC packets a session sends, and
	// turns path MTU discovery off. Zero: quic-go's default (1280 bytes at
	// first, more where path MTU discovery finds room). Relayed sessions
	// use 1200 (relay.PacketSize), the QUIC minimum, so that every packet
	// fits in one relay datagram. Not used by TLS+yamux sessions.
	PacketSize uint16
	// CloseTimeout bounds how long Session.Close (and so Node.Close)
	// waits for the peer to read the data this side wrote before it
	// closes the session anyway. Zero means DefaultCloseTimeout (10 s).
	// Negative: Close does not wait; unread data is discarded, as with
	// Abort.
	CloseTimeout time.Duration
	// Logger receives debug logs. Nil discards them.
	Logger *slog.Logger
}

func (c Config) keepAlive() time.Duration {
	switch {
	case c.KeepAlivePeriod < 0:
		return 0
	case c.KeepAlivePeriod == 0:
		return DefaultKeepAlivePeriod
	}
	return c.KeepAlivePeriod
}

func (c Config) idleTimeout() time.Duration {
	if c.MaxIdleTimeout <= 0 {
		return DefaultMaxIdleTimeout
	}
	return c.MaxIdleTimeout
}

func (c Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout <= 0 {
		return DefaultHandshakeTimeout
	}
	return c.HandshakeTimeout
}

func (c Config) streamWindow() uint64 {
	if c.StreamReceiveWindow == 0 {
		return DefaultStreamReceiveWindow
	}
	return c.StreamReceiveWindow
}

func (c Config) connWindow() uint64 {
	if c.ConnectionReceiveWindow == 0 {
		return 2 * c.streamWindow()
	}
	return c.ConnectionReceiveWindow
}

func (c Config) maxStreams() int64 {
	if c.MaxIncomingStreams <= 0 {
		return DefaultMaxIncomingStreams
	}
	return c.MaxIncomingStreams
}

func (c Config) closeTimeout() time.Duration {
	if c.CloseTimeout == 0 {
		return DefaultCloseTimeout
	}
	return c.CloseTimeout
}

func (c Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c.Logger
}

// QUICConfig returns the quic-go configuration reach sessions use for cfg.
// It is exported for tools and benchmarks that compare against bare QUIC.
func QUICConfig(cfg Config) *quic.Config {
	sw, cw := cfg.streamWindow(), cfg.connWindow()
	return &quic.Config{
		// quic-go aborts a handshake after this long without a packet, and
		// after twice this long in any case.
		HandshakeIdleTimeout:           cfg.handshakeTimeout() / 2,
		MaxIdleTimeout:                 cfg.idleTimeout(),
		KeepAlivePeriod:                cfg.keepAlive(),
		InitialStreamReceiveWindow:     min(sw, initialWindow),
		MaxStreamReceiveWindow:         sw,
		InitialConnectionReceiveWindow: min(cw, 2*initialWindow),
		MaxConnectionReceiveWindow:     cw,
		MaxIncomingStreams:             cfg.maxStreams(),
		MaxIncomingUniStreams:          -1, // reach uses bidirectional streams only
		InitialPacketSize:              cfg.PacketSize,
		DisablePathMTUDiscovery:        cfg.PacketSize != 0,
	}
}
