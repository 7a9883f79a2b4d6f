package holepunch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// Name is the strategy's name in the ladder.
const Name = "holepunch"

// ErrNoPath: the checks ran until the context ended and no address of the
// peer answered.
var ErrNoPath = errors.New("holepunch: no candidate pair answered")

// DefaultLinger is how long the listening side keeps sending punch
// packets after an introduction, when the node's Config does not say.
const DefaultLinger = 15 * time.Second

// Defaults of the listening side's limits (see Limits).
const (
	// DefaultMaxAttempts is how many listener-side attempts run at once.
	DefaultMaxAttempts = 16
	// DefaultPerPeer is how many introductions from one dialler a minute
	// the listening side punches for (a token bucket: 10 at once, then one
	// every 6 s).
	DefaultPerPeer = 10
)

// Outcomes of the listening side's punches (rung.Host.ListenerPunch).
const (
	// OutcomeHeard: the dialler's checks reached the node, or answered
	// its own: the two NATs let the pair through.
	OutcomeHeard = "heard"
	// OutcomeUnheard: nothing came from the dialler while the node
	// punched (Linger).
	OutcomeUnheard = "unheard"
	// OutcomeSkipped: not punched, over the rung's Limits (attempts
	// running, the dialler's introduction rate).
	OutcomeSkipped = "skipped"
	// OutcomeNoCandidates: not punched, no address of the dialler may be
	// punched from here (candidate.PeerInfo.PunchableFrom).
	OutcomeNoCandidates = "no_candidates"
)

// Limits bound what introductions make the listening side send. Zero
// fields take the defaults.
type Limits struct {
	// MaxAttempts: listener-side attempts running at once.
	// Zero: DefaultMaxAttempts.
	MaxAttempts int
	// PerPeer: introductions one dialler (by peer ID) gets punched for a
	// minute. Zero: DefaultPerPeer.
	PerPeer int
	// AttemptPackets: pings of one listener-side attempt over its life.
	// Zero: DefaultAttemptPackets.
	AttemptPackets int
	// PacketsPerSecond: punch packets of the node, all attempts and both
	// sides together. Zero: DefaultPacketsPerSecond.
	PacketsPerSecond int
	// MaxAddrs: addresses of a peer one attempt checks.
	// Zero: candidate.MaxPunchAddrs.
	MaxAddrs int
	// PredictPorts: the next ports of a peer whose symmetric NAT
	// allocates in sequence that one attempt punches besides its
	// candidates (predict.go), at most candidate.MaxPredictPorts. Zero:
	// candidate.DefaultPredictPorts; negative: no prediction.
	PredictPorts int
	// BirthdaySockets: the helper sockets (NAT mappings) the side behind
	// a symmetric NAT with random ports opens towards a peer whose
	// mapping is endpoint-independent (birthday.go), at most
	// MaxBirthdaySockets and the file-descriptor headroom. Zero:
	// DefaultBirthdaySockets; negative: no birthday mode (either role).
	BirthdaySockets int
	// BirthdayProbes: the random ports of such a peer one attempt
	// probes, at most MaxBirthdayProbes and what BirthdayPacketBudget
	// leaves beside AttemptPackets. Zero: DefaultBirthdayProbes;
	// negative: no probes.
	BirthdayProbes int
}

func (l Limits) withDefaults() Limits {
	if l.MaxAttempts <= 0 {
		l.MaxAttempts = DefaultMaxAttempts
	}
	if l.PerPeer <= 0 {
		l.PerPeer = DefaultPerPeer
	}
	if l.AttemptPackets <= 0 {
		l.AttemptPackets = DefaultAttemptPackets
	}
	if l.PacketsPerSecond <= 0 {
		l.PacketsPerSecond = DefaultPacketsPerSecond
	}
	if l.MaxAddrs <= 0 {
		l.MaxAddrs = candidate.MaxPunchAddrs
	}
	if l.PredictPorts == 0 {
		l.PredictPorts = candidate.DefaultPredictPorts
	}
	l.PredictPorts = min(l.PredictPorts, candidate.MaxPredictPorts)
	if l.BirthdaySockets == 0 {
		l.BirthdaySockets = DefaultBirthdaySockets
	}
	l.BirthdaySockets = min(l.BirthdaySockets, MaxBirthdaySockets)
	if l.BirthdayProbes == 0 {
		l.BirthdayProbes = DefaultBirthdayProbes
	}
	l.BirthdayProbes = min(l.BirthdayProbes, MaxBirthdayProbes)
	return l
}

// Rung is hole punching. On the listening side it starts checks towards
// the dialler's punchable candidates when an introduction arrives and keeps
// them up for Linger; on the dialling side it answers the peer's first
// checks from before the introduction is asked for, runs checks against
// every punchable candidate of the peer, then dials QUIC to the first
// address that answered, on the same socket so the NAT mappings the checks
// opened carry the session.
type Rung struct {
	rung.Base
	h *rung.Host
	m *Manager
	// Linger: how long the listening side punches after an
	// introduction. Zero: DefaultLinger.
	Linger time.Duration
	// CheckTimeout bounds how long checks run without any address
	// answering before Connect gives up with ErrNoPath. Zero: 10s.
	CheckTimeout time.Duration
	// PrimerTTL is the TTL of the listening side's primers (see
	// Params.PrimerTTL). Zero: DefaultPrimerTTL; negative: no primers.
	PrimerTTL int

	limits  Limits
	mu      sync.Mutex
	running int                         // listener-side attempts
	peers   map[identity.PeerID]*bucket // introductions per dialler
	early   map[uint64]*early           // dials whose first flight went through the server, by attempt
	skipped atomic.Uint64
	bday    chan struct{}    // the node's one birthday attempt (birthday.go)
	bstats  birthdayCounters // what birthday attempts did
	// bdayListener: the wide race a listener runs for a dialler, so the
	// dialler's next introduction ends it (at most one: bday).
	bdayListener map[identity.PeerID]*wideRace
}

// NewRung makes the rung for the node h; it reads and writes punch
// packets on the node's socket from now on.
func NewRung(h *rung.Host, linger time.Duration, limits Limits) *Rung {
	if linger <= 0 {
		linger = DefaultLinger
	}
	limits = limits.withDefaults()
	m := NewManager(h.Socket, h.Logger)
	m.SetRate(limits.PacketsPerSecond)
	return &Rung{h: h, m: m, Linger: linger, limits: limits, peers: map[identity.PeerID]*bucket{}, bday: make(chan struct{}, 1), bdayListener: map[identity.PeerID]*wideRace{}}
}

// DefaultPrimerTTL is the TTL of the listening side's primers: it crosses
// the node's own NAT (one hop) and expires at the next router, the
// provider's, before the peer's router sees it.
const DefaultPrimerTTL = 2

// Hold bounds: holdSlack is added to the estimate of when the dialler
// starts sending; maxHold caps it (a far server must not delay a pair
// that could only punch from this side by more than this).
const (
	holdSlack = 100 * time.Millisecond
	maxHold   = time.Second
)

// holdFor is how long the listening side waits before its full pings when
// the dialler does not show up first. The answer reaches the dialler about
// half of each side's round trip to the server after it leaves, and the
// dialler sends at once; the hold is twice that, plus slack, because
// sending too early can cost the pair its direct path (on a Linux-host
// router) while waiting longer costs only pairs that the dialler cannot
// open from its side, and only this much. It usually ends sooner: when
// the dialler's first packet arrives. Zero when neither RTT is known (a
// loopback setup, or both registered over TCP).
func holdFor(own, dialler time.Duration) time.Duration {
	switch {
	case own <= 0 && dialler <= 0:
		return 0
	case own <= 0:
		own = dialler
	case dialler <= 0:
		dialler = own
	}
	return min(own+dialler+holdSlack, maxHold)
}

// reachableAsIs reports whether the dialler can be reached without its
// NAT being opened from its side first: it advertised a port mapping, or
// its reflexive address is one of its own (no NAT).
func reachableAsIs(offer candidate.PeerInfo) bool {
	if len(offer.Addrs(candidate.Mapped)) > 0 {
		return true
	}
	own := map[netip.AddrPort]bool{}
	for _, a := range offer.Addrs(candidate.Host) {
		own[a] = true
	}
	for _, a := range offer.Addrs(candidate.Reflexive) {
		if own[a] {
			return true
		}
	}
	return false
}

// Skipped counts introductions the listening side did not punch for:
// too many attempts running, or the dialler over its rate.
func (r *Rung) Skipped() uint64 { return r.skipped.Load() }

// Manager returns the rung's punch manager.
func (r *Rung) Manager() *Manager { return r.m }

// scope is what the node knows of itself for picking a peer's
// punchable addresses.
func (r *Rung) scope() candidate.PunchScope {
	s := candidate.PunchScope{Loopback: r.h.Local, Max: r.limits.MaxAddrs}
	if r.h.InterfaceAddrs != nil {
		addrs, _ := r.h.InterfaceAddrs()
		s.LAN = candidate.Prefixes(addrs)
	}
	if r.h.Observed != nil {
		s.Observed = r.h.Observed()
	}
	return s
}

// admit reserves a listener-side attempt for peer, or reports why not.
func (r *Rung) admit(peer identity.PeerID) string {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running >= r.limits.MaxAttempts {
		return "too many attempts running"
	}
	b := r.peers[peer]
	if b == nil {
		if len(r.peers) >= maxTrackedPeers {
			// Forget diallers whose bucket has refilled: they are where a
			// new bucket would start anyway.
			for id, pb := range r.peers {
				if now.Sub(pb.last) >= time.Minute {
					delete(r.peers, id)
				}
			}
		}
		b = &bucket{}
		rate := float64(r.limits.PerPeer) / 60
		b.rate, b.burst, b.tokens = rate, float64(r.limits.PerPeer), float64(r.limits.PerPeer)
		r.peers[peer] = b
	}
	if !b.take(now) {
		return "dialler over its introduction rate"
	}
	r.running++
	return ""
}

// maxTrackedPeers is how many diallers' rates the rung tracks before it
// forgets those idle for a minute.
const maxTrackedPeers = 4096

// Name implements rung.Rung.
func (*Rung) Name() string { return Name }

// Close implements rung.Rung.
func (r *Rung) Close() { r.m.Close() }

// Offer implements rung.Rung: the listener starts punching when the
// introduction reaches it, before our answer arrives, so the dialler is
// ready to answer its checks from the start.
func (r *Rung) Offer(_ context.Context, offer *candidate.PeerInfo) func() {
	offer.PunchKey = NewKey()
	if r.h.ServerRTT != nil {
		offer.ServerRTT = r.h.ServerRTT()
	}
	// The dialling side is bounded like the listening side: a dial checks
	// for 10 s at most, and an address that never answers gets pings only
	// in its early phase.
	at, err := r.m.Start(Params{Attempt: offer.Attempt, Key: offer.PunchKey, Role: RoleDialer, Budget: r.limits.AttemptPackets})
	if err != nil {
		return nil
	}
	return func() { r.closeAttempt(offer.Attempt, at) }
}

// Introduced implements rung.Rung: it punches towards the dialler's
// punchable addresses for Linger, within the rung's Limits: an
// introduction beyond them is still answered (the other rungs may carry
// the session) but gets no punch packets. Each introduction that asks
// for a punch (a punch key) has its outcome counted
// (rung.Host.ListenerPunch), except one cut short by the node closing.
func (r *Rung) Introduced(offer candidate.PeerInfo) {
	if len(offer.PunchKey) != KeyLen {
		return
	}
	remotes := offer.PunchableFrom(r.scope())
	predicted := r.predicted(offer)
	if len(remotes)+len(predicted) == 0 {
		r.h.Logger.Debug("punch: no address of the dialler may be punched", "peer", offer.Peer.Short())
		r.outcome(OutcomeNoCandidates)
		return
	}
	if why := r.admit(offer.Peer); why != "" {
		r.skipped.Add(1)
		r.h.Logger.Debug("punch: not punching", "peer", offer.Peer.Short(), "why", why)
		r.outcome(OutcomeSkipped)
		return
	}
	release := func() {
		r.mu.Lock()
		r.running--
		r.mu.Unlock()
	}
	var own time.Duration
	if r.h.ServerRTT != nil {
		own = r.h.ServerRTT()
	}
	ttl := r.PrimerTTL
	if ttl == 0 {
		ttl = DefaultPrimerTTL
	}
	if ttl > 0 && r.public() {
		ttl = 1 // no NAT of ours to open (predictTTL)
	}
	hold := holdFor(own, offer.ServerRTT)
	if reachableAsIs(offer) {
		// Our pings go to a port the dialler's gateway forwards, or to a
		// host with no NAT: they cannot leave state on a router, so there
		// is nothing to wait for.
		hold = 0
	}
	r.h.Logger.Debug("punch: listening", "peer", offer.Peer.Short(), "hold", hold, "server_rtt", own, "dialler_server_rtt", offer.ServerRTT,
		"remotes", len(remotes), "predicted", len(predicted))
	at, err := r.m.Start(Params{Attempt: offer.Attempt, Key: offer.PunchKey, Role: RoleListener,
		Remote: remotes, Predicted: predicted, PredictTTL: r.predictTTL(), Budget: r.limits.AttemptPackets,
		Hold: hold, PrimerTTL: max(ttl, 0), OnHeard: r.heard(offer.Peer)})
	if err != nil {
		release()
		r.h.Logger.Debug("punch", "peer", offer.Peer.Short(), "err", err)
		r.outcome(OutcomeSkipped)
		return
	}
	at.birthday.Store(r.birthdayListener(offer, at, own, offer.ServerRTT)) // for the answer (BirthdayRuns)
	r.h.Go(func() {
		defer release()
		defer at.Close()
		t := time.NewTimer(r.Linger)
		defer t.Stop()
		select {
		case <-at.Heard():
			r.outcome(OutcomeHeard)
		case <-t.C:
			r.outcome(OutcomeUnheard)
			return
		case <-r.h.Context.Done():
			return
		}
		select { // punch on for the rest of Linger
		case <-t.C:
		case <-r.h.Context.Done():
		}
	})
}

// outcome counts a listening-side punch's outcome.
func (r *Rung) outcome(o string) {
	if r.h.ListenerPunch != nil {
		r.h.ListenerPunch(o)
	}
}

// heard is the OnHeard of an attempt with peer: it tells the node
// (rung.Host.PathHeard).
func (r *Rung) heard(peer identity.PeerID) func(netip.AddrPort, bool) {
	if r.h.PathHeard == nil {
		return nil
	}
	return func(addr netip.AddrPort, confirmed bool) { r.h.PathHeard(Name, peer, addr, confirmed) }
}

// Connect implements rung.Rung. If the node started the attempt early
// (Offer), it is reused and given the peer's candidates.
//
// Every address that validates gets a QUIC dial of its own, in parallel:
// the first session wins, the others are cancelled. An address validates
// when its pong comes back, or when an authenticated ping arrives from it
// (the peer's NAT is then open towards us from that address, which saves
// the round trip of our own check).
func (s *Rung) Connect(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	remotes := a.Remote.PunchableFrom(s.scope())
	if len(remotes) == 0 {
		return nil, ErrNoCandidates
	}
	predicted := s.predicted(a.Remote)
	m := s.m
	at := m.Lookup(a.Local.Attempt)
	if at != nil {
		at.SetOnHeard(s.heard(a.Peer))
		at.AddRemotes(remotes)
		at.AddPredicted(predicted, s.predictTTL())
	} else {
		var err error
		at, err = m.Start(Params{Attempt: a.Local.Attempt, Key: a.Local.PunchKey, Role: RoleDialer, Remote: remotes,
			Predicted: predicted, PredictTTL: s.predictTTL(), Budget: s.limits.AttemptPackets, OnHeard: s.heard(a.Peer)})
		if err != nil {
			return nil, err
		}
		// Keep answering the peer's checks until the session is up.
		defer at.Close()
	}
	var won <-chan wideWin // the birthday mode's wide side, if this dial is it
	if w := s.birthdayDialer(ctx, a, at); w != nil {
		defer w.Close()
		won = w.Won()
	}
	limit := s.CheckTimeout
	if limit <= 0 {
		limit = 10 * time.Second
	}
	giveUp := time.NewTimer(limit)
	defer giveUp.Stop()

	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		addr netip.AddrPort
		sess *stream.Session
		err  error
	}
	results := make(chan result)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		// Drain the dials still running; close any session that lost.
		go func() {
			wg.Wait()
			close(results)
		}()
		for r := range results {
			if r.sess != nil {
				r.sess.CloseWithError(0, "lost the race")
			}
		}
	}()
	pending := 0
	expired := false
	var errs []error
	// Addresses that proved a wrong key before a pong confirmed them; if
	// one is confirmed later, it was the peer after all.
	var wrongKey []netip.AddrPort
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	fail := func(base error) error {
		if len(errs) == 0 {
			return base
		}
		return errors.Join(append([]error{base}, errs...)...)
	}
	// dialed: addresses with a validated dial under way (or done);
	// finished: those whose dial has returned.
	dialed := map[netip.AddrPort]bool{}
	finished := map[netip.AddrPort]bool{}
	dial := func(addr netip.AddrPort) {
		pending++
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess, err := stream.Dial(dctx, a.Socket.Transport(), addr, a.Key, a.Peer, a.Session)
			select {
			case results <- result{addr, sess, err}:
			case <-dctx.Done():
				if sess != nil {
					sess.CloseWithError(0, "lost the race")
				}
			}
		}()
	}
	// Optimistic dials: the listener has been sending checks to our
	// reflexive address since the introduction reached it, so its NAT is
	// probably open towards us already; a QUIC handshake to its reflexive
	// address now saves the round trip of a check when it is. If it is
	// not, the packets are dropped and the checks go on as usual (a
	// validated address gets a dial of its own).
	// A reflexive address that is also one of the peer's own addresses
	// (an open host) is what direct dials: leave it to direct, so the
	// rung that wins says what made the path.
	//
	// A dial whose first flight went through the server with the
	// introduction (DialEarly) replaces them: it is well ahead, and
	// checked addresses become its path rather than dials of their own.
	e := s.takeEarly(a.Local.Attempt)
	var early netip.AddrPort     // e's key, while it runs
	var checked []netip.AddrPort // addresses validated while it ran
	if e != nil {
		early = e.key
		pending++
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-e.done:
			case <-dctx.Done():
				e.cancel()
				<-e.done
			}
			select {
			case results <- result{e.key, e.sess, e.err}:
			case <-dctx.Done():
				if e.sess != nil {
					e.sess.CloseWithError(0, "lost the race")
				}
			}
		}()
	}
	own := map[netip.AddrPort]bool{}
	for _, c := range a.Remote.Candidates {
		if c.Kind == candidate.Host {
			own[c.Addr] = true
		}
	}
	for _, c := range a.Remote.Candidates {
		if e != nil {
			break
		}
		if c.Kind == candidate.Reflexive && c.Addr.IsValid() && !own[c.Addr] && !dialed[c.Addr] {
			// One dial per address: when the address validates later,
			// this dial is the one that counts (a second handshake to
			// the same address would only make a duplicate session).
			dialed[c.Addr] = true
			dial(c.Addr)
		}
	}
	for {
		select {
		case <-giveUp.C:
			expired = true
			if pending == 0 {
				return nil, fail(fmt.Errorf("%w within %v", ErrNoPath, limit))
			}
			// a dial is under way: let it finish (bounded by its own
			// handshake timeout)
		case <-ctx.Done():
			return nil, fail(fmt.Errorf("%w: %w", ErrNoPath, ctx.Err()))
		case <-tick.C:
			for _, w := range wrongKey {
				if at.Confirmed(w) {
					return nil, errors.Join(errs...)
				}
			}
		case win := <-won:
			won = nil
			a.Logger.Debug("holepunch: birthday pair", "peer", a.Peer.Short(), "addr", win.peer, "socket", win.sock)
			pending++
			wg.Add(1)
			go func() {
				defer wg.Done()
				sess, err := s.dialWinner(dctx, a, win)
				select {
				case results <- result{win.peer, sess, err}:
				case <-dctx.Done():
					if sess != nil {
						sess.CloseWithError(0, "lost the race")
					}
				}
			}()
		case addr := <-at.Validated():
			a.Logger.Debug("holepunch: pair validated", "peer", a.Peer.Short(), "addr", addr, "learned", at.Learned())
			if early.IsValid() {
				e.validated(addr)
				checked = append(checked, addr)
				continue
			}
			if !dialed[addr] {
				dialed[addr] = true
				dial(addr)
			} else if !finished[addr] {
				// The optimistic handshake to addr is still waiting: its
				// first flight was probably dropped by a NAT that was
				// not open yet (a carrier NAT the listener's primer
				// could not reach). Send it again now that the path is
				// open, instead of waiting for quic-go's probe timeout.
				n := a.Socket.Paths().ResendInitials(addr)
				a.Logger.Debug("holepunch: first flight sent again", "peer", a.Peer.Short(), "addr", addr, "packets", n)
			}
		case r := <-results:
			finished[r.addr] = true
			pending--
			if r.err == nil {
				if r.addr == early {
					e.wonBy()
				}
				if d := predictionDetail(a.Local, a.Remote, predicted, r.addr); d != "" {
					r.sess.SetStrategyDetail(d)
				}
				if at.Probes() > 0 && r.sess.StrategyDetail() == "" {
					// Against a random symmetric NAT only a mapping of
					// the peer's birthday sockets lets us in (one may
					// take the port of its reflexive address).
					r.sess.SetStrategyDetail(birthdayDetail(birthdayProbe, 0, at.Probes(), r.addr))
				}
				return r.sess, nil
			}
			if r.addr == early {
				// The early dial failed: dial what the checks found.
				early = netip.AddrPort{}
				for _, addr := range checked {
					if !dialed[addr] {
						dialed[addr] = true
						dial(addr)
					}
				}
			}
			errs = append(errs, fmt.Errorf("%s: %w", r.addr, r.err))
			if errors.Is(r.err, identity.ErrWrongPeer) && at.Confirmed(r.addr) {
				// The address answered our check under the attempt's punch
				// key, so it is the introduced peer, and it proved another
				// key: no other address will do better. Fail now. (An
				// address known only from a ping might be a replay by a
				// third party: keep going.)
				return nil, errors.Join(errs...)
			}
			if errors.Is(r.err, identity.ErrWrongPeer) {
				wrongKey = append(wrongKey, r.addr)
			}
			if pending == 0 && expired {
				return nil, fail(ErrNoPath)
			}
		}
	}
}

// Validate implements rung.Validator: it runs checks against the peer's
// punchable candidates like Connect, and returns the first address that
// answered one of our checks (a pong: the address works both ways),
// without dialling QUIC. The node moves an existing session there (its
// PathHeard hook saw the address first). Errors: ErrNoCandidates,
// ErrNoPath (nothing answered within CheckTimeout), the context's.
func (s *Rung) Validate(ctx context.Context, a *rung.Attempt) (netip.AddrPort, error) {
	remotes := a.Remote.PunchableFrom(s.scope())
	if len(remotes) == 0 {
		return netip.AddrPort{}, ErrNoCandidates
	}
	predicted := s.predicted(a.Remote)
	at := s.m.Lookup(a.Local.Attempt)
	if at != nil {
		at.SetOnHeard(s.heard(a.Peer))
		at.AddRemotes(remotes)
		at.AddPredicted(predicted, s.predictTTL())
	} else {
		var err error
		at, err = s.m.Start(Params{Attempt: a.Local.Attempt, Key: a.Local.PunchKey, Role: RoleDialer, Remote: remotes,
			Predicted: predicted, PredictTTL: s.predictTTL(), Budget: s.limits.AttemptPackets, OnHeard: s.heard(a.Peer)})
		if err != nil {
			return netip.AddrPort{}, err
		}
		defer at.Close()
	}
	limit := s.CheckTimeout
	if limit <= 0 {
		limit = 10 * time.Second
	}
	giveUp := time.NewTimer(limit)
	defer giveUp.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var heard []netip.AddrPort // validated by a ping only, so far
	for {
		select {
		case addr := <-at.Validated():
			if at.Confirmed(addr) {
				return addr, nil
			}
			heard = append(heard, addr)
		case <-tick.C:
			for _, addr := range heard {
				if at.Confirmed(addr) {
					return addr, nil
				}
			}
		case <-giveUp.C:
			return netip.AddrPort{}, fmt.Errorf("%w within %v", ErrNoPath, limit)
		case <-ctx.Done():
			return netip.AddrPort{}, fmt.Errorf("%w: %w", ErrNoPath, ctx.Err())
		}
	}
}
