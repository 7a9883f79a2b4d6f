// Package turn is the TURN rung: it relays a session through a standard
// TURN server (RFC 8656, e.g. coturn) that the node's Config names. Each
// peer allocates a relayed address on its TURN server (in the background
// from the node's start, released when it closes) and advertises it; the
// dialler permits the peer's allocation and QUIC runs end to end between
// the two allocations. The allocation is a forwarded path on the node's
// one socket (path.go), so a TURN session can move to a direct path and
// back like a relayed one. For operators who already run TURN.
package turn

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
	"sync/atomic"
	"time"

	"github.com/pion/turn/v4"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/stream"
)

// Name is the rung's name in the ladder. With TURN servers configured it
// sits right before the hosted relay and joins the race when the relay
// would (the forwarding delay); the hosted relay follows HeadStart later.
const Name = "turn"

// ErrNoTURN: the TURN rung has nothing to work with: no TURN server
// answered (the allocation's error is joined), or the peer advertised no
// TURN address.
var ErrNoTURN = errors.New("turn: no TURN allocation")

// HeadStart is how long the TURN rung runs before the hosted relay joins:
// an operator who configured TURN prefers it.
const HeadStart = 500 * time.Millisecond

// allocateTimeout bounds the allocation on one server.
const allocateTimeout = 10 * time.Second

// Server is a TURN server a node may relay through.
type Server struct {
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

// Credentials derives TURN REST API credentials (the scheme coturn's
// use-auth-secret implements) for user from the shared secret, valid
// until now+ttl: username "<unix expiry>:<user>", password the base64
// HMAC-SHA1 of the username under secret.
func Credentials(secret, user string, ttl time.Duration) (username, password string) {
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
		return turnURL{}, fmt.Errorf("turn: URL %q: want turn: or turns:", s)
	}
	rest, query, _ := strings.Cut(rest, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		return turnURL{}, fmt.Errorf("turn: URL %q: %w", s, err)
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
		return turnURL{}, fmt.Errorf("turn: URL %q: transport %q", s, t)
	}
	host, p, err := net.SplitHostPort(rest)
	if err != nil {
		host, p = strings.Trim(rest, "[]"), port
	}
	if host == "" {
		return turnURL{}, fmt.Errorf("turn: URL %q: no host", s)
	}
	u.host, u.hostPort = host, net.JoinHostPort(host, p)
	// What we dial must split back into this host and a port: a stray
	// bracket or colon ("turn:0[0") is a malformed URL, not a host.
	if h, pp, err := net.SplitHostPort(u.hostPort); err != nil || h != host {
		return turnURL{}, fmt.Errorf("turn: URL %q: bad host %q", s, host)
	} else if n, err := strconv.ParseUint(pp, 10, 16); err != nil || n == 0 {
		return turnURL{}, fmt.Errorf("turn: URL %q: bad port %q", s, pp)
	}
	return u, nil
}

// Rung is the TURN rung: one allocation on the first server of its list
// that grants one, and the QUIC transport on it.
type Rung struct {
	rung.Base
	h       *rung.Host
	servers []Server
	started atomic.Bool   // Start ran
	ready   chan struct{} // closed when the allocation attempt ended
	err     error         // why there is none

	mu     sync.Mutex
	client *turn.Client
	base   net.PacketConn // the socket to the TURN server
	conn   net.PacketConn // the allocation
	addr   netip.AddrPort // its relayed address
	peers  peerTable      // relayed addresses of introduced peers (path.go)
}

// NewRung makes the rung for the node h, with the TURN servers to try in
// order (none: the rung never connects).
func NewRung(h *rung.Host, servers []Server) *Rung {
	return &Rung{h: h, servers: servers, ready: make(chan struct{})}
}

// Name implements rung.Rung.
func (*Rung) Name() string { return Name }

// Start implements rung.Rung: it allocates on the configured servers in
// the background.
func (r *Rung) Start(context.Context) error {
	r.started.Store(true)
	if len(r.servers) == 0 || !r.h.Signalling {
		close(r.ready)
		return nil
	}
	r.h.Go(func() {
		defer close(r.ready)
		var errs []error
		for _, srv := range r.servers {
			ctx, cancel := context.WithTimeout(r.h.Context, allocateTimeout)
			err := r.allocate(ctx, srv)
			cancel()
			if err == nil {
				r.h.Logger.Info("turn: allocated", "server", srv.URL, "relayed", r.addr.String())
				r.h.Go(r.read)
				return
			}
			r.h.Logger.Warn("turn: no allocation", "server", srv.URL, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", srv.URL, err))
			if r.h.Context.Err() != nil {
				break
			}
		}
		r.err = errors.Join(errs...)
	})
	return nil
}

// allocate gets an allocation on srv, from a socket made with the node's
// hooks, and starts the QUIC transport and listener on it.
func (r *Rung) allocate(ctx context.Context, srv Server) error {
	u, err := parseTURNURL(srv.URL)
	if err != nil {
		return err
	}
	user, pass := srv.Username, srv.Password
	if srv.Secret != "" && user == "" {
		user, pass = Credentials(srv.Secret, r.h.Key.ID().String(), 24*time.Hour)
	}
	var base net.PacketConn
	switch u.transport {
	case "udp":
		listen := r.h.ListenPacket
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
		dial := r.h.DialTCP
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
	if b, ok := base.(interface{ SetReadBuffer(int) error }); ok {
		b.SetReadBuffer(socketBuffer) // as quic-go asks of its sockets; best effort
	}
	if b, ok := base.(interface{ SetWriteBuffer(int) error }); ok {
		b.SetWriteBuffer(socketBuffer)
	}
	ap := ua.AddrPort()
	r.mu.Lock()
	r.client, r.base, r.conn = client, base, conn
	r.addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	r.mu.Unlock()
	return nil
}

// socketBuffer is the kernel buffer size asked for the socket under a UDP
// allocation (what quic-go asks for its own).
const socketBuffer = 7 << 20

// Close implements rung.Rung: it releases the allocation.
func (r *Rung) Close() {
	if !r.started.Load() {
		return
	}
	<-r.ready
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client == nil {
		return
	}
	r.conn.Close() // deallocates (a Refresh with lifetime 0); read ends
	r.client.Close()
	r.base.Close()
}

// Addr returns the node's relayed address on its TURN server, or the
// zero AddrPort while it has none.
func (r *Rung) Addr() netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr
}

// Candidates implements rung.Rung: the relayed address, once allocated.
func (r *Rung) Candidates() []candidate.Candidate {
	if a := r.Addr(); a.IsValid() {
		return []candidate.Candidate{{Addr: a, Kind: candidate.TURN}}
	}
	return nil
}

// Introduced implements rung.Rung: it lets the dialler's TURN address
// through the listener's allocation (a TURN server drops what comes from
// peers without a permission), so the dialler's QUIC handshake gets in,
// and takes what comes from there as the dialler's.
func (r *Rung) Introduced(offer candidate.PeerInfo) {
	var addrs []net.Addr
	for _, a := range offer.Addrs(candidate.TURN) {
		r.peers.remember(a, offer.Peer, r)
		addrs = append(addrs, net.UDPAddrFromAddrPort(a))
	}
	if len(addrs) == 0 {
		return
	}
	r.h.Go(func() {
		r.mu.Lock()
		client := r.client
		r.mu.Unlock()
		if client == nil {
			return
		}
		if err := client.CreatePermission(addrs...); err != nil && r.h.Context.Err() == nil {
			r.h.Logger.Debug("turn: permission for an introduced peer", "peer", offer.Peer.Short(), "err", err)
		}
	})
}

// allocated waits for the allocation attempt and returns its client, or
// ErrNoTURN (with why) when there is none.
func (r *Rung) allocated(ctx context.Context) (*turn.Client, error) {
	if len(r.servers) == 0 {
		return nil, fmt.Errorf("%w: no TURN server configured", ErrNoTURN)
	}
	select {
	case <-r.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	r.mu.Lock()
	client := r.client
	r.mu.Unlock()
	if client == nil {
		return nil, fmt.Errorf("%w: %w", ErrNoTURN, r.err)
	}
	return client, nil
}

// Connect implements rung.Rung: it dials QUIC on the node's socket to the
// peer's virtual address, whose forwarded path is the node's allocation
// sending to the peer's.
func (r *Rung) Connect(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	client, err := r.allocated(ctx)
	if err != nil {
		return nil, err
	}
	target := a.Remote.First(candidate.TURN)
	if !target.IsValid() {
		return nil, fmt.Errorf("%w: the peer advertised no TURN address", ErrNoTURN)
	}
	if err := client.CreatePermission(net.UDPAddrFromAddrPort(target)); err != nil {
		return nil, fmt.Errorf("turn: permission for %s: %w", target, err)
	}
	p := r.peers.remember(target, a.Peer, r)
	paths := r.h.Socket.Paths()
	key, err := paths.Key(a.Peer.String())
	if err != nil {
		return nil, fmt.Errorf("turn: %w", err)
	}
	if err := paths.SetFallback(key, p); err != nil {
		return nil, fmt.Errorf("turn: %w", err)
	}
	return stream.DialAddr(ctx, r.h.Socket.Transport(), net.UDPAddrFromAddrPort(key), a.Key, a.Peer, relay.SessionConfig(a.Session))
}

// Won implements rung.Winner: the peer's forwarded path is the node's
// allocation again (a rung that started later, the relay, may have set
// its own).
func (r *Rung) Won(a *rung.Attempt, s *stream.Session) {
	paths := r.h.Socket.Paths()
	key := s.QUICAddr()
	if direct, _, err := paths.Current(key); err != nil || direct.IsValid() {
		return
	}
	if p := r.peers.find(a.Peer); p != nil {
		paths.SetFallback(key, p)
	}
}

// Plan implements rung.Rung: without TURN servers the rung sits out.
// It also remembers the peer's relayed address, so that a session born on
// another path can fall back to TURN (ForwardPath).
func (r *Rung) Plan(a *rung.Attempt, headStart time.Duration) (time.Duration, bool) {
	if len(r.servers) == 0 {
		return headStart, false
	}
	if t := a.Remote.First(candidate.TURN); t.IsValid() {
		r.peers.remember(t, a.Peer, r)
	}
	return headStart, true
}

// ForwardPath implements rung.Forwarder: the path to peer through the
// node's allocation, for a session born on a direct path whose path went
// silent. The peer's relayed address is the one its last introduction or
// answer named; the node permits it on its allocation first.
func (r *Rung) ForwardPath(ctx context.Context, peer identity.PeerID) (pathsock.Path, error) {
	client, err := r.allocated(ctx)
	if err != nil {
		return nil, err
	}
	p := r.peers.find(peer)
	if p == nil {
		return nil, fmt.Errorf("%w: no relayed address known for %s", ErrNoTURN, peer.Short())
	}
	if err := client.CreatePermission(p.to); err != nil {
		return nil, fmt.Errorf("turn: permission for %s: %w", p.to, err)
	}
	return p, nil
}
