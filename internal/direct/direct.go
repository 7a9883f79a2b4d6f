// Package direct is the first rung of the ladder: it dials the peer's
// advertised addresses as they are, with no help from the peer beyond
// listening. It wins when the peer is reachable already: on the same LAN,
// on a public address, behind a manual port forward or a full-cone NAT, or
// over IPv6 without a blocking firewall.
package direct

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// Name is the strategy's name in the ladder.
const Name = "direct"

// PlausibleHeadStart is the least head start direct gets when one of the
// peer's host addresses is public or on one of our networks.
const PlausibleHeadStart = 200 * time.Millisecond

// ErrNoAddress: the peer advertised no address this strategy can dial.
var ErrNoAddress = errors.New("direct: peer has no dialable address")

// Rung dials every host candidate of the peer (the addresses of its
// own interfaces: LAN, public, IPv6) at once over the node's socket; the
// first QUIC session that proves the peer's key wins and the other attempts
// are cancelled. Reflexive addresses are left to holepunch, whose checks
// open the NAT on both sides first (a reflexive address that works without
// that, as behind a full-cone NAT, is found by holepunch just as fast), and
// mapped ones to the port-mapping strategy: so the strategy that wins says
// truthfully what made the path.
//
// The rung also advertises the node's host candidates (the addresses of
// its own interfaces), which hole punching checks too.
type Rung struct {
	rung.Base
	h *rung.Host
}

// New makes the rung for the node h.
func New(h *rung.Host) *Rung { return &Rung{h: h} }

// Name implements rung.Rung.
func (*Rung) Name() string { return Name }

// Targets returns the addresses Connect dials, in the order given.
func Targets(remote candidate.PeerInfo) []netip.AddrPort {
	return remote.Addrs(candidate.Host)
}

// Candidates implements rung.Rung: the node's host addresses.
func (r *Rung) Candidates() []candidate.Candidate {
	la := r.h.Socket.LocalAddr()
	if !la.Addr().IsUnspecified() {
		return []candidate.Candidate{{Addr: la, Kind: candidate.Host}}
	}
	addrs, err := r.h.InterfaceAddrs()
	if err != nil {
		r.h.Logger.Warn("listing interface addresses", "err", err)
	}
	return candidate.HostAddrs(addrs, la.Port(), r.h.Local, la.Addr().Is6())
}

// Plan implements rung.Rung: when none of the peer's host candidates can
// plausibly be reached as it is (a public address, or one on a network
// this node is on), direct gets no head start, so the next rungs do not
// wait for it.
//
// Nor does it when either side's UDP looks blocked (the peer's server saw
// no UDP from it, or this node registered over TCP): QUIC can then only
// work on a shared LAN, and direct-tcp, next in the table, should not
// wait for it.
func (r *Rung) Plan(a *rung.Attempt, headStart time.Duration) (time.Duration, bool) {
	if !a.Remote.HasUDP() || r.h.Observed != nil && !r.h.Observed().IsValid() {
		return 0, true
	}
	addrs, _ := r.h.InterfaceAddrs()
	if a.Remote.DirectPlausible(candidate.Prefixes(addrs)) {
		// A handshake's worth: otherwise hole punching's optimistic dial
		// to the reflexive (IPv4) address races the direct one to a
		// public (IPv6) address and takes it on a busy machine.
		return max(headStart, PlausibleHeadStart), true
	}
	return 0, true
}

// Connect implements rung.Rung.
func (r *Rung) Connect(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	targets := r.reachable(Targets(a.Remote))
	if len(targets) == 0 {
		return nil, ErrNoAddress
	}
	return DialFirst(ctx, a, targets)
}

// reachable drops the IPv6 targets this node has no IPv6 address to reach
// from: a dial to them only fails at its handshake timeout (the socket
// cannot send, and sends that fail are dropped like lost packets), and
// Happy Eyeballs would hold the IPv4 targets back for IPv4Delay meanwhile.
// Without a global IPv6 address only unique-local and loopback ones may be
// reachable; with none at all (or an IPv4 socket), no IPv6 target is.
func (r *Rung) reachable(targets []netip.AddrPort) []netip.AddrPort {
	la := r.h.Socket.LocalAddr().Addr()
	var global, ula, loop bool
	if la.Is6() && !la.Is4In6() {
		if !la.IsUnspecified() {
			global, ula, loop = la.IsGlobalUnicast() && !la.IsPrivate(), la.IsPrivate(), la.IsLoopback()
		} else if r.h.InterfaceAddrs != nil {
			addrs, _ := r.h.InterfaceAddrs()
			for _, p := range candidate.Prefixes(addrs) {
				a := p.Addr()
				if !a.Is6() || a.Is4In6() {
					continue
				}
				global = global || a.IsGlobalUnicast() && !a.IsPrivate()
				ula = ula || a.IsPrivate()
				loop = loop || a.IsLoopback()
			}
		}
	}
	out := targets[:0:0]
	for _, t := range targets {
		a := t.Addr()
		switch {
		case !isV6(t), global, a.IsPrivate() && ula, a.IsLoopback() && loop:
			out = append(out, t)
		}
	}
	return out
}

// IPv4Delay is how long DialFirst lets IPv6 targets try alone (Happy
// Eyeballs, RFC 8305 §5, which allows 10 ms to 2 s; a LAN or an open host
// answers within a few milliseconds): a host reachable both ways gets its
// IPv6 path, and a broken IPv6 path costs this much.
const IPv4Delay = 50 * time.Millisecond

// DialFirst dials every target and returns the first session; the rest are
// cancelled, and any that completes anyway is closed. IPv6 targets start
// at once, IPv4 targets IPv4Delay later (at once if there is no IPv6
// target or every IPv6 dial failed). If all fail it returns every error
// joined.
func DialFirst(ctx context.Context, a *rung.Attempt, targets []netip.AddrPort) (*stream.Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   *stream.Session
		err error
		v6  bool
	}
	results := make(chan result, len(targets))
	var wg sync.WaitGroup
	start := func(t netip.AddrPort) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := stream.Dial(ctx, a.Socket.Transport(), t, a.Key, a.Peer, a.Session)
			if err != nil {
				err = fmt.Errorf("%s: %w", t, err)
			}
			results <- result{s, err, isV6(t)}
		}()
	}
	var v4 []netip.AddrPort
	v6 := 0
	for _, t := range targets {
		if isV6(t) {
			start(t)
			v6++
		} else {
			v4 = append(v4, t)
		}
	}
	var later <-chan time.Time
	if v6 == 0 {
		for _, t := range v4 {
			start(t)
		}
		v4 = nil
	} else if len(v4) > 0 {
		tm := time.NewTimer(IPv4Delay)
		defer tm.Stop()
		later = tm.C
	}
	startV4 := func() {
		for _, t := range v4 {
			start(t)
		}
		v4, later = nil, nil
	}
	pending := len(targets)
	var winner *stream.Session
	var errs []error
	failed6 := 0
	for pending > 0 {
		var r result
		select {
		case r = <-results:
		case <-later:
			startV4()
			continue
		}
		pending--
		switch {
		case r.err != nil:
			errs = append(errs, r.err)
			if r.v6 {
				if failed6++; failed6 == v6 && winner == nil {
					startV4()
				}
			}
		case winner == nil:
			winner = r.s
			cancel()
			if len(v4) > 0 { // never started: they count as done
				pending -= len(v4)
				v4, later = nil, nil
			}
		default:
			r.s.CloseWithError(0, "lost the race")
		}
	}
	wg.Wait()
	if winner != nil {
		return winner, nil
	}
	if ctx.Err() != nil && len(errs) > 0 {
		return nil, errors.Join(append([]error{ctx.Err()}, errs...)...)
	}
	return nil, errors.Join(errs...)
}

func isV6(a netip.AddrPort) bool { return a.Addr().Is6() && !a.Addr().Is4In6() }
