// Package holepunchtcp is the rung "holepunch-tcp": TCP hole punching by
// simultaneous open, for pairs where UDP looks blocked on a side and
// neither TCP listener can be reached as it is (a peer behind a firewall
// that drops UDP and lets TCP out, and a peer behind a cone NAT or the
// same kind of firewall).
//
// Each side connects, from the port its TCP listener (the direct-tcp
// rung's) listens on, to the peer's predicted public TCP address
// (candidate.PeerInfo.TCPPunchAddr): the listener when the introduction
// arrives, before it answers, with a first SYN whose TTL is small (a
// primer: it opens the listener's own NAT and expires before the
// dialler's router, leaving it no state; its socket ignores the ICMP
// error that expiry brings back, whenever it comes, and nothing else),
// the dialler when the answer arrives. The SYN that meets the other
// side's outgoing state gets in: either both connect() calls complete
// (simultaneous open) or one side's listener accepts. A connect() the peer's side turns away (a reset) is
// tried again with a fresh socket every RetryEvery, within Limits.
//
// The introduction fixes the TLS roles, not the sockets: the dialler is
// always the client of TLS 1.3 (pinned keys) and yamux, the listener the
// server. A connection the dialler's own listener accepts from the peer
// during the punch is claimed raw (directtcp.Listener.Claim) so that the
// dialler runs the client side on it too.
package holepunchtcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/directtcp"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// Name is the strategy's name in the ladder.
const Name = "holepunch-tcp"

// Errors of a punch.
var (
	// ErrNotApplicable: this pair is not one for holepunch-tcp (no TCP
	// listener on a side, no predicted public TCP address, or UDP works
	// on both sides).
	ErrNotApplicable = errors.New("holepunch-tcp: not applicable to this pair")
	// ErrNoConnection: no connection within the punch's window and
	// attempts.
	ErrNoConnection = errors.New("holepunch-tcp: no connection")
)

// Defaults of the punch's bounds (Limits).
const (
	// DefaultWindow is how long one side punches per introduction.
	DefaultWindow = 5 * time.Second
	// DefaultMaxAttempts is how many connect() calls (each a fresh
	// socket, so at most that many SYNs plus the kernel's retransmissions
	// of the last, 1 s and 3 s later) one side makes per introduction.
	DefaultMaxAttempts = 16
	// DefaultMaxPunches is how many introductions the listening side
	// punches for at once (one per dialler); more get no punch.
	DefaultMaxPunches = 8
	// DefaultPrimerTTL is the TTL of the listening side's first SYN.
	DefaultPrimerTTL = 2
	// RetryEvery is the least time between two connect() calls of one
	// side.
	RetryEvery = 200 * time.Millisecond
	// ListenerHold is how long the listening side waits after its primer
	// (or a failed SYN) before it sends a full SYN: the primer's state in
	// its own NAT lets the dialler's SYN through to its listener
	// meanwhile, and a SYN of its own to the dialler after that would
	// reset the connection.
	ListenerHold = time.Second
)

// Limits bound what an introduction makes a node do. Zero fields take
// the defaults.
type Limits struct {
	// Window: how long one side punches per introduction.
	// Zero: DefaultWindow.
	Window time.Duration
	// MaxAttempts: connect() calls per introduction and side.
	// Zero: DefaultMaxAttempts.
	MaxAttempts int
	// MaxPunches: introductions punched for at once by the listening
	// side. Zero: DefaultMaxPunches.
	MaxPunches int
	// PrimerTTL: the TTL of the listening side's first SYN.
	// Zero: DefaultPrimerTTL; negative: full TTL from the start.
	PrimerTTL int
}

func (l Limits) withDefaults() Limits {
	if l.Window <= 0 {
		l.Window = DefaultWindow
	}
	if l.MaxAttempts <= 0 {
		l.MaxAttempts = DefaultMaxAttempts
	}
	if l.MaxPunches <= 0 {
		l.MaxPunches = DefaultMaxPunches
	}
	if l.PrimerTTL == 0 {
		l.PrimerTTL = DefaultPrimerTTL
	}
	return l
}

// Rung punches TCP for the node h through the listener of its direct-tcp
// rung.
type Rung struct {
	rung.Base
	h   *rung.Host
	dt  *directtcp.Rung
	lim Limits
	// mapped reports whether this node's TCP listener is mapped at its
	// gateway (nil: never).
	mapped func() bool

	mu      sync.Mutex
	punches map[identity.PeerID]bool // listening side, running now
	hop     time.Duration            // measureHop's time to the ICMP of a primer-TTL SYN (zero: none or unknown)
	farTTL  bool                     // a primer-TTL SYN reached the server: primers go one hop further
	baseTTL int                      // the primers' TTL past any router inside a carrier's NAT (zero: Limits.PrimerTTL)
	// measured is closed when Start's measurement is over (or was not
	// made); readyAt is when Start started it.
	measured     chan struct{}
	measuredOnce sync.Once
	readyAt      time.Time
}

// New makes the rung for the node h; dt owns the TCP listener.
func New(h *rung.Host, dt *directtcp.Rung, lim Limits, mapped func() bool) *Rung {
	return &Rung{h: h, dt: dt, lim: lim.withDefaults(), mapped: mapped, punches: map[identity.PeerID]bool{}, measured: make(chan struct{})}
}

// Name implements rung.Rung.
func (*Rung) Name() string { return Name }

// Start implements rung.Rung: while the node registers, it learns in
// the background how far the first router that answers a primer is
// (measureHop towards the server it registers with first), for
// primerTTL and its offers (PrimerFar). Started after the
// registration, the measurement's round trip came after it, and a node
// that dials as soon as it registered (the CLI's, the matrix's) either
// waited for it in its first offer or sent that offer without it (and a
// listener that then took a home dialler for one behind its provider's
// router primed it wrongly: the matrix, 1 of 3 dials relayed).
func (r *Rung) Start(context.Context) error {
	done := func() { r.measuredOnce.Do(func() { close(r.measured) }) }
	if r.dt.Listener() == nil || r.lim.PrimerTTL <= 0 || r.h.Server == nil {
		done()
		return nil
	}
	sa := r.h.Server()
	if sa.IsZero() && r.h.Servers != nil {
		if l := r.h.Servers(); len(l) > 0 {
			sa = l[0]
		}
	}
	if sa.IsZero() {
		done()
		return nil
	}
	r.mu.Lock()
	r.readyAt = time.Now()
	r.mu.Unlock()
	r.h.Go(func() {
		defer done()
		ctx, cancel := context.WithTimeout(r.h.Context, 5*time.Second)
		defer cancel()
		addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", sa.Host)
		if err != nil || len(addrs) == 0 {
			return
		}
		inNet := r.h.RunInNetwork
		if inNet == nil {
			inNet = func(f func() error) error { return f() }
		}
		port := sa.TCPPort
		if port == 0 {
			port = sa.Port
		}
		to := netip.AddrPortFrom(addrs[0].Unmap(), port)
		// A router inside a carrier's NAT (a double NAT) answers from a
		// shared (100.64.0.0/10) or private address: the primer must get
		// past it too, or the outer NAT never maps the listening port
		// (its SYN dies before it gets there). One hop more per router on
		// a shared address, at most maxInnerHops; a private address counts
		// only for the first router (an outer home router), since
		// providers number their own routers in 10/8 as well, and a
		// primer that goes too far may meet the peer's router.
		measure := func(ttl int) (time.Duration, bool, netip.Addr) {
			hop, silent, router := measureHop(ctx, inNet, to, ttl, 2*time.Second)
			r.h.Logger.Debug("holepunch-tcp: first answering router", "ttl", ttl, "after", hop, "reached_server", silent, "router", router)
			return hop, silent, router
		}
		hop, silent, ttl := climbInner(ctx, r.lim.PrimerTTL, measure, func(hop time.Duration, ttl int) {
			// Primers from now on go at least this far while the next
			// measurement runs: routers limit their ICMP errors (Linux:
			// about one a second to one destination once a burst is
			// spent), and a node behind a carrier's NAT that started
			// just after another had its second answer a second late
			// while a dial primed with the first TTL, which dies inside
			// the carrier's NAT (the matrix, 1 in 8 dials).
			r.mu.Lock()
			r.hop, r.baseTTL = hop, ttl
			r.mu.Unlock()
		})
		r.mu.Lock()
		r.hop, r.farTTL, r.baseTTL = hop, silent, ttl
		r.mu.Unlock()
	})
	return nil
}

// primerTTL is the TTL of this node's primers towards a dialler whose
// offer said peerFar: Limits.PrimerTTL (past any router inside a
// carrier's NAT: Start), or one more when a SYN of that TTL reached the
// server (Start), i.e. no router within that many hops answers on the
// server's path, and the dialler's did too (PeerInfo.PrimerFar: no router
// of its provider stands before its own). The first router a primer meets
// beyond our own is then the dialler's, and a primer that comes there
// after the dialler's SYN went out is better let through to it (a
// simultaneous open on both sides) than answered with an ICMP error that
// kills the primer's connection once the dialler's SYN made it one (seen
// in the lab between two home routers with delayed links). Where the
// dialler has a provider's router before its own, one hop further would
// reach the dialler's router itself before its SYN left, and a router
// that answers SYNs to itself (linux-host) resets the primer's flow in
// our NAT: the lab's linux-host diallers behind ISP hops lost every punch
// to home listeners that way (the matrix, 2026-12-01).
func (r *Rung) primerTTL(peerFar bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	ttl := max(r.baseTTL, r.lim.PrimerTTL)
	if r.farTTL && peerFar {
		return ttl + 1
	}
	return ttl
}

// far reports whether this node's primer-TTL SYN reached its server (no
// router of its provider before its own NAT's next hop answers it), for
// its offers (PeerInfo.PrimerFar).
func (r *Rung) far() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.farTTL
}

// maxInnerHops bounds how many routers inside a carrier's NAT the
// primer's TTL grows by.
const maxInnerHops = 2

// climbInner measures (measure) the first router that answers a SYN of
// TTL base, and one hop further for each router inside a carrier's NAT
// (innerRouter), at most maxInnerHops; provisional gets each such
// router's answer time and the TTL past it while the next measurement
// runs. It returns the last answer time, whether the last SYN reached the
// server, and the TTL. When nothing answers past an inner router (its
// ICMP rate limit, the deadline), the inner router's time stands (a
// primer that dies further on is answered no sooner), and the TTL stays
// raised. When the SYN past it reached the server, no router within that
// TTL answers, and the time is zero again.
func climbInner(ctx context.Context, base int, measure func(ttl int) (time.Duration, bool, netip.Addr), provisional func(hop time.Duration, ttl int)) (hop time.Duration, silent bool, ttl int) {
	var known time.Duration // the last inner router's answer time
	for ttl = base; ; {
		var router netip.Addr
		hop, silent, router = measure(ttl)
		if hop == 0 || ctx.Err() != nil || !innerRouter(router, ttl == base) || ttl >= base+maxInnerHops {
			if hop == 0 && !silent {
				hop = known
			}
			return hop, silent, ttl
		}
		known = hop
		ttl++
		provisional(hop, ttl)
	}
}

// innerRouter reports whether a router that answered a primer-TTL SYN
// from addr is likely inside a NAT of our own, so that the primer must go
// one hop further: an address of a carrier's NAT (RFC 6598 shared space)
// anywhere, a private (RFC 1918) or link-local one only as the first
// router asked (first).
func innerRouter(addr netip.Addr, first bool) bool {
	addr = addr.Unmap()
	if !addr.IsValid() {
		return false
	}
	return cgnat.Contains(addr) || first && (addr.IsPrivate() || addr.IsLinkLocalUnicast())
}

// MeasureWait bounds how long an introduction waits for Start's
// measurement (measureHop: one round trip to the first router that
// answers, or to the server).
const MeasureWait = 300 * time.Millisecond

// measuredHop is what Start measured (zero: nothing answered, or not
// yet).
func (r *Rung) measuredHop() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hop
}

// Offer implements rung.Rung: the offer says whether the dialler's
// primer-TTL SYN reached the server (PrimerFar), once Start's measurement
// is over (it started before the node registered, so a node that dials at
// once rarely waits).
func (r *Rung) Offer(_ context.Context, offer *candidate.PeerInfo) func() {
	if r.dt.Listener() != nil {
		r.waitMeasured()
		offer.PrimerFar = r.far()
	}
	return nil
}

// waitMeasured waits for Start's measurement, at most until MeasureWait
// after Start started it (so the wait is paid once, by the first
// introduction or dial after the node started), or the node's end.
func (r *Rung) waitMeasured() {
	r.mu.Lock()
	until := r.readyAt.Add(MeasureWait)
	r.mu.Unlock()
	if d := time.Until(until); d > 0 {
		wait := time.NewTimer(d)
		select {
		case <-r.measured:
		case <-wait.C:
		case <-r.h.Context.Done():
		}
		wait.Stop()
	}
}

// pair returns the local address to punch from and the peer's predicted
// address, for the peer whose offer or answer is p; ok is false when the
// rung does not apply.
func (r *Rung) pair(p candidate.PeerInfo) (local, target netip.AddrPort, ok bool) {
	ln := r.dt.Listener()
	if ln == nil || !r.dt.UDPBlocked(p) {
		return local, target, false
	}
	target = p.TCPPunchAddr()
	if !target.IsValid() || slices.Contains(p.Addrs(candidate.TCPHost), target) || r.public() ||
		len(p.Addrs(candidate.TCPMapped)) > 0 || r.mapped != nil && r.mapped() {
		// A side whose listener is public, or mapped at its gateway, is
		// direct-tcp's: a punch would only race it (and the peer's SYN
		// could reach this listener before a dial claims it).
		return local, target, false
	}
	local = ln.Addr()
	if !local.Addr().Is4() {
		local = netip.AddrPortFrom(netip.IPv4Unspecified(), local.Port())
	}
	return local, target, true
}

// public reports whether this node's TCP listener has a public IPv4
// address of its own.
func (r *Rung) public() bool {
	for _, c := range r.dt.Candidates() {
		if ip := c.Addr.Addr().Unmap(); ip.Is4() && ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip) {
			return true
		}
	}
	return false
}

// cgnat is the shared address space of carrier NATs (RFC 6598): not
// public.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// Plan implements rung.Rung: the rung runs only when it applies.
func (r *Rung) Plan(a *rung.Attempt, hs time.Duration) (time.Duration, bool) {
	_, _, ok := r.pair(a.Remote)
	return hs, ok
}

// Introduced implements rung.Rung: the listening side starts punching
// towards the dialler, its first SYN a primer, before it answers.
func (r *Rung) Introduced(offer candidate.PeerInfo) {
	if offer.Move {
		return
	}
	local, target, ok := r.pair(offer)
	if !ok {
		return
	}
	r.mu.Lock()
	if len(r.punches) >= r.lim.MaxPunches || r.punches[offer.Peer] {
		r.mu.Unlock()
		r.h.Logger.Debug("holepunch-tcp: no punch, too many at once", "peer", offer.Peer.Short())
		return
	}
	r.punches[offer.Peer] = true
	r.mu.Unlock()
	// An introduction that comes right after the node started waits a
	// little for the measurement the primer's TTL depends on.
	r.waitMeasured()
	// The primer's SYN leaves before the answer does: started here, not
	// on a goroutine that might run later.
	ctx, cancel := context.WithTimeout(r.h.Context, r.lim.Window)
	first := make(chan struct{})
	r.h.Go(func() {
		defer func() {
			cancel()
			r.mu.Lock()
			delete(r.punches, offer.Peer)
			r.mu.Unlock()
		}()
		ttl := r.primerTTL(offer.PrimerFar)
		r.h.Logger.Debug("holepunch-tcp: priming", "peer", offer.Peer.Short(), "target", target, "ttl", ttl, "hop", r.measuredHop())
		c, n, err := r.punch(ctx, local, target, ttl, first)
		if err != nil && r.dt.Listener() != nil && r.dt.Listener().Accepted(target) {
			err = errTaken // the dialler's connection came to the listener
		}
		if err != nil {
			if !errors.Is(err, errTaken) {
				r.h.Logger.Debug("holepunch-tcp: listener's punch failed", "peer", offer.Peer.Short(), "target", target, "attempts", n, "err", err)
			}
			return
		}
		hctx, hcancel := context.WithTimeout(r.h.Context, r.handshakeTimeout())
		sess, err := stream.Server(hctx, c, r.h.Key, r.h.Session) // closes c on error
		hcancel()
		if err != nil {
			r.h.Logger.Debug("holepunch-tcp: handshake failed", "peer", offer.Peer.Short(), "err", err)
			return
		}
		if sess.RemotePeer() != offer.Peer {
			r.h.Logger.Debug("holepunch-tcp: wrong peer", "want", offer.Peer.Short(), "got", sess.RemotePeer().Short())
			sess.Abort()
			return
		}
		sess.SetStrategy(Name)
		r.h.Logger.Debug("holepunch-tcp: punched (listener)", "peer", offer.Peer.Short(), "path", sess.RemoteAddr(), "attempts", n)
		if !r.h.Accepted(sess) {
			sess.Abort()
		}
	})
	select { // the first connect() has been made, or the punch ended
	case <-first:
	case <-ctx.Done():
	}
}

func (r *Rung) handshakeTimeout() time.Duration {
	if t := r.h.Session.HandshakeTimeout; t > 0 {
		return t
	}
	return stream.DefaultHandshakeTimeout
}

// Connect implements rung.Rung: the dialling side punches towards the
// peer and runs the client side of TLS and yamux on the first connection,
// whether its own connect() made it or its listener accepted it.
func (r *Rung) Connect(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	local, target, ok := r.pair(a.Remote)
	if !ok {
		return nil, ErrNotApplicable
	}
	ln := r.dt.Listener()
	if ln == nil {
		return nil, ErrNotApplicable
	}
	pctx, cancel := context.WithTimeout(ctx, r.lim.Window)
	defer cancel()
	// A connection the peer's side resets during the handshake (its
	// side of a simultaneous open killed by a late ICMP error for the
	// listener's primer, seen in the lab with delayed links) leaves the
	// holes open: punch again, within the window, at most MaxResets times.
	var errs []error
	for range MaxResets + 1 {
		sess, err := r.connectOnce(ctx, pctx, a, ln, local, target)
		if err == nil {
			return sess, nil
		}
		errs = append(errs, err)
		if !errors.Is(err, syscall.ECONNRESET) || pctx.Err() != nil {
			break
		}
		r.h.Logger.Debug("holepunch-tcp: reset during the handshake, punching again", "peer", a.Peer.Short(), "err", err)
	}
	return nil, errors.Join(errs...)
}

// MaxResets is how many times a dial punches again after the peer's side
// reset a punched connection during the handshake.
const MaxResets = 2

// connectOnce is one punch of Connect and the handshake on its
// connection; pctx bounds the punch, ctx the handshake.
func (r *Rung) connectOnce(ctx, pctx context.Context, a *rung.Attempt, ln *directtcp.Listener, local, target netip.AddrPort) (*stream.Session, error) {
	claimed, release := ln.Claim(target)
	defer release()
	afterClaim()
	pctx, cancel := context.WithCancel(pctx)
	defer cancel()
	type result struct {
		c   net.Conn
		n   int
		err error
	}
	out := make(chan result, 1)
	go func() {
		c, n, err := r.punch(pctx, local, target, 0, nil)
		out <- result{c, n, err}
	}()
	var c net.Conn
	var punchErr error
	for c == nil {
		select {
		case res := <-out:
			out = nil
			if res.err == nil {
				c = res.c
				break
			}
			// errTaken: the peer's connection reached our listener,
			// claimed: it is on its way.
			punchErr = fmt.Errorf("%d connects: %w", res.n, res.err)
		case cc := <-claimed:
			claimed = nil
			c = cc
			cancel()
			if out != nil {
				if res := <-out; res.err == nil {
					res.c.Close()
				}
				out = nil
			}
		case <-pctx.Done():
			if out != nil {
				if res := <-out; res.err == nil {
					c = res.c // made just in time
					break
				}
			}
			if ctx.Err() != nil {
				return nil, errors.Join(ctx.Err(), punchErr)
			}
			return nil, errors.Join(ErrNoConnection, punchErr)
		}
	}
	cancel()
	r.h.Logger.Debug("holepunch-tcp: connected", "peer", a.Peer.Short(), "local", c.LocalAddr(), "remote", c.RemoteAddr())
	hctx, hcancel := context.WithTimeout(ctx, r.handshakeTimeout())
	defer hcancel()
	return stream.Client(hctx, c, a.Key, a.Peer, a.Session) // closes c on error
}

// afterClaim is a test hook: Connect calls it once its claim is in place.
var afterClaim = func() {}

// errTaken: the four-tuple is in use, so the peer's connection reached
// this node's listener.
var errTaken = errors.New("holepunch-tcp: the connection exists already (accepted)")

// punch calls connect() from local to target until a connection exists,
// the peer's side answers in a way a fresh socket cannot fix, the attempts
// are used up or ctx ends. With a primerTTL, the first SYN is a primer (of
// that TTL, deaf to its own ICMP error: dialFrom); zero: none. first, if
// not nil, is closed once the first connect() was made.
func (r *Rung) punch(ctx context.Context, local, target netip.AddrPort, primerTTL int, first chan struct{}) (net.Conn, int, error) {
	priming := primerTTL > 0
	inNet := r.h.RunInNetwork
	if inNet == nil {
		inNet = func(f func() error) error { return f() }
	}
	var last error
	for n := 1; n <= r.lim.MaxAttempts; n++ {
		ttl := 0
		if priming && (n == 1 || expired(last)) && r.lim.PrimerTTL > 0 {
			// The first SYN, or again at once when the last primer's
			// socket died of an unreachable error all the same: the
			// state it made in our NAT fits only a live socket's
			// sequence numbers (docs/architecture.md, "TCP paths").
			ttl = primerTTL
		}
		start := time.Now()
		sent := func() {
			if first != nil {
				close(first)
				first = nil
			}
		}
		c, err := dialFrom(ctx, inNet, local, target, ttl, sent)
		sent()
		if err == nil {
			return c, n, nil
		}
		r.h.Logger.Debug("holepunch-tcp: connect failed", "target", target, "attempt", n, "primer_ttl", ttl, "after", time.Since(start).Round(time.Millisecond), "err", err)
		last = err
		switch {
		case ctx.Err() != nil:
			return nil, n, errors.Join(ctx.Err(), last)
		case taken(err):
			return nil, n, errTaken
		case !refused(err):
			return nil, n, err
		}
		wait := RetryEvery
		switch {
		case priming && expired(err) && r.lim.PrimerTTL > 0:
			wait = 0 // prime again at once
		case priming:
			wait = ListenerHold
		}
		// Until the next SYN, watch the listener: the peer's connection
		// arriving there ends the punch (a SYN of ours to it would reset
		// it).
		for deadline := start.Add(wait); ; {
			if ln := r.dt.Listener(); ln != nil && ln.Accepted(target) {
				return nil, n, errTaken
			}
			d := time.Until(deadline)
			if d <= 0 {
				break
			}
			t := time.NewTimer(min(d, 20*time.Millisecond))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, n, errors.Join(ctx.Err(), last)
			}
		}
	}
	return nil, r.lim.MaxAttempts, fmt.Errorf("%w: %d connects: %w", ErrNoConnection, r.lim.MaxAttempts, last)
}
