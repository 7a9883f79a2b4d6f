// Package reach connects two programs across NATs, firewalls and proxies
// and hands back an encrypted, multiplexed, reliable net.Conn.
//
// A Node owns one UDP socket, registers its peer ID with one or more
// rendezvous servers, and offers Dial (a stream to a peer), DialSession
// (the session, to open and accept more streams) and Accept (incoming
// streams). Dial races the rungs of the connectivity ladder (direct,
// direct over TCP, a port mapping the peer's gateway granted, hole
// punching, a volunteer supernode, TURN, the hosted relay) and keeps the
// first session whose TLS 1.3 handshake proved the dialled key. Node.Status reports what each
// rung knows (port mapping, relay link, supernode, TURN).
//
//	node, err := reach.New(ctx, reach.Config{Key: key, Servers: []string{cs}})
//	conn, err := node.Dial(ctx, peerID)
//
// On the other side:
//
//	conn, err := node.Accept(ctx)
//	fmt.Println("stream from", conn.RemoteAddr()) // the remote peer ID
//
// Streams are net.Conn with TCP's semantics (see Node.Dial): Close sends
// what was written, then EOF, without waiting; Node.Close waits until the
// peers have read it, so write, Close the stream, Close the node, exit is
// safe. Abort discards instead.
//
// This package is the API; the rungs live in their own folders and the
// ladder's order in internal/ladder (see docs/architecture.md).
package reach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/directtcp"
	"github.com/reachp2p/reach/internal/holepunch"
	"github.com/reachp2p/reach/internal/ladder"
	"github.com/reachp2p/reach/internal/mdns"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// Named errors. Errors from the rendezvous server (rendezvous.ErrUnknownPeer,
// rendezvous.ErrPeerOffline, rendezvous.ErrNoServer), from TLS pinning
// (identity.ErrWrongPeer) and from the race (*RaceError) come back
// wrapped; test them with errors.Is / errors.As.
var (
	// ErrClosed: the node has been closed.
	ErrClosed = errors.New("reach: node closed")
	// ErrNoServers: the node has no rendezvous server to find peers with.
	ErrNoServers = errors.New("reach: no rendezvous server configured")
	// ErrUnknownStrategy: Config.Strategies names a strategy that does not
	// exist.
	ErrUnknownStrategy = ladder.ErrUnknown
	// ErrSelfDial: a node dialled its own peer ID.
	ErrSelfDial = errors.New("reach: dialling own peer ID")
	// ErrReplaced: another node with the same key (a second process)
	// registered with the server and took this node's place there; this
	// one is offline (Accept and Dial fail with it).
	ErrReplaced = rendezvous.ErrReplaced
)

// Strategy names (Config.Strategies, Session.Strategy), in ladder order.
// Strategies lists them.
const (
	StrategyDirect    = "direct"
	StrategyDirectTCP = "direct-tcp"
	StrategyUPnP      = "upnp"
	StrategyHolepunch = "holepunch"
	// StrategyHolepunchTCP: TCP simultaneous open between the peers'
	// TCP listening ports, where UDP looks blocked on a side.
	StrategyHolepunchTCP = "holepunch-tcp"
	StrategySupernode    = "supernode"
	StrategyTURN         = "turn"
	StrategyRelay        = "relay"
)

// Strategies returns the names of the ladder's rungs, in order.
func Strategies() []string { return ladder.Names() }

// Node is one peer: a key, a UDP socket, rendezvous registrations, the
// rungs of the ladder, and the sessions to other peers. Its methods are
// safe for concurrent use.
type Node struct {
	cfg    Config
	key    *identity.Key
	log    *slog.Logger
	sock   *sock.Socket
	ln     *stream.Listener
	client *rendezvous.Client // nil without servers
	ladder *ladder.Ladder
	lan    *mdns.Responder // Config.LAN without servers (lan.go)

	ctx     context.Context // cancelled by Close once sessions are closed
	cancel  context.CancelFunc
	closing chan struct{} // closed when Close begins
	wg      sync.WaitGroup
	accept  chan *stream.Stream

	mu       sync.Mutex
	sessions map[identity.PeerID][]*stream.Session
	moving   map[identity.PeerID]bool // moveLoop runs for the peer
	// moveLimit paces every peer's searches for a direct path together
	// (moveRate, moveBurst).
	moveLimit *rate.Limiter
	probing   map[identity.PeerID]bool // a probe of the peer's direct path runs (liveness.go)
	closed    bool

	mapping atomic.Value                             // string: how the NAT maps the socket (mapping.go)
	alloc   atomic.Pointer[candidate.PortAllocation] // how it allocates ports, when the mapping varies
	// refreshed: when alloc's newest port was last measured again
	// (time.Time; mapping.go).
	refreshed atomic.Value
	counts    nodeCounts // for Metrics (metrics.go)
	// mapped is closed when the first measurement of mapping is over,
	// whatever it found.
	mapped chan struct{}
}

// New starts a node: it opens the UDP socket, starts the rungs and
// registers with the first rendezvous server that answers. ctx bounds only
// this setup.
func New(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Key == nil {
		k, err := identity.GenerateKey()
		if err != nil {
			return nil, err
		}
		cfg.Key = k
	}
	if cfg.InterfaceAddrs == nil {
		cfg.InterfaceAddrs = net.InterfaceAddrs
	}
	if cfg.AcceptQueue <= 0 {
		cfg.AcceptQueue = 64
	}
	if cfg.Session.Logger == nil {
		cfg.Session.Logger = cfg.Logger
	}
	var servers []rendezvous.ServerAddr
	local := cfg.ListenAddr.Addr().IsLoopback()
	for _, s := range cfg.Servers {
		sa, err := rendezvous.ParseServerAddr(s)
		if err != nil {
			return nil, err
		}
		servers = append(servers, sa)
		if ip, err := netip.ParseAddr(sa.Host); err == nil && ip.IsLoopback() {
			local = true
		}
	}
	n := &Node{cfg: cfg, key: cfg.Key, moveLimit: rate.NewLimiter(moveRate, moveBurst), log: cfg.Logger.With("node", cfg.Key.ID().Short()),
		accept: make(chan *stream.Stream, cfg.AcceptQueue), closing: make(chan struct{}),
		sessions: map[identity.PeerID][]*stream.Session{}}
	var err error
	// A volunteer forwards other peers' packets as a relay does: its socket
	// reads them with UDP GRO (a sender's run in one message), as the
	// server's does. Other nodes read a datagram per message for now
	// (docs/benchmarks.md, "Not done: GRO on every node's socket").
	n.sock, err = sock.Listen(sock.Config{Addr: cfg.ListenAddr, Logger: n.log, GRO: cfg.Supernode.Enable})
	if err != nil {
		return nil, err
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.ladder, err = ladder.Build(n.host(len(servers) > 0, local), n.ladderOptions(), cfg.Strategies)
	if err != nil {
		n.sock.Close()
		return nil, err
	}
	if err := n.start(ctx, servers); err != nil {
		n.Close()
		return nil, err
	}
	n.log.Debug("node up", "id", n.key.ID(), "addr", n.sock.LocalAddr())
	return n, nil
}

// start brings the node up once its rungs exist: the listener (with the
// rungs' protocols), the rungs, the registration, then the rungs' last
// wait.
func (n *Node) start(ctx context.Context, servers []rendezvous.ServerAddr) error {
	handlers := map[string]func(*quic.Conn){}
	for _, r := range n.ladder.All {
		maps.Copy(handlers, r.Handlers())
	}
	var err error
	n.ln, err = stream.ListenWith(n.sock.Transport(), n.key, n.cfg.Session, handlers)
	if err != nil {
		return err
	}
	n.goRun(n.acceptSessions)
	n.goRun(n.watchPaths)
	n.goRun(n.watchInterfaces)
	if len(servers) > 0 {
		cc := rendezvous.ClientConfig{
			Key: n.key, Servers: servers, Transport: n.sock.Transport(),
			ForceTCP: n.cfg.ForceTCPSignalling, DialTCP: n.serverDialTCP(), WebSocket: n.cfg.WebSocketSignalling,
			Candidates: n.candidates, Logger: n.log,
		}
		for _, r := range n.ladder.All {
			r.Signalling(&cc)
		}
		if n.client, err = rendezvous.NewClient(cc); err != nil {
			return err
		}
	}
	for _, r := range n.ladder.All {
		if err := r.Start(ctx); err != nil {
			return fmt.Errorf("reach: starting %s: %w", r.Name(), err)
		}
	}
	if n.client == nil && n.cfg.LAN {
		if err := n.startLAN(); err != nil {
			return err
		}
	}
	if n.client != nil {
		if err := n.client.Start(ctx); err != nil {
			return err
		}
		n.goRun(n.serveIntroductions)
		n.mapped = make(chan struct{})
		n.goRun(func() {
			defer close(n.mapped)
			n.detectMapping()
		})
	}
	for _, r := range n.ladder.All {
		r.Ready(ctx)
	}
	return nil
}

// host is what the node lends its rungs.
func (n *Node) host(signalling, local bool) *rung.Host {
	return &rung.Host{
		Key: n.key, Socket: n.sock, Session: n.cfg.Session, Logger: n.log,
		Context: n.ctx, Go: n.goRun,
		Signalling: signalling, Local: local,
		InterfaceAddrs: n.cfg.InterfaceAddrs, ListenPacket: n.cfg.ListenPacket,
		Self:    func() (string, *candidate.PortAllocation) { return n.Mapping(), n.ports() },
		DialTCP: n.cfg.DialTCP, DialServer: n.serverDialTCP(), RunInNetwork: n.cfg.RunInNetwork,
		Server: func() rendezvous.ServerAddr {
			if n.client == nil {
				return rendezvous.ServerAddr{}
			}
			return n.client.Current()
		},
		Servers: func() []rendezvous.ServerAddr {
			if n.client == nil {
				return nil
			}
			return n.client.Servers()
		},
		Observed: n.Observed,
		ServerRTT: func() time.Duration {
			if n.client == nil {
				return 0
			}
			return n.client.RTT()
		},
		Accepted:      n.accepted,
		Event:         n.event,
		PathHeard:     n.pathHeard,
		ListenerPunch: n.counts.listenerPunch,
		Rescue:        n.rescue,
	}
}

// ladderOptions are the Config fields the rungs read.
func (n *Node) ladderOptions() ladder.Options {
	return ladder.Options{
		HeadStart: n.cfg.HeadStart, PunchLinger: n.cfg.PunchLinger, PunchLimits: holepunch.Limits(n.cfg.PunchLimits),
		DisablePortMapping: n.cfg.DisablePortMapping, PortMapping: n.cfg.PortMapping,
		RelayToken: n.cfg.RelayToken, RelayDialers: n.cfg.RelayDialers, RelayStreams: !n.cfg.DisableRelayStreams,
		TURN: n.cfg.TURN, Supernode: n.cfg.Supernode, TCPLimits: directtcp.Limits(n.cfg.TCPLimits),
		TCPPunchLimits: n.cfg.TCPPunchLimits,
	}
}

func (n *Node) goRun(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// ID returns the node's peer ID.
func (n *Node) ID() PeerID { return n.key.ID() }

// LocalAddr returns the node's UDP socket address.
func (n *Node) LocalAddr() netip.AddrPort { return n.sock.LocalAddr() }

// Observed returns the node's public address as its rendezvous server
// sees it (invalid without servers, or over TCP).
func (n *Node) Observed() netip.AddrPort {
	if n.client == nil {
		return netip.AddrPort{}
	}
	return n.client.Observed()
}

// Server returns the connect string of the rendezvous server the node is
// registered with now, or "" without servers or while it reconnects.
func (n *Node) Server() string {
	if n.client == nil {
		return ""
	}
	if sa := n.client.Current(); !sa.IsZero() {
		return sa.String()
	}
	return ""
}

// Mailbox returns the short-code mailbox of the node's rendezvous
// servers (package shortcode), or nil without servers (its methods then
// return rendezvous.ErrNoMailbox).
func (n *Node) Mailbox() *rendezvous.Mailbox {
	if n.client == nil {
		return nil
	}
	return n.client.Mailbox()
}

// candidates are the node's addresses, advertised in offers and answers
// (the server adds the reflexive one): what each rung advertises.
func (n *Node) candidates() []candidate.Candidate {
	var out []candidate.Candidate
	for _, r := range n.ladder.All {
		out = append(out, r.Candidates()...)
	}
	return out
}

// Close closes the node without losing data: it closes every session as
// Session.Close does (in parallel; each waits at most
// Config.Session.CloseTimeout, stream.DefaultCloseTimeout (10 s) by
// default, until the peer has read what this node wrote on it), then the
// rungs (releasing port mappings, allocations and links), the
// registrations and the socket. Accept returns ErrClosed from the start.
// Its error joins those of sessions the peer did not finish reading in
// time (stream.ErrCloseTimeout). A program that wrote to a stream closes
// its Node (or the Session) before it exits: the data is sent in the
// background, and leaving the process drops what is still on its way.
func (n *Node) Close() error { return n.close(false) }

// Abort closes the node at once: unlike Close it does not wait for peers
// to read what was written; their reads and writes fail with
// stream.ErrPeerAborted.
func (n *Node) Abort() error { return n.close(true) }

func (n *Node) close(abort bool) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	var all []*stream.Session
	for _, ss := range n.sessions {
		all = append(all, ss...)
	}
	n.mu.Unlock()
	close(n.closing)
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range all {
		if abort {
			s.Abort()
			continue
		}
		wg.Go(func() {
			if err := s.Close(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("reach: closing the session with %s: %w", s.RemotePeer().Short(), err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if n.cancel != nil {
		n.cancel()
	}
	if n.client != nil {
		n.client.Close()
	}
	if n.lan != nil {
		n.lan.Close()
	}
	if n.ladder != nil {
		for _, r := range n.ladder.All {
			r.Close()
		}
	}
	if n.ln != nil {
		n.ln.Close()
	}
	errs = append(errs, n.sock.Close())
	n.wg.Wait()
	return errors.Join(errs...)
}

// Accept waits for the next incoming stream from any peer, bounded by
// ctx. The stream's RemoteAddr().String() is the remote peer ID. It
// returns ErrClosed once Close has begun, and an error wrapping
// ErrReplaced once another process with the same key registered with the
// server (this node is offline then: no new peer can find it; sessions
// already open go on). The stream behaves as Dial describes.
func (n *Node) Accept(ctx context.Context) (*Stream, error) {
	select {
	case <-n.closing:
		return nil, ErrClosed
	default:
	}
	var replaced <-chan struct{}
	if n.client != nil {
		replaced = n.client.Replaced()
	}
	select {
	case s := <-n.accept:
		return s, nil
	case <-n.closing:
		return nil, ErrClosed
	case <-replaced:
		select {
		case s := <-n.accept:
			return s, nil
		default:
		}
		return nil, fmt.Errorf("reach: %s is offline: %w", n.ID().Short(), ErrReplaced)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Listener returns the node as a net.Listener (Accept, Close, Addr).
func (n *Node) Listener() net.Listener { return nodeListener{n} }

type nodeListener struct{ n *Node }

func (l nodeListener) Accept() (net.Conn, error) { return l.n.Accept(context.Background()) }
func (l nodeListener) Close() error              { return l.n.Close() }
func (l nodeListener) Addr() net.Addr            { return stream.Addr{Peer: l.n.ID(), Path: l.n.LocalAddr()} }

// Dial connects to peer and opens a stream. ctx bounds the setup only, as
// with net.Dialer: cancelling it later does not affect the stream.
//
// The stream is a net.Conn that behaves like a TCP connection:
//   - Write returns once the data is queued; flow control blocks a writer
//     that is far ahead of the reader.
//   - CloseWrite sends EOF after what was written; reading goes on.
//   - Read returns io.EOF after the peer's CloseWrite or Close and
//     everything it wrote. When the peer aborted the stream or its node
//     (Abort, Ctrl-C in the CLI), Read and Write fail with a *PeerError:
//     errors.Is ErrPeerAborted or ErrPeerInterrupted; when the peer closed
//     while this side was still writing, ErrPeerClosed.
//   - Close returns at once: what was written is still sent, then EOF;
//     what the peer sends from then on is discarded. Like a socket that
//     the kernel goes on sending from, the data needs the node (and the
//     session) to stay up: Node.Close and Session.Close wait until the
//     peer has read it, up to Config.Session.CloseTimeout
//     (stream.DefaultCloseTimeout, 10 s). So the obvious sequence
//     (Write, Close, Node.Close, exit) loses nothing.
//   - Abort (or CloseWithError with a code) discards what is not yet
//     delivered; Node.Abort does that for every stream.
//   - Deadlines work as net.Conn documents.
func (n *Node) Dial(ctx context.Context, peer PeerID) (*Stream, error) {
	sess, err := n.DialSession(ctx, peer)
	if err != nil {
		return nil, err
	}
	return sess.OpenStream(ctx)
}

// Dial connects to peer with a node made for this call from a fresh key
// and the given servers, and returns a stream. Closing the stream closes
// the node, which waits (as Node.Close does) until the peer has read what
// was written. For more than a one-off, make a Node.
func Dial(ctx context.Context, peer PeerID, servers ...string) (net.Conn, error) {
	n, err := New(ctx, Config{Servers: servers})
	if err != nil {
		return nil, err
	}
	c, err := n.Dial(ctx, peer)
	if err != nil {
		n.Close()
		return nil, err
	}
	return &ownedConn{Conn: c, n: n}, nil
}

type ownedConn struct {
	net.Conn
	n    *Node
	once sync.Once
}

func (c *ownedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.n.Close() })
	return err
}
