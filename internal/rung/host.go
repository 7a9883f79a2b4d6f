package rung

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// Rung is one way to reach a peer, and everything its node does for it.
// A rung's folder implements it; the node calls it in this order:
//
//   - Handlers and Signalling while the node sets up (before its listener
//     and its rendezvous client exist),
//   - Start once the rendezvous client exists, before the node registers,
//     then Ready after it registered,
//   - Candidates for every offer and answer, Offer on the dialling side
//     for each dial whose ladder holds the rung, Introduced on the
//     listening side for every introduction (whatever the dialler's
//     ladder), Plan and Connect in a dial,
//   - Close when the node closes.
//
// Embed Base for the hooks a rung does not need.
type Rung interface {
	// Name is the rung's name in Config.Strategies, logs and
	// Session.Strategy, e.g. "direct".
	Name() string

	// Connect tries to make a session with a.Peer. It must return
	// promptly once ctx is done (with an error wrapping ctx.Err() if it
	// gave up because of it), and must close everything it opened unless
	// it returns a session: on error the session is nil, and on success
	// the caller owns the session. Connect must be safe to call
	// concurrently with other rungs' Connect on the same Attempt.
	Connect(ctx context.Context, a *Attempt) (*stream.Session, error)

	// Handlers returns the ALPN protocols the rung serves on the node's
	// own QUIC listener, beside reach sessions. Nil: none.
	Handlers() map[string]func(*quic.Conn)
	// Signalling adds the rung's part to the rendezvous client's
	// configuration (not called without servers).
	Signalling(cfg *rendezvous.ClientConfig)
	// Start starts what the rung runs for the whole life of the node.
	// ctx bounds this setup only; work that outlives it runs on
	// Host.Context with Host.Go.
	Start(ctx context.Context) error
	// Ready waits, bounded by ctx, for what the node should have before
	// New returns (a port mapping a LAN gateway grants in milliseconds).
	Ready(ctx context.Context)
	// Close stops the rung and releases what it holds at third parties
	// (port mappings, allocations, links). It must also work when Start
	// was never called or failed (a node whose setup failed part way).
	Close()

	// Candidates are the node's addresses this rung advertises, in every
	// offer and answer.
	Candidates() []candidate.Candidate
	// Offer prepares the dialling side of one dial before the node asks
	// for the introduction: it may add to the offer and start listening
	// for the peer's first packets. release, if not nil, is called when
	// the dial's race is over.
	Offer(ctx context.Context, offer *candidate.PeerInfo) (release func())
	// Introduced does the listening side's part when a dialler's offer
	// arrives (it must not block: work runs with Host.Go).
	Introduced(offer candidate.PeerInfo)
	// Plan adapts the rung's place in one dial once the peer answered:
	// it returns the head start to use (headStart is the table's) and
	// false when the rung cannot help this dial and should not run (so it
	// does not start the next rung early by failing at once).
	Plan(a *Attempt, headStart time.Duration) (time.Duration, bool)
}

// Forwarder is a forwarding rung that can carry a session born on a
// direct path when that path goes silent: ForwardPath readies its link
// and returns the path to peer on the node's socket.
type Forwarder interface {
	ForwardPath(ctx context.Context, peer identity.PeerID) (pathsock.Path, error)
}

// Validator is a rung that can prove a direct path to a peer without
// opening a session: the node uses it to move an existing session (one on
// a forwarded path, say) onto that path (docs/architecture.md, "After the
// relay"). Validate returns the address that answered; the node's
// PathHeard hook has seen it first.
type Validator interface {
	Validate(ctx context.Context, a *Attempt) (netip.AddrPort, error)
}

// Expecter is a rung whose sessions may be opened by the peer being
// dialled (a connection reversal: the peer connects back to this node
// when only this node can be reached). Expect tells it, before the
// introduction is sent, that the node dials peer, so that a session the
// peer opens from then on is kept for this dial's Connect rather than
// handed to the node; release, called when the dial's race is over,
// closes any such session Connect did not take.
type Expecter interface {
	Expect(peer identity.PeerID) (release func())
}

// Patient is a peer-to-peer rung that on some dials needs longer than
// the adaptive forwarding delay (ForwardDelay) to finish: Patience returns
// how long after the dial starts the forwarding rungs should join at the
// earliest (0: no wish), given a and how long its introduction took. The
// node honours it only when the forwarding delay is not configured
// (Config.RelayDelay), and never when a side's UDP looks blocked.
type Patient interface {
	Patience(a *Attempt, intro time.Duration) time.Duration
}

// Base implements every hook of Rung but Name and Connect as doing
// nothing; rungs embed it.
type Base struct{}

func (Base) Handlers() map[string]func(*quic.Conn)                   { return nil }
func (Base) Signalling(*rendezvous.ClientConfig)                     {}
func (Base) Start(context.Context) error                             { return nil }
func (Base) Ready(context.Context)                                   {}
func (Base) Close()                                                  {}
func (Base) Candidates() []candidate.Candidate                       { return nil }
func (Base) Offer(context.Context, *candidate.PeerInfo) func()       { return nil }
func (Base) Introduced(candidate.PeerInfo)                           {}
func (Base) Plan(_ *Attempt, hs time.Duration) (time.Duration, bool) { return hs, true }

// Host is what a node lends its rungs. Every field is set by the node;
// function fields are safe for concurrent use.
type Host struct {
	// Key is the node's key.
	Key *identity.Key
	// Socket is the node's one UDP socket.
	Socket *sock.Socket
	// Session configures the node's sessions.
	Session stream.Config
	// Logger receives the rung's logs.
	Logger *slog.Logger
	// Context ends when the node closes; Go runs f on a goroutine the
	// node waits for in Close.
	Context context.Context
	Go      func(f func())
	// Signalling: the node has rendezvous servers (without them it only
	// accepts direct sessions and dials nothing).
	Signalling bool
	// Local: the node runs on one machine with its servers (a server or
	// its socket on loopback): loopback addresses are advertised and no
	// gateway is involved.
	Local bool
	// InterfaceAddrs lists the node's interface addresses.
	InterfaceAddrs func() ([]net.Addr, error)
	// ListenPacket opens helper UDP sockets (never the node's own).
	ListenPacket func(network, addr string) (net.PacketConn, error)
	// DialTCP opens TCP connections on the local network (a gateway);
	// DialServer opens them to the node's servers (through the proxy, if
	// any). Nil DialTCP: a net.Dialer.
	DialTCP, DialServer func(ctx context.Context, network, addr string) (net.Conn, error)
	// RunInNetwork runs f where the node's sockets are created (its
	// network namespace). Nil: f runs as it is.
	RunInNetwork func(f func() error) error
	// Server is the rendezvous server the node is registered with now
	// (zero while it has none).
	Server func() rendezvous.ServerAddr
	// Servers are the servers the node knows, in the order it tries
	// them (its first registration goes to the first that answers). Nil:
	// none.
	Servers func() []rendezvous.ServerAddr
	// Observed is the node's public UDP address as its server sees it
	// (invalid without one, or over TCP).
	Observed func() netip.AddrPort
	// Self is how the node's NAT maps its socket, as the node measured
	// it (candidate.MappingIndependent, MappingVaries, "" unknown), and
	// how it allocates ports (nil: unknown), as its offers and answers
	// say. Nil: unknown.
	Self func() (mapping string, ports *candidate.PortAllocation)
	// ServerRTT is the round-trip time to that server (zero: unknown).
	// Nil: unknown.
	ServerRTT func() time.Duration
	// Accepted hands the node a session a peer opened on a transport the
	// rung owns (a relay link, an allocation): the node tracks it and
	// queues its streams for Accept. It reports false (and the rung
	// closes the session) when the node is closing.
	Accepted func(sess *stream.Session) bool
	// Event reports what happens to a peer's path.
	Event func(Event)
	// PathHeard tells the node that peer reached it from addr with an
	// authenticated check (confirmed false), or answered its check there
	// (confirmed true: addr works both ways), so a session with the peer
	// may move to addr. It runs on the socket's read goroutine and must
	// not block. Nil: nobody listens.
	PathHeard func(rung string, peer identity.PeerID, addr netip.AddrPort, confirmed bool)
	// ListenerPunch counts the outcome of a hole punch the node ran as
	// the listening side of an introduction (holepunch.Outcome*), once
	// per punch, as soon as it is known. It must not block. Nil: not
	// counted.
	ListenerPunch func(outcome string)
	// Rescue asks the node to give the sessions with peer at key (a
	// virtual address of the node's socket) a forwarded path from a rung
	// other than the one named lost, whose path to the peer died (a
	// volunteer vanished). It blocks until the path is ready or the node
	// gave up; true: the sessions move there and need not be closed. Nil:
	// no rescue.
	Rescue func(peer identity.PeerID, key netip.AddrPort, lost string, why error) bool
}

// EventKind says what happened to a peer's path.
type EventKind string

// Event reports what the node does about a peer's path.
type Event struct {
	Peer     identity.PeerID
	Kind     EventKind
	Strategy string          // the rung of Session
	Session  *stream.Session // when the event concerns one session
	Path     netip.AddrPort  // the direct address a session moved to
	Err      error           // why, for failures and losses
}
