package rendezvous

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/reachp2p/reach/identity"
)

// The server's configuration, and the interfaces of the protocols it
// hosts on its ports.

// ServerConfig configures a Server. Every zero value is usable.
type ServerConfig struct {
	// Key is the server's identity, pinned by its connect string.
	// Nil: a fresh random key (the connect string changes every run).
	Key *identity.Key
	// Logger receives the server's logs. Nil: discard.
	Logger *slog.Logger
	// MaxPeers is how many peers may be registered at once; a registration
	// beyond it is refused with an ERROR "busy". Zero: 100000.
	MaxPeers int
	// MaxFrameSize is the largest frame body accepted from a client, in
	// bytes; a larger frame is a protocol error (frame_too_large). Zero:
	// 16384. Values above 65535 (the format's limit) are lowered to it.
	MaxFrameSize int
	// MaxCandidates is the most candidates an offer or answer may carry.
	// Zero: 32.
	MaxCandidates int
	// MaxPendingIntros is how many introductions one dialler may have
	// waiting for an answer at once; more are refused with ErrBusy.
	// Zero: 16.
	MaxPendingIntros int
	// MaxIncomingIntros is how many introductions to one peer may wait
	// for its answer at once, from all diallers together; more are
	// refused with ErrBusy (the peer is never disconnected for what
	// others send it). Zero: 32, half the peer's send queue.
	MaxIncomingIntros int
	// IntroTimeout bounds how long the target of an introduction has to
	// answer before the dialler gets ErrTimeout. Zero: 10s.
	IntroTimeout time.Duration
	// IdleTimeout is how long a registered connection may stay silent
	// before the server drops it (QUIC idle timeout; TCP read deadline).
	// Clients are told to ping at a third of it. Zero: 30s.
	IdleTimeout time.Duration
	// TCPPark is how long a TCP registration's reader waits for a frame
	// to begin before it parks (Linux: its goroutine ends until the
	// connection has bytes again; tcppark.go). Zero: 100ms; negative:
	// never (a goroutine per TCP registration, blocked in Read).
	TCPPark time.Duration
	// HandshakeTimeout bounds a new connection's TLS handshake and its
	// REGISTER frame. Zero: 10s.
	HandshakeTimeout time.Duration
	// RememberOffline is how long a peer that disconnected is reported as
	// offline (ErrPeerOffline) rather than unknown (ErrUnknownPeer), and at
	// most 4×MaxPeers such peers are remembered. Zero: 24h.
	RememberOffline time.Duration
	// Protocols serves other protocols on the server's ports, by ALPN (the
	// relay: relay.ALPN): a QUIC or TLS connection that negotiated one of
	// them is handed over once its handshake is done. QUIC connections
	// then have DATAGRAM frames (RFC 9221) enabled. Nil: signalling only.
	Protocols map[string]Protocol
	// TLSPort is one more TCP port that StartServer opens for TLS
	// (signalling and Protocols), typically 443, which UDP-blocking
	// firewalls let through; the connect string then names it (tcp=). If it
	// cannot be bound, StartServer logs a warning and goes on without it.
	// Zero: none.
	TLSPort uint16
	// Certificate is presented on the TCP ports to TLS clients that offer
	// none of reach's ALPNs (ALPN and the Protocols' ones, which always
	// get the self-signed certificate of Key that connect strings pin):
	// for HTTPS-based transports through proxies and for browsers. Such
	// clients need not present a certificate. Nil: the key's certificate
	// for everyone.
	Certificate *tls.Certificate
	// GetCertificate, if set, replaces Certificate: it is asked at every
	// such handshake (a certificate reloaded when its files change).
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// CertificateALPNs are more ALPN protocols offered to the clients
	// that get Certificate or GetCertificate: "acme-tls/1" for ACME's
	// TLS-ALPN-01 challenge. Such connections end after the handshake.
	CertificateALPNs []string
	// Limits are the per-source limits: rates of new connections,
	// registrations, introductions and STUN per source address (IPv4, or
	// IPv6 /64) and per peer ID, QUIC Retry under load, and caps on
	// handshakes in progress. Zero: on, with their defaults (see
	// LimitConfig); Limits.Disable turns them off.
	Limits LimitConfig
	// Supernodes configures the registry of volunteers (dial-back,
	// re-checks, how many per introduction). Zero: on, with its defaults.
	Supernodes SupernodeConfig
	// DisableWebSocket turns off WebSocket on the TCP ports. Zero: TLS
	// clients that negotiate http/1.1 (HTTPS through proxies that pass
	// only HTTP) may open a WebSocket on PathSignal or PathRelay, which
	// then carries what the TCP port carries (see WebSocketDialer).
	DisableWebSocket bool
	// AltSTUNPort is a second UDP port, on the same address, that answers
	// STUN binding requests only; binding responses on the main port name
	// it (OTHER-ADDRESS, RFC 5780), so that a client with one server learns
	// whether its NAT's mapping depends on the destination (reach
	// netcheck). Zero: the main port + 1 (any free port when the main port
	// is picked at random). StartServer warns and goes on without it if it
	// cannot be bound. DisableAltSTUN turns it off.
	AltSTUNPort    uint16
	DisableAltSTUN bool
	// PublicAddrs are the addresses StartServer advertises, in this order,
	// instead of guessing from the listen address and the interfaces
	// (AdvertiseAddr): for a server behind a 1:1 NAT (a cloud's public IP)
	// or a load balancer. Each yields a connect string (ConnectStrings; the
	// first is ConnectString); a zero port means the bound UDP port. The
	// first of each family is the OTHER-ADDRESS of STUN answers to that
	// family. Nil: guess.
	PublicAddrs []netip.AddrPort
	// DisableFlights turns off first flights (FLIGHT frames: the first
	// packets of a QUIC handshake between two peers, relayed with their
	// introduction, at most MaxFlightPackets each way). Zero: relayed;
	// without them a punched session's first byte takes one more round
	// trip.
	DisableFlights bool
	// DisableGRO reads the UDP socket a datagram per message. Zero: on
	// Linux the socket asks the kernel for UDP GRO (a sender's run of
	// same-size datagrams read as one message and split again here), which
	// cuts the relay's read cost per forwarded packet; the option is for
	// comparisons and for kernels whose GRO misbehaves.
	DisableGRO bool
	// Registry joins the server to a fleet that shares registrations and
	// introductions (docs/architecture.md, "Fleet"; rendezvous/fleet has
	// the Redis one). Serve runs it. Nil: this server's peers only, in
	// memory.
	Registry Registry
	// Codes configures the short-code mailbox (CODE frames: package
	// shortcode). Zero: on, with its defaults (see CodeConfig).
	Codes CodeConfig
	// Park lets idle registrations over QUIC leave their connection and
	// live on as keepalive datagrams (ParkConfig). Zero: on, parking
	// registrations idle for 60 s; Park.After < 0 turns it off.
	Park ParkConfig
}

// Protocol serves connections that negotiated another ALPN than ALPN on a
// server's ports. The methods return when the connection is done; they
// must close it, and return promptly once ctx ends.
type Protocol interface {
	ServeQUIC(ctx context.Context, conn *quic.Conn)
	ServeTLS(ctx context.Context, conn *tls.Conn)
}

// DatagramProtocol is a Protocol that also takes datagrams of its own on
// the server's UDP port (a relay's data packets): Serve calls
// ServeDatagrams once with the server's socket, and stop when it returns.
type DatagramProtocol interface {
	Protocol
	ServeDatagrams(sock PacketSocket) (stop func())
}

// PacketSocket is a server's UDP socket as a DatagramProtocol sees it.
type PacketSocket interface {
	// Intercept hands h the datagrams from from (the zero AddrPort: any
	// source) whose first byte is first (below 0x40: not QUIC), on the
	// socket's read loop, before QUIC sees them. h returns 0 when it took
	// the datagram (it must not block or keep b); remove takes h away.
	Intercept(first byte, from netip.AddrPort, h func(b []byte, from netip.AddrPort) (int, netip.AddrPort)) (remove func())
	// WriteToUDPAddrPort sends a datagram from the socket.
	WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error)
	// WriteSegments sends b as datagrams of seg bytes each (the last may
	// be shorter), in as few system calls as the kernel allows (GSO).
	WriteSegments(b []byte, seg int, to netip.AddrPort) error
}

func (c ServerConfig) withDefaults() ServerConfig {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxPeers, 100000)
	def(&c.MaxFrameSize, 16384)
	c.MaxFrameSize = min(c.MaxFrameSize, maxFrameBody)
	def(&c.MaxCandidates, 32)
	def(&c.MaxPendingIntros, 16)
	def(&c.MaxIncomingIntros, sendQueueLen/2)
	defD(&c.IntroTimeout, 10*time.Second)
	defD(&c.IdleTimeout, 30*time.Second)
	defD(&c.HandshakeTimeout, 10*time.Second)
	defD(&c.TCPPark, 100*time.Millisecond)
	defD(&c.RememberOffline, 24*time.Hour)
	c.Park = c.Park.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
