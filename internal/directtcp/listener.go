package directtcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/stream"
)

// Defaults of the listener's limits (see Limits).
const (
	// DefaultMaxPending is how many TCP connections may be in their TLS
	// handshake at once; more are closed as they are accepted.
	DefaultMaxPending = 64
	// DefaultMaxPendingPerIP is how many of those may come from one IP
	// address, so that one host cannot take every slot.
	DefaultMaxPendingPerIP = 8
	// DefaultHandshakeTimeout is how long an accepted connection has to
	// complete its TLS handshake (a peer does it in two round trips).
	DefaultHandshakeTimeout = 5 * time.Second
)

// Limits bound what unauthenticated TCP connections make the node keep.
// Zero fields take the defaults.
type Limits struct {
	// MaxPending: connections in their handshake at once.
	// Zero: DefaultMaxPending.
	MaxPending int
	// MaxPendingPerIP: such connections from one IP address.
	// Zero: DefaultMaxPendingPerIP.
	MaxPendingPerIP int
	// HandshakeTimeout: the time an accepted connection has to prove a
	// key (it is also bounded by the session config's HandshakeTimeout).
	// Zero: DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxReversals: connections back to introduced diallers at once
	// (see reverse.go). Zero: DefaultMaxReversals.
	MaxReversals int
}

func (l Limits) withDefaults() Limits {
	if l.MaxPending <= 0 {
		l.MaxPending = DefaultMaxPending
	}
	if l.MaxPendingPerIP <= 0 {
		l.MaxPendingPerIP = DefaultMaxPendingPerIP
	}
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	return l
}

// ListenerStats counts what the listener did with the connections it
// accepted.
type ListenerStats struct {
	// Sessions: handshakes that proved a key and became sessions.
	Sessions uint64
	// Refused: connections closed at once, over a pending limit.
	Refused uint64
	// Failed: handshakes that failed or timed out.
	Failed uint64
	// Pending: connections in their handshake now.
	Pending int
}

// Listener is the node's TCP listener: it accepts connections, runs the
// server side of TLS 1.3 (pinned keys) and yamux on each within the
// limits, and hands every session that proved a key to its handler.
type Listener struct {
	ln      net.Listener
	key     *identity.Key
	cfg     stream.Config
	lim     Limits
	log     *slog.Logger
	handler func(*stream.Session) bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	pending map[net.Conn]netip.Addr
	perIP   map[netip.Addr]int
	claims  map[netip.AddrPort]chan net.Conn
	recent  [recentAccepts]netip.AddrPort // ring of the last remote addresses accepted
	next    int

	sessions, refused, failed atomic.Uint64
}

// Serve starts serving ln (which the Listener owns from now on). handler
// takes each session; when it reports false the session is closed.
func Serve(ln net.Listener, key *identity.Key, cfg stream.Config, lim Limits, log *slog.Logger, handler func(*stream.Session) bool) *Listener {
	l := &Listener{ln: ln, key: key, cfg: cfg, lim: lim.withDefaults(), log: log, handler: handler,
		pending: map[net.Conn]netip.Addr{}, perIP: map[netip.Addr]int{}}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Addr returns the listener's address.
func (l *Listener) Addr() netip.AddrPort { return addrPort(l.ln.Addr()) }

// Stats returns the listener's counters.
func (l *Listener) Stats() ListenerStats {
	l.mu.Lock()
	p := len(l.pending)
	l.mu.Unlock()
	return ListenerStats{Sessions: l.sessions.Load(), Refused: l.refused.Load(), Failed: l.failed.Load(), Pending: p}
}

// Close stops accepting, closes every connection still in its handshake
// and waits for the listener's goroutines. Sessions handed out stay up.
func (l *Listener) Close() error {
	l.cancel()
	err := l.ln.Close()
	l.mu.Lock()
	for c := range l.pending {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
	return err
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// A temporary failure (out of file descriptors): wait a
			// little, as net/http does, instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Debug("direct-tcp: accept", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-l.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		l.note(c)
		if l.passThrough(c) {
			continue
		}
		if !l.admit(c) {
			l.refused.Add(1)
			c.Close()
			continue
		}
		l.wg.Add(1)
		go l.handshake(c)
	}
}

// recentAccepts is how many remote addresses Accepted remembers.
const recentAccepts = 64

// note remembers c's remote address among the recent ones.
func (l *Listener) note(c net.Conn) {
	l.mu.Lock()
	l.recent[l.next%recentAccepts] = addrPort(c.RemoteAddr())
	l.next++
	l.mu.Unlock()
}

// Accepted reports whether one of the last 64 connections the listener
// accepted came from remote: a TCP hole punch checks it before it sends
// another SYN to remote, which would reset the connection remote made.
func (l *Listener) Accepted(remote netip.AddrPort) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.recent {
		if a == remote {
			return true
		}
	}
	return false
}

// Claim makes the listener hand the next connection that comes from
// remote to the returned channel as it is, without a handshake: a TCP
// hole punch (holepunch-tcp) whose peer's connect() reached this listener
// runs the side of TLS its introduction gave it, not always the server's.
// At most one connection is handed over; later ones from remote are
// closed until release, which closes one left unread.
func (l *Listener) Claim(remote netip.AddrPort) (<-chan net.Conn, func()) {
	ch := make(chan net.Conn, 1)
	l.mu.Lock()
	if l.claims == nil {
		l.claims = map[netip.AddrPort]chan net.Conn{}
	}
	l.claims[remote] = ch
	l.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			l.mu.Lock()
			if l.claims[remote] == ch {
				delete(l.claims, remote)
			}
			l.mu.Unlock()
			select {
			case c := <-ch:
				c.Close()
			default:
			}
		})
	}
}

// passThrough hands c to its claim, if any, and reports whether it did.
func (l *Listener) passThrough(c net.Conn) bool {
	ra := addrPort(c.RemoteAddr())
	l.mu.Lock()
	defer l.mu.Unlock()
	ch, ok := l.claims[ra]
	if !ok {
		return false
	}
	select {
	case ch <- c:
	default:
		c.Close() // one was handed over already
	}
	return true
}

// admit counts c as pending, unless that would break a limit.
func (l *Listener) admit(c net.Conn) bool {
	ip := addrPort(c.RemoteAddr()).Addr()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil || len(l.pending) >= l.lim.MaxPending || l.perIP[ip] >= l.lim.MaxPendingPerIP {
		return false
	}
	l.pending[c] = ip
	l.perIP[ip]++
	return true
}

func (l *Listener) done(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ip, ok := l.pending[c]
	if !ok {
		return
	}
	delete(l.pending, c)
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

func (l *Listener) handshake(c net.Conn) {
	defer l.wg.Done()
	ctx, cancel := context.WithTimeout(l.ctx, l.lim.HandshakeTimeout)
	sess, err := stream.Server(ctx, c, l.key, l.cfg) // closes c on error
	cancel()
	l.done(c)
	if err != nil {
		l.failed.Add(1)
		l.log.Debug("direct-tcp: handshake failed", "from", c.RemoteAddr(), "err", err)
		return
	}
	if l.ctx.Err() != nil {
		sess.Abort()
		return
	}
	l.sessions.Add(1)
	sess.SetStrategy(Name)
	l.log.Debug("direct-tcp: session accepted", "peer", sess.RemotePeer().Short(), "from", sess.RemoteAddr())
	if !l.handler(sess) {
		sess.Abort()
	}
}

// listen opens the node's TCP listener on addr's address and, if it is
// free, its port (the UDP socket's: one port number for both, which is
// what a simultaneous open from the listening port needs); otherwise on
// any port. The socket allows address and port reuse (reuse_*.go), so
// that outgoing connections can later be bound to the same port.
func listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	network := "tcp"
	if addr.Addr().Is4() || addr.Addr().Is4In6() {
		network = "tcp4"
		addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	}
	lc := net.ListenConfig{Control: reuseControl}
	ln, err := lc.Listen(ctx, network, addr.String())
	if err == nil {
		return ln, nil
	}
	if addr.Port() == 0 {
		return nil, err
	}
	ln, err2 := lc.Listen(ctx, network, netip.AddrPortFrom(addr.Addr(), 0).String())
	if err2 != nil {
		return nil, fmt.Errorf("directtcp: listen on %v: %w; on any port: %w", addr, err, err2)
	}
	return ln, nil
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
