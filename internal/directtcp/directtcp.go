// Package directtcp is the rung "direct-tcp": TLS 1.3 with yamux on top
// (stream.Client and stream.Server), over TCP connections to the peer's
// advertised TCP host addresses. It is the way out of networks that drop
// UDP but let TCP out (many corporate and hotel firewalls) towards a peer
// whose TCP listener can be reached as it is: a public host, a manual port
// forward, the same LAN.
//
// The rung owns the node's TCP listener (Listener): it listens on the port
// number of the node's UDP socket where it can, accepts sessions within
// Limits, and hands them to the node like its other sessions. Sessions are
// the same *stream.Session as QUIC ones; their Transport is "tcp".
package directtcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// Name is the strategy's name in the ladder.
const Name = "direct-tcp"

// ErrNoAddress: the peer advertised no TCP address (it has no TCP
// listener, or predates TCP paths).
var ErrNoAddress = errors.New("direct-tcp: peer has no TCP address")

// ErrNoReversal: the peer did not connect back within reverseWait (and no
// dial out worked).
var ErrNoReversal = errors.New("direct-tcp: the peer did not connect back")

// reverseWait bounds how long a dial waits for the peer to connect back:
// the peer's reversal gives up after ReverseTimeout from its introduction,
// which came before this dial started; the rest is for its handshake to
// arrive. The rung thus gives up on its own, long before a caller's
// deadline (TestLabSignallingOverTCP).
const reverseWait = ReverseTimeout + 2*time.Second

// Rung dials the peer's TCP host candidates at once; the first connection
// whose TLS handshake proves the peer's key wins, the others are closed.
// Where the peer can also be reached over UDP, the QUIC rungs win: the
// table puts this rung after direct, which keeps its head start whenever
// the peer looks reachable and both sides' UDP works (see
// docs/architecture.md, "TCP paths").
type Rung struct {
	rung.Base
	h   *rung.Host
	lim Limits

	mu        sync.Mutex
	ln        *Listener // nil before Start, or when listening failed
	expect    map[identity.PeerID]*expectation
	reversals int // running now
}

// New makes the rung for the node h; lim bounds its listener.
func New(h *rung.Host, lim Limits) *Rung {
	return &Rung{h: h, lim: lim, expect: map[identity.PeerID]*expectation{}}
}

// Name implements rung.Rung.
func (*Rung) Name() string { return Name }

// Start implements rung.Rung: it opens the node's TCP listener. A node
// whose listener cannot be opened works without one (it advertises no
// TCP address and still dials).
func (r *Rung) Start(ctx context.Context) error {
	ln, err := listen(ctx, r.h.Socket.LocalAddr())
	if err != nil {
		r.h.Logger.Warn("direct-tcp: no TCP listener", "err", err)
		return nil
	}
	l := Serve(ln, r.h.Key, r.h.Session, r.lim, r.h.Logger, r.deliver)
	r.mu.Lock()
	r.ln = l
	r.mu.Unlock()
	r.h.Logger.Debug("direct-tcp: listening", "addr", l.Addr())
	return nil
}

// Close implements rung.Rung: it closes the listener.
func (r *Rung) Close() {
	r.mu.Lock()
	l := r.ln
	r.ln = nil
	r.mu.Unlock()
	if l != nil {
		l.Close()
	}
}

// Listener returns the node's TCP listener, or nil without one.
func (r *Rung) Listener() *Listener {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ln
}

// Candidates implements rung.Rung: the listener's addresses.
func (r *Rung) Candidates() []candidate.Candidate {
	l := r.Listener()
	if l == nil {
		return nil
	}
	la := l.Addr()
	if !la.Addr().IsUnspecified() {
		return []candidate.Candidate{{Addr: la, Kind: candidate.TCPHost}}
	}
	addrs, err := r.h.InterfaceAddrs()
	if err != nil {
		r.h.Logger.Warn("listing interface addresses", "err", err)
	}
	return candidate.TCPHostAddrs(addrs, la.Port(), r.h.Local, la.Addr().Is6())
}

// Plan implements rung.Rung: the rung sits out when the peer has no TCP
// address and will not connect back (reverse.go), and never holds the
// next rungs back (it gets no head start: the QUIC rungs after it are as
// good a path when they work).
func (r *Rung) Plan(a *rung.Attempt, _ time.Duration) (time.Duration, bool) {
	return 0, len(r.targets(a.Remote)) > 0 || r.expectsReversal(a)
}

// targets returns the peer's TCP addresses to dial: its listener's own
// addresses, and its gateway's mappings when UDP looks blocked (else the
// port-mapping rung's QUIC to the UDP mapping is the better path through
// the same gateway).
func (r *Rung) targets(p candidate.PeerInfo) []netip.AddrPort {
	if r.udpBlocked(p) {
		return p.Addrs(candidate.TCPMapped, candidate.TCPHost)
	}
	return p.Addrs(candidate.TCPHost)
}

// Connect implements rung.Rung: it dials the peer's TCP addresses and,
// when the peer may connect back (reverse.go), also takes the session the
// peer opens; the first of either wins.
func (r *Rung) Connect(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	targets := r.targets(a.Remote)
	var in <-chan *stream.Session
	if r.expectsReversal(a) {
		in = r.inbound(a.Peer)
	}
	if len(targets) == 0 && in == nil {
		return nil, ErrNoAddress
	}
	if in == nil {
		return DialFirst(ctx, a, r.dialer(), targets)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   *stream.Session
		err error
	}
	var out chan result // nil: no dial out (or it failed)
	if len(targets) > 0 {
		out = make(chan result, 1)
		go func() {
			s, err := DialFirst(ctx, a, r.dialer(), targets)
			out <- result{s, err}
		}()
	}
	var dialErr error
	back := time.NewTimer(reverseWait)
	defer back.Stop()
	for {
		select {
		case <-back.C:
			// The peer did not connect back in time: what it may still
			// open is closed with the race's leftovers.
			in = nil
			if out == nil {
				return nil, errors.Join(ErrNoReversal, dialErr)
			}
		case res := <-out:
			if res.err == nil {
				return res.s, nil
			}
			dialErr, out = res.err, nil // the peer may still connect back
		case s := <-in:
			r.h.Logger.Debug("direct-tcp: the peer connected back", "peer", a.Peer.Short(), "path", s.RemoteAddr())
			if out != nil {
				cancel()
				if res := <-out; res.err == nil {
					res.s.Abort()
				}
			}
			return s, nil
		case <-ctx.Done():
			if out != nil {
				if res := <-out; res.err == nil {
					res.s.Abort()
				}
			}
			if dialErr != nil {
				return nil, errors.Join(ctx.Err(), dialErr)
			}
			return nil, fmt.Errorf("direct-tcp: waiting for the peer to connect back: %w", ctx.Err())
		}
	}
}

// DialFunc opens a TCP connection (net.Dialer.DialContext's signature).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (r *Rung) dialer() DialFunc {
	if r.h.DialTCP != nil {
		return r.h.DialTCP
	}
	var d net.Dialer
	return d.DialContext
}

// DialFirst connects to every target at once and runs TLS+yamux on each
// connection; the first session that proves a.Peer's key wins, the other
// attempts are cancelled and any session they still make is closed. It
// returns only when every attempt has ended, so nothing it started
// outlives it. If all fail it returns their errors joined.
func DialFirst(ctx context.Context, a *rung.Attempt, dial DialFunc, targets []netip.AddrPort) (*stream.Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   *stream.Session
		err error
	}
	results := make(chan result, len(targets))
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Go(func() {
			s, err := dialOne(ctx, a, dial, t)
			if err != nil {
				err = fmt.Errorf("%s: %w", t, err)
			}
			results <- result{s, err}
		})
	}
	var winner *stream.Session
	var errs []error
	for range targets {
		r := <-results
		switch {
		case r.err != nil:
			errs = append(errs, r.err)
		case winner == nil:
			winner = r.s
			cancel()
		default:
			r.s.Abort() // a loser that finished anyway
		}
	}
	wg.Wait()
	if winner != nil {
		return winner, nil
	}
	if ctx.Err() != nil {
		errs = append([]error{ctx.Err()}, errs...)
	}
	return nil, errors.Join(errs...)
}

// dialOne makes one TCP connection and a TLS+yamux session on it, both
// bounded by the session config's handshake timeout.
func dialOne(ctx context.Context, a *rung.Attempt, dial DialFunc, t netip.AddrPort) (*stream.Session, error) {
	hs := a.Session.HandshakeTimeout
	if hs <= 0 {
		hs = stream.DefaultHandshakeTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, hs)
	defer cancel()
	c, err := dial(dctx, "tcp", t.String())
	if err != nil {
		return nil, err
	}
	// The connection must not outlive a cancelled dial: stream.Client
	// closes it on every error, and its handshake follows dctx.
	return stream.Client(dctx, c, a.Key, a.Peer, a.Session)
}
