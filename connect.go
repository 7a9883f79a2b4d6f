// Package reach connects two programs across NATs, firewalls and proxies
// and hands back an encrypted, multiplexed, reliable net.Conn.
//
// A Node owns one UDP socket, registers its peer ID with one or more
// rendezvous servers, and offers Dial (a stream to a peer), DialSession
// (the session, to open and accept more streams) and Accept (incoming
// streams). Dial races the connectivity strategies of the ladder (direct,
// then a port mapping the peer's gateway granted, then hole punching) and
// keeps the first session whose TLS 1.3 handshake proved the dialled key.
// Unless Config.DisablePortMapping is set, a node asks its gateway (UPnP
// IGD, NAT-PMP, PCP) to forward a port to its socket while it runs; see
// Node.PortMapping.
//
//	node, err := reach.New(ctx, reach.Config{Key: key, Servers: []string{cs}})
//	conn, err := node.Dial(ctx, peerID)
//
// On the other side:
//
//	conn, err := node.Accept()
//	fmt.Println("stream from", conn.RemoteAddr()) // the remote peer ID
package reach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/reachp2p/reach/direct"
	"github.com/reachp2p/reach/holepunch"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/strategy"
	"github.com/reachp2p/reach/stream"
	"github.com/reachp2p/reach/supernode"
	"github.com/reachp2p/reach/upnp"
)

// Named errors. Errors from the rendezvous server (rendezvous.ErrUnknownPeer,
// rendezvous.ErrPeerOffline, rendezvous.ErrNoServer), from TLS pinning
// (identity.ErrWrongPeer) and from the race (*strategy.RaceError) come back
// wrapped; test them with errors.Is / errors.As.
var (
	// ErrClosed: the node has been closed.
	ErrClosed = errors.New("reach: node closed")
	// ErrNoServers: the node has no rendezvous server to find peers with.
	ErrNoServers = errors.New("reach: no rendezvous server configured")
	// ErrUnknownStrategy: Config.Strategies names a strategy that does not
	// exist.
	ErrUnknownStrategy = errors.New("reach: unknown strategy")
	// ErrSelfDial: a node dialled its own peer ID.
	ErrSelfDial = errors.New("reach: dialling own peer ID")
)

// Strategy names, in ladder order.
const (
	StrategyDirect    = "direct"
	StrategyUPnP      = "upnp"
	StrategyHolepunch = "holepunch"
)

// DefaultStrategies is the ladder used when Config.Strategies is empty.
var DefaultStrategies = []string{StrategyDirect, StrategyUPnP, StrategyHolepunch, StrategySupernode, StrategyRelay}

// Config configures a Node. The zero value is usable for a node that only
// accepts direct connections; set Servers to find peers by ID.
type Config struct {
	// Key is the node's identity. Nil: a fresh random key, so the peer ID
	// changes on every run.
	Key *identity.Key
	// Servers are rendezvous connect strings ("reach://ID@host:port"),
	// tried in order with failover. Empty: no rendezvous; Dial fails with
	// ErrNoServers.
	Servers []string
	// ListenAddr is the local UDP address of the node's one socket. Zero:
	// all interfaces (IPv4 and IPv6), a random port.
	ListenAddr netip.AddrPort
	// Strategies restricts and orders the ladder, by name (StrategyDirect,
	// StrategyHolepunch). Empty: DefaultStrategies.
	Strategies []string
	// HeadStart is how long a strategy runs alone before the next one in
	// the ladder starts (a failure starts the next at once). Zero: 20ms.
	HeadStart time.Duration
	// PunchLinger is how long the listening side keeps sending punch
	// packets after an introduction. Zero: 15s.
	PunchLinger time.Duration
	// Session tunes QUIC sessions (keepalive, windows, timeouts).
	Session stream.Config
	// AcceptQueue is how many incoming streams may wait for Accept; more
	// are reset. Zero: 64.
	AcceptQueue int
	// ForceTCPSignalling reaches rendezvous servers over TCP+TLS only.
	ForceTCPSignalling bool
	// DialTCP opens the node's TCP connections (the signalling fallback).
	// Nil: a net.Dialer.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
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
	// Logger. Zero: upnp.Config's defaults.
	PortMapping upnp.Config
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
	// RelayDelay is how long after a dial starts the relay rung joins the
	// race while the rungs before it are still trying (at once if they
	// have all failed). Zero: twice the time the introduction took plus
	// 150ms, at least 400ms and at most DefaultRelayDelay (1s): the
	// peer-to-peer rungs finish within about two round trips when they can
	// work at all; 250ms when either side registered over TCP, as UDP is
	// then likely blocked. A value set here is used as it is.
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
	// Nil: no TURN.
	TURN []TURNServer
	// OnPathEvent is called (from the node's goroutines; it must not
	// block) when a session goes through the relay and when the node
	// tries, fails or manages to find a better path. Nil: events are only
	// logged.
	OnPathEvent func(PathEvent)
	// Supernode makes the node volunteer as a supernode for peers that
	// cannot punch through, with limits (pairs at once, bandwidth, whom
	// for); see package supernode and Node.Supernode. Zero: it does not
	// volunteer (it still uses volunteers: StrategySupernode).
	Supernode supernode.Config
	// Logger receives the node's logs. Nil: discard.
	Logger *slog.Logger
}

// Node is one peer: a key, a UDP socket, rendezvous registrations, and
// the sessions to other peers. Its methods are safe for concurrent use.
type Node struct {
	cfg      Config
	key      *identity.Key
	log      *slog.Logger
	sock     *sock.Socket
	ln       *stream.Listener
	client   *rendezvous.Client // nil without servers
	punch    *holepunch.Manager
	relay    *relayState          // nil without servers
	snVol    *supernode.Volunteer // nil unless Config.Supernode.Enable
	snPool   *supernode.Pool      // links to volunteers; nil without servers
	turn     *turnState           // nil without Config.TURN
	mapper   *upnp.Mapper         // nil with DisablePortMapping
	ladder   []strategy.Entry
	loopback bool // advertise loopback candidates (server on loopback)

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	accept chan *stream.Stream

	mu       sync.Mutex
	sessions map[identity.PeerID][]*stream.Session
	closed   bool
}

// New starts a node: it opens the UDP socket and registers with the first
// rendezvous server that answers. ctx bounds only this setup.
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
	if cfg.HeadStart <= 0 {
		cfg.HeadStart = 20 * time.Millisecond
	}
	if cfg.PunchLinger <= 0 {
		cfg.PunchLinger = 15 * time.Second
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
	for _, s := range cfg.Servers {
		sa, err := rendezvous.ParseServerAddr(s)
		if err != nil {
			return nil, err
		}
		servers = append(servers, sa)
	}
	n := &Node{cfg: cfg, key: cfg.Key, log: cfg.Logger.With("node", cfg.Key.ID().Short()),
		accept: make(chan *stream.Stream, cfg.AcceptQueue), sessions: map[identity.PeerID][]*stream.Session{}}
	for _, sa := range servers {
		if ip, err := netip.ParseAddr(sa.Host); err == nil && ip.IsLoopback() {
			n.loopback = true
		}
	}
	var err error
	if n.ladder, err = n.buildLadder(cfg.Strategies); err != nil {
		return nil, err
	}
	n.sock, err = sock.Listen(sock.Config{Addr: cfg.ListenAddr, Logger: n.log})
	if err != nil {
		return nil, err
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.punch = holepunch.NewManager(n.sock, n.log)
	n.ln, err = n.listen()
	if err != nil {
		n.Close()
		return nil, err
	}
	n.goRun(n.acceptSessions)
	mapStart := time.Now()
	if !cfg.DisablePortMapping && !n.loopback && !cfg.ListenAddr.Addr().IsLoopback() {
		if err := n.startMapper(); err != nil {
			n.Close()
			return nil, err
		}
	}
	if len(servers) > 0 {
		n.client, err = rendezvous.NewClient(rendezvous.ClientConfig{
			Key: n.key, Servers: servers, Transport: n.sock.Transport(),
			ForceTCP: cfg.ForceTCPSignalling, DialTCP: n.serverDialTCP(), WebSocket: cfg.WebSocketSignalling,
			Candidates: n.candidates, Logger: n.log,
			Volunteer: n.volunteerOffer(), OnVolunteer: n.volunteerVerdict,
		})
		if err != nil {
			n.Close()
			return nil, err
		}
		if err := n.startRelay(); err != nil {
			n.Close()
			return nil, err
		}
		n.startTURN()
		if err := n.startSupernodePool(); err != nil {
			n.Close()
			return nil, err
		}
		if err := n.client.Start(ctx); err != nil {
			n.Close()
			return nil, err
		}
		n.goRun(n.serveIntroductions)
	}
	if n.mapper != nil {
		// A PCP or NAT-PMP gateway on the LAN answers in milliseconds,
		// usually while the node registers; don't hold New up for one
		// that is slow or absent (the mapping is advertised whenever it
		// arrives: candidates are listed for every introduction).
		wctx, cancel := context.WithDeadline(ctx, mapStart.Add(mapperWait))
		n.mapper.Wait(wctx)
		cancel()
	}
	n.log.Debug("node up", "id", n.key.ID(), "addr", n.sock.LocalAddr())
	return n, nil
}

func (n *Node) goRun(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// buildLadder turns strategy names into the race's explicit list.
func (n *Node) buildLadder(names []string) ([]strategy.Entry, error) {
	if len(names) == 0 {
		names = DefaultStrategies
		if len(n.cfg.TURN) > 0 {
			names = []string{StrategyDirect, StrategyUPnP, StrategyHolepunch, StrategySupernode, StrategyTURN, StrategyRelay}
		}
	}
	var out []strategy.Entry
	for _, name := range names {
		var s strategy.Strategy
		switch name {
		case StrategyDirect:
			s = direct.Strategy{}
		case StrategyUPnP:
			out = append(out, strategy.Entry{Strategy: upnp.Strategy{}, HeadStart: max(n.cfg.HeadStart, upnp.HeadStart)})
			continue
		case StrategyHolepunch:
			s = &holepunch.Strategy{Manager: func() *holepunch.Manager { return n.punch }}
		case StrategyRelay:
			out = append(out, n.relayEntry())
			continue
		case StrategyTURN:
			out = append(out, strategy.Entry{Strategy: turnStrategy{n}, HeadStart: turnHeadStart})
			continue
		case StrategySupernode:
			out = append(out, n.supernodeEntry())
			continue
		default:
			return nil, fmt.Errorf("%w: %q (known: %s, %s, %s, %s, %s, %s)", ErrUnknownStrategy, name, StrategyDirect, StrategyUPnP, StrategyHolepunch, StrategySupernode, StrategyTURN, StrategyRelay)
		}
		out = append(out, strategy.Entry{Strategy: s, HeadStart: n.cfg.HeadStart})
	}
	return out, nil
}

// ID returns the node's peer ID.
func (n *Node) ID() identity.PeerID { return n.key.ID() }

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

// candidates are the node's own addresses, advertised in offers and
// answers (the server adds the reflexive one), and the port mapping its
// gateway granted, if any.
func (n *Node) candidates() []rendezvous.Candidate {
	c := n.hostCandidates()
	if n.mapper != nil {
		if ext, ok := n.mapper.External(); ok {
			c = append(c, rendezvous.Candidate{Addr: ext, Kind: rendezvous.Mapped})
		}
	}
	return append(c, n.turnCandidates()...)
}

func (n *Node) hostCandidates() []rendezvous.Candidate {
	la := n.sock.LocalAddr()
	if !la.Addr().IsUnspecified() {
		return []rendezvous.Candidate{{Addr: la, Kind: rendezvous.Host}}
	}
	addrs, err := n.cfg.InterfaceAddrs()
	if err != nil {
		n.log.Warn("listing interface addresses", "err", err)
	}
	return hostCandidates(addrs, la.Port(), n.loopback, la.Addr().Is6())
}

// Close closes every session, the registrations and the socket.
func (n *Node) Close() error {
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
	if n.cancel != nil {
		n.cancel()
	}
	for _, s := range all {
		s.CloseWithError(0, "node closed")
	}
	if n.client != nil {
		n.client.Close()
	}
	n.closeRelay()
	n.closeTURN()
	n.closeSupernodes()
	if n.mapper != nil {
		n.mapper.Close() // deletes the mapping at the gateway
	}
	if n.ln != nil {
		n.ln.Close()
	}
	if n.punch != nil {
		n.punch.Close()
	}
	err := n.sock.Close()
	n.wg.Wait()
	return err
}

// Accept waits for the next incoming stream from any peer. The stream's
// RemoteAddr().String() is the remote peer ID. It returns ErrClosed after
// Close.
func (n *Node) Accept() (net.Conn, error) { return n.AcceptContext(context.Background()) }

// AcceptContext is Accept bounded by ctx.
func (n *Node) AcceptContext(ctx context.Context) (*stream.Stream, error) {
	select {
	case s := <-n.accept:
		return s, nil
	case <-n.ctx.Done():
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Listener returns the node as a net.Listener (Accept, Close, Addr).
func (n *Node) Listener() net.Listener { return nodeListener{n} }

type nodeListener struct{ n *Node }

func (l nodeListener) Accept() (net.Conn, error) { return l.n.Accept() }
func (l nodeListener) Close() error              { return l.n.Close() }
func (l nodeListener) Addr() net.Addr            { return stream.Addr{Peer: l.n.ID(), Path: l.n.LocalAddr()} }

// Dial connects to peer and opens a stream. ctx bounds the setup only, as
// with net.Dialer: cancelling it later does not affect the stream.
func (n *Node) Dial(ctx context.Context, peer string) (net.Conn, error) {
	id, err := identity.ParsePeerID(peer)
	if err != nil {
		return nil, err
	}
	sess, err := n.DialSession(ctx, id)
	if err != nil {
		return nil, err
	}
	return sess.OpenStream(ctx)
}

// Dial connects to peer with a node made for this call from a fresh key
// and the given servers, and returns a stream. The node is closed when the
// stream is closed. For more than a one-off, make a Node.
func Dial(ctx context.Context, peer string, servers ...string) (net.Conn, error) {
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

// mapperWait bounds how long New waits for the port mapper's first
// outcome, counted from the mapper's start (it runs while the node
// registers with its server).
const mapperWait = 100 * time.Millisecond

// startMapper starts the port mapper on the node's UDP port, with the
// node's socket hooks.
func (n *Node) startMapper() error {
	mc := n.cfg.PortMapping
	mc.Port = n.sock.LocalAddr().Port()
	if mc.InterfaceAddrs == nil {
		mc.InterfaceAddrs = n.cfg.InterfaceAddrs
	}
	if mc.ListenPacket == nil {
		mc.ListenPacket = n.cfg.ListenPacket
	}
	if mc.DialContext == nil {
		mc.DialContext = n.cfg.DialTCP
	}
	if mc.Logger == nil {
		mc.Logger = n.log
	}
	var err error
	n.mapper, err = upnp.Start(mc)
	return err
}

// PortMapping reports the port mapper's state: the protocol the gateway
// speaks, the mapped public address (advertised as a "mapped" candidate)
// and its lease, or why there is none (Status.Err: upnp.ErrNoGateway,
// upnp.ErrPrivateExternal, a gateway's refusal). The zero Status with
// DisablePortMapping.
func (n *Node) PortMapping() upnp.Status {
	if n.mapper == nil {
		return upnp.Status{}
	}
	return n.mapper.Status()
}
