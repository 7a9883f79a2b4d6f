package holepunch

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/stream"
)

// The first flight through the server (docs/architecture.md, "Connect
// time"). The dialler starts its QUIC handshake before it asks for the
// introduction, and its first packets travel to the listener through the
// rendezvous server with the introduction (rendezvous.Flight). The
// listener primes its NAT for the introduction, answers it, then hands
// those packets to quic-go, whose answer goes back through the server
// too. The dialler then has the listener's answer and sends everything
// else, from its Finished on, straight to the address the server saw the
// listener at. Nothing either side sends straight to the other can reach
// a router before that router's own host sent towards the other: the
// listener primed before it read the dialler's first flight, and the
// listener sends a session packet only after the handshake, whose end the
// dialler sent straight to it. So the session's first byte costs the
// peer-to-peer round trips of a bare QUIC handshake, where waiting for
// the answer first cost one more.

// Flight is an introduction's first flight through the rendezvous server
// (rendezvous.Flight).
type Flight interface {
	Send(pkt []byte) error
	Receive(fn func(pkt []byte))
	Close()
}

// flightPath is a pathsock.HandshakeOnly path over a Flight: QUIC
// long-header packets (the handshake) go through the server, others to
// data (the peer's address as the server saw it), or nowhere when data is
// not set. Sends are queued for one goroutine: a write to the server must
// not hold up quic-go's send loop.
type flightPath struct {
	fl   Flight
	sock interface {
		WriteTo([]byte, netip.AddrPort) error
	}
	data netip.AddrPort
	// heard reports that the peer's packets come straight to us: its NAT
	// is open, and handshake packets go to data as well. Nil: never.
	heard func() bool
	ch    chan []byte
	done  chan struct{}
	once  sync.Once
}

func newFlightPath(fl Flight, s interface {
	WriteTo([]byte, netip.AddrPort) error
}, data netip.AddrPort) *flightPath {
	p := &flightPath{fl: fl, sock: s, data: data, ch: make(chan []byte, 16), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *flightPath) run() {
	for {
		select {
		case b := <-p.ch:
			p.fl.Send(b)
		case <-p.done:
			return
		}
	}
}

// Send implements pathsock.Path.
func (p *flightPath) Send(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if b[0]&0x80 == 0 {
		if p.data.IsValid() {
			return p.sock.WriteTo(b, p.data)
		}
		return nil
	}
	if p.data.IsValid() && p.heard != nil && p.heard() {
		// The dialler's packets come straight (a server that does not
		// relay flights, or quic-go resending its first flight after
		// the answer): answer the same way too.
		p.sock.WriteTo(b, p.data)
	}
	select {
	case p.ch <- append([]byte(nil), b...):
	default: // more than a handshake: lost, as on a congested link
	}
	return nil
}

// HandshakeOnly implements pathsock.HandshakeOnly.
func (*flightPath) HandshakeOnly() {}

// Name names the path's rung (a session accepted on it is holepunch's).
func (*flightPath) Name() string { return Name }

func (p *flightPath) close() {
	p.once.Do(func() {
		close(p.done)
		p.fl.Close()
	})
}

// early is a dial whose first flight went through the server.
type early struct {
	key    netip.AddrPort
	path   *flightPath
	paths  *pathsock.Conn
	cancel context.CancelFunc
	done   chan struct{} // closed when the dial returned
	sess   *stream.Session
	err    error

	mu       sync.Mutex
	answered bool
	held     [][]byte // the listener's packets that came before its answer
	taken    bool     // Connect took the result
	won      bool     // and the session won
	direct   bool     // a checked address is the key's path
}

// DialEarly starts a QUIC dial to peer whose first flight goes through the
// server with the introduction of the dialler's attempt (fl: give it to
// rendezvous.Client.ConnectFlight), and returns what to call when the
// attempt is over. After the introduction, Answered gives it the answer
// and Connect finishes it. It starts nothing (nil) when the node has an
// address for peer already (its sessions are there).
func (r *Rung) DialEarly(ctx context.Context, attempt uint64, key *identity.Key, peer identity.PeerID, cfg stream.Config, fl Flight) func() {
	paths := r.h.Socket.Paths()
	if _, ok := paths.Lookup(peer.String()); ok {
		return nil
	}
	k, err := paths.AddPeer()
	if err != nil {
		return nil
	}
	e := &early{key: k, paths: paths, done: make(chan struct{})}
	e.path = newFlightPath(fl, r.h.Socket, netip.AddrPort{})
	paths.SetFallback(k, e.path)
	fl.Receive(e.received)
	dctx, cancel := context.WithCancel(ctx)
	e.cancel = cancel
	r.mu.Lock()
	if r.early == nil {
		r.early = map[uint64]*early{}
	}
	r.early[attempt] = e
	r.mu.Unlock()
	go func() {
		defer close(e.done)
		e.sess, e.err = stream.Dial(dctx, r.h.Socket.Transport(), k, key, peer, cfg)
	}()
	return func() {
		r.mu.Lock()
		if r.early[attempt] == e {
			delete(r.early, attempt)
		}
		r.mu.Unlock()
		e.stop()
	}
}

// received takes a packet of the listener's flight: held until the answer
// is in (it says where the dialler's next packets go).
func (e *early) received(pkt []byte) {
	e.mu.Lock()
	if !e.answered {
		if len(e.held) < 16 {
			e.held = append(e.held, append([]byte(nil), pkt...))
		}
		e.mu.Unlock()
		return
	}
	e.mu.Unlock()
	e.paths.Inject(e.key, pkt)
}

// Answered gives the early dial of attempt the listener's answer: its
// packets go to the address the server saw the listener at from now on.
// A listener that did not take the flight (see TakesFlight) stops it.
func (r *Rung) Answered(attempt uint64, answer candidate.PeerInfo) {
	r.mu.Lock()
	e := r.early[attempt]
	r.mu.Unlock()
	if e == nil {
		return
	}
	to := answer.Observed
	if !answer.Flight || !to.IsValid() {
		e.cancel()
		return
	}
	e.paths.SetDirect(e.key, to)
	e.mu.Lock()
	e.answered = true
	held := e.held
	e.held = nil
	e.mu.Unlock()
	for _, p := range held {
		e.paths.Inject(e.key, p)
	}
}

// TakesFlight reports whether the listening side takes the first flight
// of the dialler of offer, answering with answer (as the server will
// forward it): only for a dialler it punches towards, when both registered
// over UDP, and when it is not a listener that the direct or port-mapping
// rungs reach (a public or mapped address, or IPv6: those dial its own
// addresses from the dialler's socket, and their packets must not be
// taken for the first flight's). A session made by a first flight wins
// before any packet proved its direct path; so both NATs must keep one
// mapping for every destination (then the addresses the server saw are
// the ones the peers punch from), and both sides must be able to fall
// back to the relay (the offer names one, and fallback: the listener has
// one too) when that path stays silent.
func (r *Rung) TakesFlight(offer, answer candidate.PeerInfo, fallback bool) bool {
	if !offer.Observed.IsValid() || !answer.Observed.IsValid() || len(offer.PunchKey) != KeyLen {
		return false
	}
	if offer.Mapping != candidate.MappingIndependent || answer.Mapping != candidate.MappingIndependent {
		return false
	}
	if !fallback || len(offer.Addrs(candidate.Relay)) == 0 {
		return false
	}
	if len(offer.PunchableFrom(r.scope())) == 0 {
		return false
	}
	return !reachableAsIs(answer) && len(answer.Addrs(candidate.Mapped)) == 0 && !hasIPv6(answer)
}

// hasIPv6 reports whether the peer offers a global IPv6 address (direct
// dials it first: Happy Eyeballs).
func hasIPv6(p candidate.PeerInfo) bool {
	for _, a := range p.Addrs(candidate.Host, candidate.Reflexive) {
		if a.Addr().Is6() && !a.Addr().Is4In6() && a.Addr().IsGlobalUnicast() {
			return true
		}
	}
	return false
}

// takeEarly hands Connect the early dial of attempt, if any.
func (r *Rung) takeEarly(attempt uint64) *early {
	r.mu.Lock()
	e := r.early[attempt]
	r.mu.Unlock()
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.answered || e.taken {
		return nil // stopped by Answered, or never answered
	}
	e.taken = true
	return e
}

// closeAttempt closes the dialling side's attempt when the dial is over,
// unless its session won on the server's word, before any packet came
// straight from the peer: then the checks go on (the node's PathHeard
// moves the session to the address they find) until one does, or for the
// checks' time limit.
func (r *Rung) closeAttempt(attempt uint64, at *Attempt) {
	r.mu.Lock()
	e := r.early[attempt]
	r.mu.Unlock()
	if e == nil || !e.hasWon() {
		at.Close()
		return
	}
	limit := r.CheckTimeout
	if limit <= 0 {
		limit = 10 * time.Second
	}
	r.h.Go(func() {
		defer at.Close()
		end := time.Now().Add(limit)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for time.Now().Before(end) && e.paths.Proved(e.key).IsZero() {
			select {
			case <-tick.C:
			case <-r.h.Context.Done():
				return
			}
		}
	})
}

func (e *early) hasWon() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.won
}

// validated points the early dial at addr, a checked address of the peer,
// unless one is its path already.
func (e *early) validated(addr netip.AddrPort) {
	e.mu.Lock()
	first := !e.direct
	e.direct = true
	e.mu.Unlock()
	if first {
		e.paths.SetDirect(e.key, addr)
	}
}

// wonBy marks the early session the winner: its address stays, the server
// is its path no more.
func (e *early) wonBy() {
	e.mu.Lock()
	e.won = true
	e.mu.Unlock()
	e.paths.ClearFallback(e.key, e.path)
	e.path.close()
}

// stop ends the early dial once the attempt is over: the dial is
// cancelled, a session it made that did not win is closed, and the
// address is forgotten unless the session lives there.
func (e *early) stop() {
	e.cancel()
	<-e.done
	e.mu.Lock()
	won, taken := e.won, e.taken
	e.mu.Unlock()
	e.path.close()
	if won {
		return
	}
	e.paths.ClearFallback(e.key, e.path)
	if e.sess != nil && !taken {
		e.sess.CloseWithError(0, "lost the race")
	}
	e.paths.RemovePeer(e.key)
}

// Flight is the listening side of a first flight: the dialler's packets
// that came through the server with the introduction (offer) go to
// quic-go as the dialler's, and its answers go back through the server,
// until the handshake is over; the session's packets go to the address the
// server saw the dialler at. Call it after Introduced (the primers) and
// after answering the introduction.
func (r *Rung) Flight(offer candidate.PeerInfo, fl Flight) {
	paths := r.h.Socket.Paths()
	key, err := paths.Key(offer.Peer.String())
	if err != nil {
		fl.Close()
		return
	}
	var fp *flightPath
	direct, fwd, _ := paths.Current(key)
	if !direct.IsValid() && fwd == nil {
		fp = newFlightPath(fl, r.h.Socket, offer.Observed)
		start := time.Now()
		fp.heard = func() bool { return paths.Heard(key).After(start) }
		paths.SetFallback(key, fp)
	}
	if offer.Observed.IsValid() {
		paths.AddAlias(key, offer.Observed)
	}
	fl.Receive(func(pkt []byte) { paths.Inject(key, pkt) })
	if fp == nil {
		r.h.Go(func() {
			wait(r.h.Context, flightLife)
			fl.Close()
		})
		return
	}
	// Settle: once a check proved a path (the node's PathHeard made it
	// the key's direct one), or a packet came straight from the address
	// the server saw the dialler at (it sends there only after our
	// answer: its NAT is open towards us from there), or when the flight
	// is over, the server is the key's path no more. (A forwarding rung's
	// path replaces it sooner: a relayed session from the dialler.)
	r.h.Go(func() {
		end := time.Now().Add(flightLife)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for time.Now().Before(end) && r.h.Context.Err() == nil {
			if d, _, _ := paths.Current(key); d.IsValid() {
				break
			}
			if offer.Observed.IsValid() && fp.heard() {
				break
			}
			select {
			case <-tick.C:
			case <-r.h.Context.Done():
			}
		}
		if d, f, err := paths.Current(key); err == nil && !d.IsValid() && f == pathsock.Path(fp) &&
			offer.Observed.IsValid() && time.Since(paths.Heard(key)) < 3*time.Second {
			// No check came back, but the dialler's packets do.
			paths.SetDirect(key, offer.Observed)
		}
		paths.ClearFallback(key, fp)
		fp.close()
	})
}

func wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// flightLife bounds the listening side's first flight: a handshake that
// took longer has lost to the other rungs.
const flightLife = 10 * time.Second
