package reach

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pion/turn/v4"
	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/strategy"
	"github.com/reachp2p/reach/stream"
)

// StrategyTURN is the rung that relays a session through a standard TURN
// server (RFC 8656, e.g. coturn) that Config.TURN names: each peer
// allocates a relayed address there and QUIC runs end to end between the
// two allocations. With TURN configured it sits right before StrategyRelay
// and joins the race when the relay would (Config.RelayDelay); the hosted
// relay follows turnHeadStart later.
const StrategyTURN = "turn"

// ErrNoTURN: the TURN rung has nothing to work with: no TURN server
// answered (the allocation's error is joined), or the peer advertised no
// TURN address.
var ErrNoTURN = errors.New("reach: no TURN allocation")

// turnKind is the kind of a TURN candidate: the peer's relayed transport
// address on its TURN server, reachable once the other side permits it.
const turnKind rendezvous.CandidateKind = "turn"

// turnHeadStart is how long the TURN rung runs before the hosted relay
// joins: an operator who configured TURN prefers it.
const turnHeadStart = 500 * time.Millisecond

// TURNServer is a TURN server a node may relay through.
type TURNServer struct {
	// URL is the server, RFC 7065 style: "turn:host:port" (UDP),
	// "turn:host:port?transport=tcp" (TCP) or "turns:host:port" (TLS over
	// TCP). The port defaults to 3478 (turn:) and 5349 (turns:). The
	// relayed transport is UDP in every case.
	URL string
	// Username and Password are long-term credentials, or REST-API ones
	// your service derived. Empty with Secret set: derived from Secret.
	Username, Password string
	// Secret is the TURN REST API's shared secret (coturn
	// use-auth-secret): the node derives its own credentials, valid for a
	// day, with the username "<expiry>:<peer ID>". Empty: Username and
	// Password are used as they are.
	Secret string
	// RootCAs verify a turns: server's certificate. Nil: the system
	// roots.
	RootCAs *x509.CertPool
	// ServerName is the name the certificate of a turns: server must
	// have. Empty: the URL's host.
	ServerName string
}

// TURNCredentials derives TURN REST API credentials (the scheme coturn's
// use-auth-secret implements) for user from the shared secret, valid
// until now+ttl: username "<unix expiry>:<user>", password the base64
// HMAC-SHA1 of the username under secret.
func TURNCredentials(secret, user string, ttl time.Duration) (username, password string) {
	username = strconv.FormatInt(time.Now().Add(ttl).Unix(), 10) + ":" + user
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(username))
	return username, base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// turnURL is a parsed TURNServer.URL.
type turnURL struct {
	hostPort  string
	host      string
	transport string // "udp", "tcp", "tls"
}

func parseTURNURL(s string) (turnURL, error) {
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok || (scheme != "turn" && scheme != "turns") {
		return turnURL{}, fmt.Errorf("reach: TURN URL %q: want turn: or turns:", s)
	}
	rest, query, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return turnURL{}, fmt.Errorf("reach: TURN URL %q: %w", s, err)
	}
	u := turnURL{transport: "udp"}
	port := "3478"
	if scheme == "turns" {
		u.transport, port = "tls", "5349"
	}
	switch t := q.Get("transport"); {
	case t == "":
	case t == "tcp" && scheme == "turn":
		u.transport = "tcp"
	case t == "udp" && scheme == "turn", t == "tcp" && scheme == "turns":
	default:
		return turnURL{}, fmt.Errorf("reach: TURN URL %q: transport %q", s, t)
	}
	host, p, err := net.SplitHostPort(rest)
	if err != nil {
		host, p = strings.Trim(rest, "[]"), port
	}
	if host == "" {
		return turnURL{}, fmt.Errorf("reach: TURN URL %q: no host", s)
	}
	u.host, u.hostPort = host, net.JoinHostPort(host, p)
	return u, nil
}

// turnState is a node's TURN side: one allocation on the first server of
// Config.TURN that grants one, and the QUIC transport on it.
type turnState struct {
	ready chan struct{} // closed when the allocation attempt ended
	err   error         // why there is none

	mu     sync.Mutex
	client *turn.Client
	base   net.PacketConn // the socket to the TURN server
	conn   net.PacketConn // the allocation
	addr   netip.AddrPort // its relayed address
	tr     *quic.Transport
	ln     *stream.Listener
}

// startTURN allocates on the configured TURN servers in the background.
func (n *Node) startTURN() {
	if len(n.cfg.TURN) == 0 {
		return
	}
	ts := &turnState{ready: make(chan struct{})}
	n.turn = ts
	n.goRun(func() {
		defer close(ts.ready)
		var errs []error
		for _, srv := range n.cfg.TURN {
			ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
			err := n.allocate(ctx, ts, srv)
			cancel()
			if err == nil {
				n.log.Info("turn: allocated", "server", srv.URL, "relayed", ts.addr.String())
				n.goRun(func() { n.acceptFrom(ts.ln, StrategyTURN) })
				return
			}
			n.log.Warn("turn: no allocation", "server", srv.URL, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", srv.URL, err))
			if n.ctx.Err() != nil {
				break
			}
		}
		ts.err = errors.Join(errs...)
	})
}

// allocate gets an allocation on srv, from a socket made with the node's
// hooks, and starts the QUIC transport and listener on it.
func (n *Node) allocate(ctx context.Context, ts *turnState, srv TURNServer) error {
	u, err := parseTURNURL(srv.URL)
	if err != nil {
		return err
	}
	user, pass := srv.Username, srv.Password
	if srv.Secret != "" && user == "" {
		user, pass = TURNCredentials(srv.Secret, n.ID().String(), 24*time.Hour)
	}
	var base net.PacketConn
	switch u.transport {
	case "udp":
		listen := n.cfg.ListenPacket
		if listen == nil {
			listen = net.ListenPacket
		}
		network := "udp4"
		if ip, err := netip.ParseAddr(u.host); err == nil && ip.Is6() && !ip.Is4In6() {
			network = "udp6"
		}
		if base, err = listen(network, ":0"); err != nil {
			return err
		}
	default:
		dial := n.cfg.DialTCP
		if dial == nil {
			var d net.Dialer
			dial = d.DialContext
		}
		c, err := dial(ctx, "tcp", u.hostPort)
		if err != nil {
			return err
		}
		if u.transport == "tls" {
			name := srv.ServerName
			if name == "" {
				name = u.host
			}
			tc := tls.Client(c, &tls.Config{ServerName: name, RootCAs: srv.RootCAs, MinVersion: tls.VersionTLS12})
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return err
			}
			c = tc
		}
		base = turn.NewSTUNConn(c)
	}
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: u.hostPort, TURNServerAddr: u.hostPort,
		Conn: base, Username: user, Password: pass, Software: "reach",
	})
	if err != nil {
		base.Close()
		return err
	}
	fail := func(err error) error {
		client.Close()
		base.Close()
		return err
	}
	if err := client.Listen(); err != nil {
		return fail(err)
	}
	// pion's Allocate has its own retransmission timeout; ctx (the node
	// closing) aborts it by closing the socket.
	stop := context.AfterFunc(ctx, func() { base.Close() })
	conn, err := client.Allocate()
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return fail(err)
	}
	ua, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		conn.Close()
		return fail(fmt.Errorf("relayed address %v", conn.LocalAddr()))
	}
	tr := &quic.Transport{Conn: turnConn{conn, base}}
	ln, err := stream.Listen(tr, n.key, relaySessionConfig(n.cfg.Session))
	if err != nil {
		tr.Close()
		conn.Close()
		return fail(err)
	}
	ap := ua.AddrPort()
	ts.mu.Lock()
	ts.client, ts.base, ts.conn, ts.tr, ts.ln = client, base, conn, tr, ln
	ts.addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	ts.mu.Unlock()
	return nil
}

// closeTURN releases the allocation (Close calls it).
func (n *Node) closeTURN() {
	ts := n.turn
	if ts == nil {
		return
	}
	<-ts.ready
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.client == nil {
		return
	}
	ts.ln.Close()
	ts.tr.Close()
	ts.conn.Close() // deallocates (a Refresh with lifetime 0)
	ts.client.Close()
	ts.base.Close()
}

// TURNAddr returns the node's relayed address on its TURN server, or the
// zero AddrPort while it has none.
func (n *Node) TURNAddr() netip.AddrPort {
	if n.turn == nil {
		return netip.AddrPort{}
	}
	n.turn.mu.Lock()
	defer n.turn.mu.Unlock()
	return n.turn.addr
}

// turnCandidates is the node's TURN candidate, advertised in offers and
// answers, once it has an allocation.
func (n *Node) turnCandidates() []rendezvous.Candidate {
	if a := n.TURNAddr(); a.IsValid() {
		return []rendezvous.Candidate{{Addr: a, Kind: turnKind}}
	}
	return nil
}

// turnIntroduced lets the dialler's TURN address through the listener's
// allocation (a TURN server drops what comes from peers without a
// permission), so the dialler's QUIC handshake gets in.
func (n *Node) turnIntroduced(offer rendezvous.PeerInfo) {
	if n.turn == nil {
		return
	}
	var addrs []net.Addr
	for _, c := range offer.Candidates {
		if c.Kind == turnKind {
			addrs = append(addrs, net.UDPAddrFromAddrPort(c.Addr))
		}
	}
	if len(addrs) == 0 {
		return
	}
	n.goRun(func() {
		n.turn.mu.Lock()
		client := n.turn.client
		n.turn.mu.Unlock()
		if client == nil {
			return
		}
		if err := client.CreatePermission(addrs...); err != nil && n.ctx.Err() == nil {
			n.log.Debug("turn: permission for an introduced peer", "peer", offer.Peer.Short(), "err", err)
		}
	})
}

// turnStrategy is the TURN rung.
type turnStrategy struct{ n *Node }

func (turnStrategy) Name() string { return StrategyTURN }

// Connect dials QUIC from the node's allocation to the peer's.
func (s turnStrategy) Connect(ctx context.Context, a *strategy.Attempt) (*stream.Session, error) {
	ts := s.n.turn
	if ts == nil {
		return nil, fmt.Errorf("%w: no TURN server configured", ErrNoTURN)
	}
	select {
	case <-ts.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ts.mu.Lock()
	client, tr := ts.client, ts.tr
	ts.mu.Unlock()
	if client == nil {
		return nil, fmt.Errorf("%w: %w", ErrNoTURN, ts.err)
	}
	var target netip.AddrPort
	for _, c := range a.Remote.Candidates {
		if c.Kind == turnKind {
			target = c.Addr
			break
		}
	}
	if !target.IsValid() {
		return nil, fmt.Errorf("%w: the peer advertised no TURN address", ErrNoTURN)
	}
	ua := net.UDPAddrFromAddrPort(target)
	if err := client.CreatePermission(ua); err != nil {
		return nil, fmt.Errorf("turn: permission for %s: %w", target, err)
	}
	cfg := a.Session
	cfg.PacketSize = relay.PacketSize
	return stream.DialAddr(ctx, tr, ua, a.Key, a.Peer, cfg)
}

// turnConn is an allocation as quic-go's packet connection: the buffer
// sizes quic-go asks for go to the socket under the allocation (a UDP
// socket's kernel buffers; nothing for a TCP stream), so it prints no
// warning and a UDP allocation gets the buffers it needs.
type turnConn struct {
	net.PacketConn
	base net.PacketConn
}

func (c turnConn) SetReadBuffer(n int) error {
	if b, ok := c.base.(interface{ SetReadBuffer(int) error }); ok {
		return b.SetReadBuffer(n)
	}
	return nil
}

func (c turnConn) SetWriteBuffer(n int) error {
	if b, ok := c.base.(interface{ SetWriteBuffer(int) error }); ok {
		return b.SetWriteBuffer(n)
	}
	return nil
}
