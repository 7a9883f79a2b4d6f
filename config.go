package reach

// The node's configuration: Config and the limits it holds.

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/holepunchtcp"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/stream"
)

// Config configures a Node. The zero value is usable for a node that only
// accepts direct connections; set Servers to find peers by ID.
type Config struct {
	// Key is the node's identity. Nil: a fresh random key, so the peer ID
	// changes on every run.
	Key *identity.Key
	// Servers are rendezvous connect strings ("reach://ID@host:port"),
	// tried in order with failover. Empty: no rendezvous; Dial fails with
	// ErrNoServers (unless LAN).
	Servers []string
	// LAN, for a node without Servers, announces the node on its local
	// networks by multicast DNS and makes Dial find peers there: it
	// resolves the peer ID on the link (ErrNotOnLAN if nobody answers
	// before ctx ends) and dials the addresses found directly
	// (StrategyDirect), the peer's key pinned as always. See lan.go and
	// docs/architecture.md. Zero: off (no multicast at all).
	LAN bool
	// ListenAddr is the local UDP address of the node's one socket. Zero:
	// all interfaces (IPv4 and IPv6), a random port.
	ListenAddr netip.AddrPort
	// Strategies restricts the ladder of this node's dials, by name
	// (StrategyDirect, StrategyHolepunch, ...; Strategies lists them all);
	// the ladder's order stays. It does not change what the node does for
	// peers that dial it. Empty: every rung.
	Strategies []string
	// HeadStart is how long a rung runs alone before the next one in the
	// ladder starts, for rungs whose own head start is not longer (a
	// failure starts the next at once). Zero: 20ms.
	HeadStart time.Duration
	// PunchLinger is how long the listening side keeps sending punch
	// packets after an introduction. Zero: 15s.
	PunchLinger time.Duration
	// PunchLimits bound the punch packets other peers' introductions make
	// the node send. Zero fields: the defaults (see PunchLimits).
	PunchLimits PunchLimits
	// Accept decides, for each introduction, whether the node answers the
	// dialling peer: false refuses it (the dialler's DialSession fails with
	// rendezvous.ErrRejected) and no rung acts on it (no punch packets, no
	// relay link, no TURN permission). It runs on the goroutine that
	// serves introductions, so it must return quickly. Nil: accept every
	// peer.
	Accept func(peer PeerID) bool
	// Session tunes QUIC sessions (keepalive, windows, timeouts).
	Session stream.Config
	// AcceptQueue is how many incoming streams may wait for Accept; more
	// are refused unread (the peer gets stream.ErrPeerRefused). Zero: 64.
	AcceptQueue int
	// ForceTCPSignalling reaches rendezvous servers over TCP+TLS only.
	ForceTCPSignalling bool
	// DialTCP opens the node's TCP connections (the signalling fallback).
	// Nil: a net.Dialer.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// RunInNetwork runs f where the node's sockets belong (a network
	// namespace, say): the TCP sockets hole punching binds to the node's
	// listening port are created inside it. Nil: f runs as it is.
	RunInNetwork func(f func() error) error
	// Proxy is an HTTP CONNECT proxy (http://[user:password@]host:port;
	// user information becomes Basic proxy authentication) for the node's
	// TCP connections to its servers: signalling over TLS and the relay's
	// TLS and WebSocket links. They are dialled through it (over DialTCP)
	// and never directly; a proxy's 407 is ErrProxyAuth, its 403
	// ErrProxyRefused. Nil: HTTPS_PROXY and NO_PROXY from the environment,
	// as net/http reads them (http.ProxyFromEnvironment), unless
	// IgnoreProxyEnvironment.
	Proxy *url.URL
	// IgnoreProxyEnvironment: with Proxy nil, no proxy at all.
	IgnoreProxyEnvironment bool
	// WebSocketSignalling carries the signalling's TCP fallback in a
	// WebSocket over HTTPS (path /rdv of the server's TCP port), for
	// proxies that pass only HTTP. Zero: TLS directly over TCP.
	WebSocketSignalling bool
	// InterfaceAddrs lists the local addresses that become host
	// candidates; it is called for every offer and answer. Nil:
	// net.InterfaceAddrs.
	InterfaceAddrs func() ([]net.Addr, error)
	// ListenPacket opens the node's helper UDP sockets (the port mapper's
	// SSDP, NAT-PMP and PCP requests; never the node's main socket). Nil:
	// net.ListenPacket.
	ListenPacket func(network, addr string) (net.PacketConn, error)
	// DisablePortMapping turns the port mapper off: no UPnP, NAT-PMP or
	// PCP requests, no mapped candidate. Zero: the node asks its gateway
	// for a mapping of its UDP port while it runs, unless its socket or a
	// server is on a loopback address (a local setup, where no gateway is
	// involved).
	DisablePortMapping bool
	// PortMapping tunes the port mapper (protocols, lease, check and
	// retry intervals). The node fills in Port, the socket hooks and the
	// Logger. Zero: PortMappingConfig's defaults.
	PortMapping PortMappingConfig
	// RelayToken returns the token for relays that require one
	// (relay.NewToken, from the relay operator); it is called for every
	// link to a relay. Nil: no token.
	RelayToken func() string
	// RelayDialers are the transports of the link to the relay, raced in
	// order (relay.ClientConfig.Dialers); a relay.TLSDialer or
	// relay.WSDialer without DialTCP gets the node's (DialTCP, through
	// Proxy). Nil: UDP from the node's socket, then TLS over TCP, then
	// WebSocket over HTTPS (through Proxy, if any).
	RelayDialers []relay.LinkDialer
	// DisableRelayStreams keeps relayed sessions on QUIC over relayed
	// packets even when both peers' links to the relay are byte streams
	// (TLS, WebSocket, a proxy tunnel). By default such a pair runs
	// TLS+yamux over a relayed stream (docs/protocol.md, "Relayed
	// streams"): faster from its first second, since TCP's congestion
	// control is the only one on the path, but it stays on the relay for
	// its life and ends if either node's link to the relay breaks, where
	// a QUIC session would move to a direct path or a new link.
	DisableRelayStreams bool
	// RelayDelay is how long after a dial starts the forwarding rungs
	// (supernode, TURN, relay) join the race while the rungs before them
	// are still trying (at once if they have all failed). Zero: twice the
	// time the introduction took plus 150ms, at least 400ms and at most
	// DefaultRelayDelay (1s): the peer-to-peer rungs finish within about
	// two round trips when they can work at all. Longer, up to 2s, when
	// holepunch's birthday mode runs for the dial (a random symmetric NAT
	// facing a cone: its 700 probes take 0.7s). At most 250ms when either
	// side registered over TCP, as UDP is then likely blocked.
	RelayDelay time.Duration
	// UpgradeInterval is the first pause between background attempts to
	// find a better path for a relayed session (the first attempt starts
	// at once; pauses double up to 10 min). Zero: DefaultUpgradeInterval
	// (30s). Negative: no background attempts.
	UpgradeInterval time.Duration
	// TURN are standard TURN servers (coturn, ...) to relay through, for
	// operators who already run TURN: the node allocates a relayed address
	// on the first that grants one (in the background from New, released
	// on Close) and advertises it, and the StrategyTURN rung, right before
	// StrategyRelay, runs the session between the two peers' allocations.
	// Nil: no TURN (the rung sits out).
	TURN []TURNServer
	// OnPathEvent is called (from the node's goroutines; it must not
	// block) when a session goes through the relay and when the node
	// tries, fails or manages to find a better path. Nil: events are only
	// logged.
	OnPathEvent func(PathEvent)
	// TCPLimits bound the node's TCP listener (StrategyDirectTCP), which
	// accepts TLS+yamux sessions on the port number of its UDP socket (any
	// port when that one is taken): connections in their handshake at
	// once, from one IP address, the time each has to prove a key, and
	// connections back to diallers at once. Zero fields: the defaults.
	TCPLimits TCPLimits
	// TCPPunchLimits bound TCP hole punching (StrategyHolepunchTCP) per
	// introduction: how long each side punches (zero: 5s), connect()
	// calls per side (zero: 16), introductions the listening side
	// punches for at once (zero: 8), the TTL of its first SYN (zero: 2;
	// negative: full TTL).
	TCPPunchLimits TCPPunchLimits
	// Supernode makes the node volunteer as a supernode for peers that
	// cannot punch through, with limits (pairs at once, bandwidth, whom
	// for); see Node.Status and WaitSupernode. Zero: it does not
	// volunteer (it still uses volunteers: StrategySupernode).
	Supernode SupernodeConfig
	// Logger receives the node's logs. Nil: discard.
	Logger *slog.Logger
}

// PunchLimits bound what introductions make a node send: a peer that
// knows the node's ID can ask it to punch towards any addresses it lists,
// so the listening side filters them (never loopback outside a
// one-machine setup, multicast, unspecified, link-local or broadcast
// addresses; its own LAN only for a dialler a server saw on that LAN) and
// counts what it sends. An introduction over a limit is still answered
// (the other rungs may carry the session) but gets no punch packets.
// Zero fields take the defaults.
type PunchLimits struct {
	// MaxAttempts: listener-side punch attempts running at once.
	// Zero: 16.
	MaxAttempts int
	// PerPeer: introductions from one dialler (peer ID) punched for per
	// minute (a token bucket). Zero: 10.
	PerPeer int
	// AttemptPackets: pings one listener-side attempt sends over its
	// life, all addresses together; an address silent after the first 2
	// seconds gets no more. Zero: 300.
	AttemptPackets int
	// PacketsPerSecond: punch packets of the node, all attempts together
	// (dialling side included). Zero: 500.
	PacketsPerSecond int
	// MaxAddrs: addresses of the other peer one attempt checks.
	// Zero: 8.
	MaxAddrs int
	// PredictPorts: when the other peer's symmetric NAT allocates ports
	// in sequence, how many of its next ports one attempt punches
	// besides its addresses (port prediction; within AttemptPackets and
	// PacketsPerSecond), at most 16. Zero: 12; negative: no prediction.
	PredictPorts int
	// BirthdaySockets: when this node's symmetric NAT allocates ports at
	// random and the other peer's NAT maps independently of the
	// destination, how many helper sockets (NAT mappings) one attempt
	// opens towards the peer (the birthday mode, one attempt per node at
	// a time), at most 256 and the file-descriptor headroom. Zero: 256;
	// negative: no birthday mode, either side.
	BirthdaySockets int
	// BirthdayProbes: in the converse case, how many random ports of the
	// peer's public address one attempt probes, 1 ms apart, at most 768
	// and 1,000 minus AttemptPackets. Zero: 700; negative: none.
	BirthdayProbes int
}

// TCPPunchLimits bound TCP hole punching (Config.TCPPunchLimits).
type TCPPunchLimits = holepunchtcp.Limits

// TCPLimits bound the node's TCP listener: what unauthenticated
// connections make it keep. Zero fields take the defaults.
type TCPLimits struct {
	// MaxPending: connections in their TLS handshake at once; more are
	// closed as they are accepted. Zero: 64.
	MaxPending int
	// MaxPendingPerIP: such connections from one IP address. Zero: 8.
	MaxPendingPerIP int
	// HandshakeTimeout: the time an accepted connection has to complete
	// its handshake (at most Session.HandshakeTimeout). Zero: 5s.
	HandshakeTimeout time.Duration
	// MaxReversals: connections back to introduced diallers running at
	// once (when UDP looks blocked and only the dialler's TCP listener
	// can be reached, the listener connects to it). Zero: 8.
	MaxReversals int
}
