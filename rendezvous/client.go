package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

// ClientConfig configures a Client. Key and Servers are required; every
// other zero value is usable.
type ClientConfig struct {
	// Key is the node's identity; the server registers its peer ID.
	Key *identity.Key
	// Servers are tried in order; when the current one dies or does not
	// answer, the client fails over to the next (wrapping around).
	Servers []ServerAddr
	// Transport is the node's shared UDP socket. The client dials QUIC
	// over it so the server observes the node's real NAT mapping; it never
	// closes it. Nil: TCP only.
	Transport *quic.Transport
	// DialTCP opens the TCP connection of the TLS fallback (for example
	// through a proxy). Nil: a net.Dialer.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// ForceTCP skips UDP even when Transport is set.
	ForceTCP bool
	// WebSocket carries the TCP fallback inside a WebSocket over HTTPS
	// (WebSocketDialer, PathSignal) on the server's TCP port, for proxies
	// that pass only HTTP. DialTCP still opens the TCP connection. Zero:
	// TLS directly on the TCP connection.
	WebSocket bool
	// Candidates returns the node's host and mapped candidates; it is
	// called for each offer and answer and its result appended to the
	// caller's. Nil: none are added.
	Candidates func() []Candidate
	// Logger receives the client's logs. Nil: discard.
	Logger *slog.Logger
	// DialTimeout bounds one connection attempt (QUIC or TCP+TLS, plus
	// registration) to one server. Zero: 5s.
	DialTimeout time.Duration
	// UDPHeadStart is how long the QUIC attempt to a server runs before
	// the TCP fallback starts in parallel. If TCP registers first, the
	// client uses it and moves to QUIC if that still succeeds. Zero: 500ms.
	UDPHeadStart time.Duration
	// Volunteer, if set, offers the node as a supernode to the server after
	// every registration. Nil: it does not volunteer.
	Volunteer *VolunteerOffer
	// OnVolunteer receives each server's verdict on the offer, and later
	// news (dropped after a failed re-check). It is called from the
	// client's read goroutine and must not block. Nil: verdicts are only
	// logged.
	OnVolunteer func(VolunteerStatus)
	// IncomingQueue is the capacity of the Incoming channel; an
	// introduction arriving when it is full is rejected ("busy"). Zero: 16.
	IncomingQueue int
	// Liveness is how long the server may stay silent before the client
	// takes it for dead and fails over: the client pings every third of
	// it (each ping answered by the server). Over TCP a killed server's
	// kernel closes the connection at once; over QUIC nothing tells, so
	// this bounds the failover. Zero: DefaultFleetLiveness while the
	// client knows more than one server (Servers, and those the servers of
	// a fleet name), else three of the server's keepalive intervals (30 s:
	// one ping each 10 s). Negative: the latter always.
	Liveness time.Duration
	// ParkAfter is how long the registration must have been idle (no
	// frame but pings either way, no request in flight) before the
	// client parks it, on a server that offers parking (REGISTERED;
	// ServerConfig.Park): its QUIC connection closes and the node keeps
	// the registration with a keepalive datagram from Transport (which
	// must be the node's *pathsock.Conn) every 25 s; the server wakes it
	// for an introduction, and Connect re-attaches first. Zero: the
	// server's offer. Negative: never park. A value below the server's
	// offer counts as the offer.
	ParkAfter time.Duration

	// lookupNetIP resolves server names for QUIC (tests give a name
	// addresses without DNS). Nil: net.DefaultResolver.
	lookupNetIP func(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// DefaultFleetLiveness is ClientConfig.Liveness for a client with more
// than one server: a killed server's peers register elsewhere within
// about 3 s. It costs one small ping and its answer per second and peer
// (the single-server default: one each 10 s).
const DefaultFleetLiveness = 3 * time.Second

func (c ClientConfig) withDefaults() ClientConfig {
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.UDPHeadStart <= 0 {
		c.UDPHeadStart = 500 * time.Millisecond
	}
	if c.IncomingQueue <= 0 {
		c.IncomingQueue = 16
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.DialTCP == nil {
		var d net.Dialer
		c.DialTCP = d.DialContext
	}
	return c
}

// Client keeps a node registered with a rendezvous server and asks it for
// introductions. It is safe for concurrent use.
type Client struct {
	cfg      ClientConfig
	log      *slog.Logger
	incoming chan *Introduction
	ctx      context.Context // cancelled by Close
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	nextReq  atomic.Uint64

	mu      sync.Mutex
	conn    *clientConn   // current registration; nil while reconnecting
	changed chan struct{} // closed and replaced whenever conn changes
	lastIdx int           // index in servers of the latest registration
	// servers are the configured Servers, then those the last
	// registration's server named (its fleet), at most MaxFleetServers.
	servers  []ServerAddr
	started  bool
	closed   bool
	replaced error // set when the server says a newer registration took over
	// replacedCh is closed when replaced is set (Replaced).
	replacedCh chan struct{}
	// upgradeFrom is a TCP registration whose QUIC replacement is still
	// being dialled; its loss is handled when that attempt ends.
	upgradeFrom *clientConn
	// abandoned is a TCP registration whose QUIC replacement the client
	// gave up on at abandonedAt: that attempt's REGISTER may still reach
	// the server and replace it (the client's own doing, not another
	// process's), so a "replaced" within abandonGrace means register
	// again, not stay offline.
	abandoned   *clientConn
	abandonedAt time.Time
	// rejoinFrom is the registration such an attempt replaced: requests
	// that failed on it are asked again on the next (handedOver).
	rejoinFrom *clientConn
}

// abandonGrace is how long after the client gave up on a QUIC upgrade a
// "replaced" of its TCP registration is taken for that attempt's late
// REGISTER: more than a loaded server takes to read one.
const abandonGrace = 10 * time.Second

// NewClient checks cfg and makes a Client. Call Start to register.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Key == nil {
		return nil, errors.New("rendezvous: ClientConfig.Key is required")
	}
	if len(cfg.Servers) == 0 {
		return nil, fmt.Errorf("%w: ClientConfig.Servers is empty", ErrNoServer)
	}
	for _, sa := range cfg.Servers {
		if sa.ID.IsZero() || sa.Host == "" || sa.Port == 0 {
			return nil, fmt.Errorf("%w: incomplete server address %q", ErrBadServerAddr, sa.String())
		}
	}
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{
		cfg:      cfg,
		log:      cfg.Logger,
		incoming: make(chan *Introduction, cfg.IncomingQueue),
		ctx:      ctx,
		cancel:   cancel,
		changed:  make(chan struct{}),
		servers:  slices.Clone(cfg.Servers),

		replacedCh: make(chan struct{}),
	}, nil
}

// Start registers with the first server that answers, trying them in
// order, and returns once registered; afterwards the client keeps the
// registration alive and reconnects (failing over) in the background. If
// no server answers it returns a *NoServerError (errors.Is ErrNoServer).
// ctx bounds only the first registration.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return ErrClosed
	case c.started:
		c.mu.Unlock()
		return errors.New("rendezvous: Start called twice")
	}
	c.started = true
	c.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	cc, idx, after, err := c.dialAny(ctx, 0)
	if err != nil {
		if c.ctx.Err() != nil {
			return ErrClosed
		}
		return err
	}
	ok := c.install(cc, idx)
	if after != nil {
		after()
	}
	if !ok {
		return ErrClosed
	}
	if !c.spawn(c.maintain) {
		return ErrClosed
	}
	return nil
}

// Close ends the registration, stops the background work, fails pending
// calls with ErrClosed and closes the Incoming channel.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	cc := c.conn
	c.conn = nil
	c.signalLocked()
	c.mu.Unlock()
	c.cancel()
	if cc != nil {
		cc.fail(ErrClosed)
	}
	c.wg.Wait()
	close(c.incoming)
	return nil
}

// Replaced is closed when another registration of the node's peer ID (a
// second process with the same key) took over at the server: the client
// stays offline from then on, and Connect fails with ErrReplaced.
func (c *Client) Replaced() <-chan struct{} { return c.replacedCh }

// Incoming yields the introductions other peers ask for. Answer each with
// Accept or Reject. It is closed by Close.
func (c *Client) Incoming() <-chan *Introduction { return c.incoming }

// Observed returns the address the current server sees the node's UDP
// connection come from (its server-reflexive address), or the zero value
// when not registered over UDP.
func (c *Client) Observed() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return netip.AddrPort{}
	}
	return c.conn.observed
}

// ServerUDP returns the UDP address of the server the client is
// registered with over QUIC, or the zero value (not registered, or over
// TCP).
func (c *Client) ServerUDP() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return netip.AddrPort{}
	}
	return c.conn.remote
}

// ServerOffers reports whether the server the client is registered with
// serves the ALPN protocol alpn besides rendezvous (its REGISTERED frame
// says so: relay.ALPN when it runs the relay); false while not registered
// or with a server that does not say.
func (c *Client) ServerOffers(alpn string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil && slices.Contains(c.conn.protocols, alpn)
}

// RTT returns the smoothed round-trip time of the connection to the
// current server (QUIC's estimate, or the kernel's for TCP on Linux: to
// the proxy, through an HTTP proxy), or zero when it is unknown (not
// registered, over a WebSocket, or over TCP elsewhere).
func (c *Client) RTT() time.Duration {
	c.mu.Lock()
	cc := c.conn
	c.mu.Unlock()
	if cc == nil || cc.rtt == nil {
		return 0
	}
	return cc.rtt()
}

// Servers returns the servers the client knows, in the order it tries
// them: ClientConfig.Servers, then the other live servers of a fleet that
// its current server named (at most MaxFleetServers; the list follows the
// fleet while the client stays registered).
func (c *Client) Servers() []ServerAddr { return c.serverList() }

// Current returns the server the client is registered with, or the zero
// value while it is not registered.
func (c *Client) Current() ServerAddr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return ServerAddr{}
	}
	return c.conn.server
}

// Connect asks the server to introduce the node to peer with offer and
// returns the peer's answer. The server fills in offer.Peer and adds the
// node's reflexive address; Candidates() are appended to offer's. It waits
// for a registration if the client is reconnecting. Errors: a
// *ConnectError (ErrUnknownPeer, ErrPeerOffline, ErrTimeout, ErrRejected,
// ErrBusy, ErrBadRequest), ErrServerLost, ErrReplaced, ErrClosed or ctx's.
func (c *Client) Connect(ctx context.Context, peer identity.PeerID, offer PeerInfo) (PeerInfo, error) {
	return c.ConnectFlight(ctx, peer, offer, nil)
}

// ConnectFlight is Connect with a first flight: f's packets go to the peer
// through the server with the introduction, and the peer's come back
// through it (see Flight). A server or peer that does not know flights
// drops them; the introduction works as with Connect. Nil f: Connect.
func (c *Client) ConnectFlight(ctx context.Context, peer identity.PeerID, offer PeerInfo, f *Flight) (PeerInfo, error) {
	offer.Candidates = c.withCandidates(offer.Candidates)
	answer, cc, err := c.connect(ctx, peer, offer, f)
	if err != nil && (errors.Is(err, ErrServerLost) || errors.Is(err, ErrReplaced)) && c.handedOver(ctx, cc) {
		// The request went out on a registration this client left for
		// its own newer one (TCP moving to QUIC; the server ends the old
		// one as replaced, and the request fails with it): not a lost
		// server. Ask again there, once (the flight goes again with it).
		answer, _, err = c.connect(ctx, peer, offer, f)
	}
	return answer, err
}

// handedOver reports whether cc, on which a request failed, was left for
// a newer connection of this client (a TCP registration that moved to
// QUIC, which the server ends with "replaced", or that the client's own
// abandoned QUIC attempt replaced); while that move or the registration
// after it is under way it waits for its outcome, within ctx.
func (c *Client) handedOver(ctx context.Context, cc *clientConn) bool {
	if cc == nil {
		return false
	}
	for {
		c.mu.Lock()
		// The request may fail before lost() has seen the replacement
		// (the connection fails its requests first): an abandoned
		// attempt's replacement is waited for as well.
		rejoining := c.rejoinFrom == cc || c.abandoned == cc && time.Since(c.abandonedAt) < abandonGrace
		conn, moving, ch := c.conn, c.upgradeFrom == cc, c.changed
		c.mu.Unlock()
		switch {
		case conn != nil && conn != cc:
			return true
		case rejoining && (conn == nil || conn == cc):
			// Registering again (or about to): wait for it.
		case !moving || conn != cc:
			return false
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// connect sends one introduction request on the current registration and
// waits for its result; it returns the connection it used (nil if none).
func (c *Client) connect(ctx context.Context, peer identity.PeerID, offer PeerInfo, f *Flight) (PeerInfo, *clientConn, error) {
	for try := 0; ; try++ {
		cc, err := c.waitConn(ctx)
		if err != nil {
			return PeerInfo{}, nil, err
		}
		answer, err := c.request(ctx, cc, peer, offer, f)
		if errors.Is(err, errConnParked) && try < 3 {
			// The registration parked between waitConn and the write:
			// waitConn wakes it now.
			continue
		}
		return answer, cc, err
	}
}

// request sends one introduction request on cc and waits for its result.
func (c *Client) request(ctx context.Context, cc *clientConn, peer identity.PeerID, offer PeerInfo, f *Flight) (PeerInfo, error) {
	id := c.nextReq.Add(1)
	ch := cc.expect(id)
	if ch == nil {
		return PeerInfo{}, fmt.Errorf("%w: %v", ErrServerLost, cc.Err())
	}
	defer cc.unexpect(id)
	if err := cc.write(typeConnect, connectBody{ID: id, Target: peer, Offer: offer}); err != nil {
		return PeerInfo{}, err
	}
	if f != nil {
		f.arm(cc, flightKey{id: id})
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return PeerInfo{}, r.err
		}
		if r.body.Error != "" {
			return PeerInfo{}, &ConnectError{Peer: peer, Code: r.body.Error, Reason: r.body.Reason}
		}
		if r.body.Answer == nil {
			return PeerInfo{}, &ConnectError{Peer: peer, Code: codeBadRequest, Reason: "RESULT without answer"}
		}
		return *r.body.Answer, nil
	case <-ctx.Done():
		return PeerInfo{}, ctx.Err()
	}
}

func (c *Client) withCandidates(cands []Candidate) []Candidate {
	if c.cfg.Candidates == nil {
		return cands
	}
	out := append([]Candidate(nil), cands...)
next:
	for _, n := range c.cfg.Candidates() {
		for _, o := range out {
			if o == n {
				continue next
			}
		}
		out = append(out, n)
	}
	return out
}

// waitConn returns the current registration, waiting while reconnecting.
func (c *Client) waitConn(ctx context.Context) (*clientConn, error) {
	for {
		c.mu.Lock()
		cc, ch, closed, replaced, started := c.conn, c.changed, c.closed, c.replaced, c.started
		c.mu.Unlock()
		switch {
		case closed:
			return nil, ErrClosed
		case replaced != nil:
			return nil, replaced
		case !started:
			return nil, errors.New("rendezvous: client not started")
		case cc != nil && !cc.requestWake():
			return cc, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrServerLost, ctx.Err())
		}
	}
}

// spawn runs f in a goroutine that Close waits for, unless the client is
// closed (then it reports false and does not run f).
func (c *Client) spawn(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Go(f)
	return true
}

func (c *Client) signalLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// install makes cc the current registration and starts its goroutines.
func (c *Client) install(cc *clientConn, idx int) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cc.close()
		return false
	}
	old := c.conn
	c.conn = cc
	if old != nil && c.upgradeFrom == old {
		c.upgradeFrom = nil // the move is done (finishUpgrade)
	}
	if cc.inFleet || len(c.servers) > len(c.cfg.Servers) {
		c.learnLocked(cc.fleet, cc.server)
		idx = c.indexLocked(cc.server)
	}
	c.lastIdx = idx
	c.signalLocked()
	c.wg.Go(cc.readLoop)
	c.wg.Go(cc.pingLoop)
	c.mu.Unlock()
	c.log.Info("registered", "server", cc.server.String(), "proto", cc.proto, "observed", cc.observed)
	c.offerVolunteer(cc)
	if old != nil {
		old.fail(errUpgraded)
	}
	return true
}

var errUpgraded = errors.New("rendezvous: moved to a better connection")

// lost is called by a clientConn whose transport died.
func (c *Client) lost(cc *clientConn, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != cc || c.upgradeFrom == cc {
		return
	}
	c.conn = nil
	if errors.Is(err, ErrReplaced) && c.abandoned == cc && time.Since(c.abandonedAt) < abandonGrace {
		// Replaced by the QUIC attempt this client abandoned, which the
		// server read late (and which the client closed): register again.
		c.log.Info("replaced by our own abandoned QUIC attempt; registering again", "server", cc.server.String())
		c.abandoned, c.rejoinFrom = nil, cc
	} else if errors.Is(err, ErrReplaced) {
		if c.replaced == nil {
			close(c.replacedCh)
		}
		c.replaced = err
		c.log.Error("another connection registered this peer ID; staying offline", "server", cc.server.String())
	} else {
		c.log.Warn("lost rendezvous server", "server", cc.server.String(), "err", err)
	}
	c.signalLocked()
}

// maintain reconnects whenever the registration is lost, starting with
// the server after the one that failed.
func (c *Client) maintain() {
	backoff := 250 * time.Millisecond
	for {
		c.mu.Lock()
		cc, ch, replaced, idx := c.conn, c.changed, c.replaced, c.lastIdx
		c.mu.Unlock()
		if cc != nil || replaced != nil {
			select {
			case <-ch:
				backoff = 250 * time.Millisecond
				continue
			case <-c.ctx.Done():
				return
			}
		}
		cc, newIdx, after, err := c.dialAny(c.ctx, idx+1)
		if err == nil {
			ok := c.install(cc, newIdx)
			if after != nil {
				after()
			}
			if !ok {
				return
			}
			continue
		}
		if c.ctx.Err() != nil {
			return
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("no rendezvous server answered; retrying", "in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-c.ctx.Done():
			return
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// dialAny tries every server once, starting at index start.
func (c *Client) dialAny(ctx context.Context, start int) (*clientConn, int, func(), error) {
	list := c.serverList()
	n := len(list)
	nse := &NoServerError{}
	for i := range n {
		idx := (start + i) % n
		sa := list[idx]
		cc, after, err := c.dialServer(ctx, sa)
		if err == nil {
			return cc, idx, after, nil
		}
		c.log.Debug("server failed", "server", sa.String(), "err", err)
		nse.Servers = append(nse.Servers, sa)
		nse.Errs = append(nse.Errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, 0, nil, nse
}
