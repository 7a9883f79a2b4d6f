package relay

import (
	"log/slog"
	"time"

	"github.com/reachp2p/reach/identity"
)

// Defaults of ServerConfig's limits (issue 15; docs/security.md, Relay).
// Each is what a zero field means.
const (
	// DefaultMaxLinksPerIP is how many peers may be linked at once from
	// one IPv4 address or one IPv6 /64. Generous for carrier NATs (many
	// customers behind one address), small against one host that opens
	// links under fresh keys to fill the relay.
	DefaultMaxLinksPerIP = 64
	// DefaultMaxSessionsPerPeer is how many destinations one peer may
	// send to through the relay at once.
	DefaultMaxSessionsPerPeer = 256
	// DefaultMaxSessionsPerIP is how many sessions the peers linked from
	// one IPv4 address or IPv6 /64 may have at once, all together: one
	// source holds at most a tenth of the default MaxSessions.
	DefaultMaxSessionsPerIP = 1024
	// DefaultPeerRate is what one peer may send through the relay, in
	// bytes per second: 64 MiB/s (about 540 Mbit/s). An honest relayed
	// transfer reached 43 MB/s on loopback and 26-37 MB/s in the lab
	// (docs/benchmarks.md), so the default does not slow one down; a
	// flooding peer gets no more than this.
	DefaultPeerRate = 64 << 20
	// DefaultTotalRate is what all peers together may send through the
	// relay, in bytes per second: 256 MiB/s (about 2.1 Gbit/s), more than
	// a small server's uplink and CPU forward (set it to yours).
	DefaultTotalRate = 256 << 20
	// MinPacketCost is the least a packet counts against PeerRate and
	// TotalRate, in bytes: a flood of tiny packets is limited in packets
	// too (DefaultPeerRate/MinPacketCost = 262,144 packets per second),
	// while a relayed QUIC session's 1200-byte packets count as they are.
	MinPacketCost = 256
	// PermissionLifetime is how long a peer's consent to receive from
	// another lasts (an ALLOW, or a packet it sent to that peer) without
	// being renewed; as TURN's permissions (RFC 8656 §9). A session's
	// own packets in the other direction keep it alive.
	PermissionLifetime = 5 * time.Minute
	// maxPermissions is how many peers one link may have consented to
	// at once; further ALLOWs are ignored until some expire.
	maxPermissions = 1024
)

// ServerConfig configures a relay Server. Every zero value is usable and
// means the default named beside it; where a negative value is allowed it
// means no limit.
type ServerConfig struct {
	// Secrets are the token secrets. Empty: no token is required. With
	// secrets, a client must present a token (NewToken) made with any one
	// of them, so a secret is rotated by adding the new one first, issuing
	// tokens with it, and removing the old one once its tokens expired.
	// A link ends when its token expires (ERROR token_expired; the client
	// links again at once with a fresh token).
	Secrets [][]byte
	// MaxClients is how many peers may be connected at once; one more gets
	// ERROR full (ErrRelayFull). Zero: 100000.
	MaxClients int
	// MaxLinksPerIP is how many peers may be linked at once from one IPv4
	// address or one IPv6 /64; one more gets ERROR rate_limited
	// (ErrRateLimited). Zero: DefaultMaxLinksPerIP. Negative: no limit.
	MaxLinksPerIP int
	// MaxSessions is how many relay sessions may exist at once. A session
	// is an ordered pair of peers (from, to) that sent a packet within
	// SessionIdle. In a full table, a packet that would open one more
	// takes the place of the least recently used session of the biggest
	// holder (network, then source: fair.go) if its own network or
	// source holds at least two fewer; otherwise it is dropped and its
	// sender gets a NOTICE session_limit (ErrRelayFull). Zero: 10000.
	MaxSessions int
	// MaxSessionsPerPeer is how many sessions one peer may send on at
	// once (its destinations); beyond it, as beyond MaxSessions. Zero:
	// DefaultMaxSessionsPerPeer. Negative: no limit.
	MaxSessionsPerPeer int
	// MaxSessionsPerIP is how many sessions the peers linked from one IPv4
	// address or IPv6 /64 may send on at once, together; beyond it, as
	// beyond MaxSessions. Zero: DefaultMaxSessionsPerIP. Negative: no
	// limit.
	MaxSessionsPerIP int
	// SessionIdle is how long a session lasts without packets. Zero: 60s
	// (relayed QUIC sessions send keep-alives every 10s).
	SessionIdle time.Duration
	// PeerRate limits what one peer may send through the relay, in bytes
	// per second, each packet counting as at least MinPacketCost (the
	// excess is dropped, which QUIC's congestion control reads as loss).
	// Zero: DefaultPeerRate. Negative: no limit.
	PeerRate int
	// PeerBurst is the bucket size of PeerRate in bytes. Zero: PeerRate/4
	// (250 ms at full rate), at least 64 KiB.
	PeerBurst int
	// ConnRate limits new links per second from one IPv4 address or IPv6
	// /64; more are refused with ERROR rate_limited (ErrRateLimited).
	// Zero: 10 per second. Negative: no limit.
	ConnRate float64
	// ConnBurst is the number of links an IP address may open at once
	// before ConnRate applies. Zero: 20.
	ConnBurst int
	// SendQueue is how many packets may wait for one peer's link; more are
	// dropped. Zero: 512.
	SendQueue int
	// IdleTimeout closes a link that sends nothing for this long (QUIC idle
	// timeout; TCP read deadline). Clients are told to ping at a third of
	// it. Zero: 30s.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds a new link's HELLO. Zero: 10s.
	HandshakeTimeout time.Duration
	// TLSPark is how long a TLS link's read loop waits for a frame
	// before it hands the connection to the server's watcher and ends
	// (Linux, TCP connections): an idle TLS link then has no goroutine;
	// the watcher starts a read loop again when the connection has
	// something to read, and the sweep ends it after IdleTimeout.
	// Zero: 100ms. Negative: never (a read loop per link while it lives).
	TLSPark time.Duration
	// QUICLinks keeps every UDP link on its QUIC connection while it
	// lives. False (the default): a UDP link whose data packets work
	// detaches once set up (docs/protocol.md, "Detached links"): its QUIC
	// connection closes and the link lives on as data packets, so an idle
	// link costs the relay about 1 KB instead of a QUIC connection
	// (~90 KB). A supernode sets it: its links' short QUIC idle timeout is
	// how both ends notice a vanished volunteer.
	QUICLinks bool
	// TotalRate limits what all peers together may send through the
	// relay, in bytes per second, counted as PeerRate is (the excess is
	// dropped). Its bucket is TotalRate/4, at least 64 KiB. Zero:
	// DefaultTotalRate. Negative: no limit.
	TotalRate int
	// Authorize, if set, decides instead of Secrets whether a peer may
	// link: it gets the peer's proved ID and the token of its HELLO ("" for
	// none) and returns the token's expiry (zero: the link never expires)
	// and nil to admit it, or an error to refuse it (ErrTokenExpired is
	// sent as token_expired, anything else as bad_token). A supernode
	// uses it for its allow-list and for tokens its rendezvous servers
	// issued. At the expiry the link ends as with Secrets, or narrows
	// (KeepSessionsPastExpiry). Nil: Secrets decide.
	Authorize func(peer identity.PeerID, token string) (expiry time.Time, err error)
	// KeepSessionsPastExpiry: at its token's expiry a link does not end
	// at once but lives on while it has sessions; it opens no new
	// session with a peer whose token expired too (each new session
	// needs one end that a token vouches for now), and ends (ERROR
	// token_expired) once it has no session left. For a supernode, whose
	// peers get tokens only with introductions: a relayed session outlives
	// its token, an idle or hostile link does not. False: the link ends at
	// the expiry (its client links again with a fresh token).
	KeepSessionsPastExpiry bool
	// MaxStreams is how many relayed streams (docs/protocol.md, "Relayed
	// streams": a byte stream between two peers linked over TLS or
	// WebSocket) may be open at once, all peers together; an OPEN beyond
	// it is refused (the opener gets ErrRelayFull and relays QUIC packets
	// instead). The relay holds at most its receiver's window of each
	// stream's bytes each way (StreamWindow, 2 MiB by default; 4 MiB at
	// most).
	// Zero: DefaultMaxStreams. Negative: no relayed streams (WELCOME does
	// not offer them).
	MaxStreams int
	// MaxStreamsPerPeer is how many relayed streams one peer may have
	// open at once, opened or accepted. Zero: DefaultMaxStreamsPerPeer.
	MaxStreamsPerPeer int
	// MaxStreamsPerIP is how many relayed streams the peers linked from
	// one IPv4 address or IPv6 /64 may be ends of at once, together (a
	// stream between two of them counts twice), so that one source
	// cannot take every stream of MaxStreams. Zero:
	// DefaultMaxStreamsPerIP. Negative: no limit.
	MaxStreamsPerIP int
	// Logger receives the server's logs. Nil: discard.
	Logger *slog.Logger
}

// Defaults of relayed streams (ServerConfig.MaxStreams,
// MaxStreamsPerPeer): at most 256 × 2 × 4 MiB held for slow receivers
// (4 MiB a stream each way).
const (
	DefaultMaxStreams        = 256
	DefaultMaxStreamsPerPeer = 8
	DefaultMaxStreamsPerIP   = 32
)

func (c ServerConfig) withDefaults() ServerConfig {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.MaxClients <= 0 {
		c.MaxClients = 100000
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 10000
	}
	if c.SendQueue <= 0 {
		c.SendQueue = 512
	}
	if c.ConnBurst <= 0 {
		c.ConnBurst = 20
	}
	def(&c.MaxLinksPerIP, DefaultMaxLinksPerIP)
	def(&c.MaxStreams, DefaultMaxStreams)
	def(&c.MaxStreamsPerIP, DefaultMaxStreamsPerIP)
	if c.MaxStreamsPerPeer <= 0 {
		c.MaxStreamsPerPeer = DefaultMaxStreamsPerPeer
	}
	def(&c.MaxSessionsPerPeer, DefaultMaxSessionsPerPeer)
	def(&c.MaxSessionsPerIP, DefaultMaxSessionsPerIP)
	def(&c.PeerRate, DefaultPeerRate)
	def(&c.TotalRate, DefaultTotalRate)
	defD(&c.SessionIdle, 60*time.Second)
	defD(&c.IdleTimeout, 30*time.Second)
	defD(&c.HandshakeTimeout, 10*time.Second)
	if c.TLSPark == 0 {
		c.TLSPark = 100 * time.Millisecond
	}
	if c.ConnRate == 0 {
		c.ConnRate = 10
	}
	if c.PeerRate > 0 && c.PeerBurst <= 0 {
		c.PeerBurst = max(c.PeerRate/4, 64<<10)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
