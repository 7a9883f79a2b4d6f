// Package holepunch makes a direct UDP path between two peers behind NATs:
// both peers send authenticated connectivity checks (pings) to every
// candidate address of the other at the same time, answer the other's pings
// (pongs), learn peer-reflexive addresses from where pings really come
// from, and report each address whose pong came back. The dialler then runs
// QUIC to such a validated address over the same socket.
//
// Punch packets carry a MAC under a per-attempt key that only the two peers
// (and the rendezvous server that introduced them) know, and a pong is
// accepted only from the address the answered ping was sent to, so a third
// party can neither make a peer validate an address of its choosing nor
// steer it to its own address.
//
// Checks keep going for the whole attempt: when both sides send at the same
// moment, Linux conntrack can drop the first packets or clash on a port,
// and later pings get through once both mappings exist.
package holepunch

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/internal/sock"
)

// KeyLen is the length of a punch key.
const KeyLen = 32

// MaxRemotes bounds the addresses one attempt sends to (given plus
// learned), so that a bad introduction cannot turn a node into a packet
// cannon.
const MaxRemotes = 32

// Defaults of the bounds on punching (see Params and Manager.SetRate).
const (
	// EarlyPhase is how long an attempt pings an address that has not
	// answered: every 40ms at most, then never again unless it answers.
	EarlyPhase = 2 * time.Second
	// DefaultAttemptPackets bounds the pings one listener-side attempt
	// sends over its whole life, across all its addresses: half of it
	// paces the early phase, the rest keeps answering addresses open.
	DefaultAttemptPackets = 300
	// DefaultPacketsPerSecond bounds all punch packets of a node together
	// (pings and pongs of every attempt).
	DefaultPacketsPerSecond = 500
)

// Named errors.
var (
	ErrBadKey        = errors.New("holepunch: punch key must be 32 bytes")
	ErrAttemptInUse  = errors.New("holepunch: attempt ID already in use on this node")
	ErrNoCandidates  = errors.New("holepunch: the peer offered no candidate address")
	ErrManagerClosed = errors.New("holepunch: manager closed")
)

// Socket is what the Manager needs of the node's socket (*sock.Socket).
type Socket interface {
	WriteTo(b []byte, to netip.AddrPort) error
	Handle(first byte, h sock.Handler)
}

// Manager runs the punch attempts of one node on its socket.
type Manager struct {
	sock Socket
	log  *slog.Logger

	mu       sync.Mutex
	attempts map[uint64]*Attempt
	closed   bool

	dropped   atomic.Uint64
	throttled atomic.Uint64
	bucket    bucket
}

// NewManager registers the punch packet handler on s. log may be nil.
func NewManager(s Socket, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := &Manager{sock: s, log: log, attempts: map[uint64]*Attempt{}}
	m.SetRate(0)
	s.Handle(Magic, m.handle)
	return m
}

// SetRate sets how many punch packets per second the node sends at most,
// all attempts together (the burst is a fifth of a second's worth, at
// least one). Zero or less: DefaultPacketsPerSecond. A packet over the
// budget is not sent; Throttled counts it.
func (m *Manager) SetRate(pps int) {
	if pps <= 0 {
		pps = DefaultPacketsPerSecond
	}
	m.bucket.set(float64(pps), float64(max(pps/5, 1)))
}

// Throttled counts punch packets not sent because the node's packet rate
// was spent.
func (m *Manager) Throttled() uint64 { return m.throttled.Load() }

// Dropped counts punch packets dropped as malformed, unauthenticated, for
// no running attempt, or from the wrong role or address.
func (m *Manager) Dropped() uint64 { return m.dropped.Load() }

// Close stops every attempt and unregisters the handler.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	as := make([]*Attempt, 0, len(m.attempts))
	for _, a := range m.attempts {
		as = append(as, a)
	}
	m.mu.Unlock()
	for _, a := range as {
		a.Close()
	}
	m.sock.Handle(Magic, nil)
}

// Params describes one punch attempt.
type Params struct {
	// Attempt is the introduction's attempt ID; both peers use the same.
	Attempt uint64
	// Key is the attempt's punch key (KeyLen bytes), chosen by the dialler
	// and passed to the listener through the rendezvous server.
	Key []byte
	// Role is this side's role, RoleDialer or RoleListener.
	Role byte
	// Remote are the other peer's candidate addresses.
	Remote []netip.AddrPort
	// Interval is the time between rounds of pings. Zero: 40ms for the
	// first 2 seconds (EarlyPhase), then 250ms.
	Interval time.Duration
	// Budget bounds the pings the attempt sends over its life, all
	// addresses together; with it, the early phase's pings are paced to
	// half of it, and an address that has not answered (no ping or pong
	// came from it) within EarlyPhase of being added gets no more pings,
	// so a dead or unwilling address costs a few dozen packets and a
	// stale NAT entry towards it can expire. Both sides of a node's
	// attempts have one (Limits.AttemptPackets). Zero: no bound.
	Budget int
	// Hold delays the attempt's full pings: for Hold after the start it
	// sends only primers, unless a packet from the peer arrives first. The
	// listening side holds until the dialler has had time to send: a ping
	// that reaches the dialler's router before the dialler sent anything
	// to us would, on a router that accepts packets to itself (a Linux
	// host doing masquerade), become a conntrack entry that moves the
	// dialler's mapping to another port. Zero: no hold.
	Hold time.Duration
	// PrimerTTL is the TTL (hop limit) of the primers sent at the start
	// of a hold: pings that cross this side's NAT, so it lets the peer's
	// packets in, and expire at a router of the provider before they
	// reach the peer's router, which then keeps no state for them. Zero:
	// no primers.
	PrimerTTL int
	// Predicted are more addresses of the peer, guessed rather than
	// advertised (port prediction): pinged like Remote, but with
	// PredictTTL, while they have not answered, so a wrong guess never
	// reaches the peer's router (where, on a Linux host, it would leave a
	// conntrack entry that moves the peer's next mapping off the
	// predicted port). Zero PredictTTL: full TTL.
	Predicted  []netip.AddrPort
	PredictTTL int
	// OnHeard, when set, is called for every authenticated packet from
	// the peer, on the socket's read goroutine (it must not block):
	// confirmed false for a ping (the peer reaches us from addr; called
	// before our pong goes out), true for a pong to our ping (addr works
	// both ways).
	OnHeard func(addr netip.AddrPort, confirmed bool)
}

// NewKey returns a fresh random punch key.
func NewKey() []byte {
	k := make([]byte, KeyLen)
	rand.Read(k)
	return k
}

// Attempt is one running punch attempt. It sends pings until Close.
type Attempt struct {
	m     *Manager
	p     Params
	txkey []byte
	// onHeard is Params.OnHeard, replaceable (SetOnHeard).
	onHeard atomic.Pointer[func(netip.AddrPort, bool)]

	mu        sync.Mutex
	remotes   []netip.AddrPort
	added     map[netip.AddrPort]time.Time
	answered  map[netip.AddrPort]bool // a ping or pong came from it
	sent      int                     // pings sent
	learned   []netip.AddrPort
	validated map[netip.AddrPort]bool
	confirmed map[netip.AddrPort]bool // a pong came from it
	predicted map[netip.AddrPort]int  // Params.Predicted and AddPredicted: TTL until answered
	observed  netip.AddrPort
	ch        chan netip.AddrPort
	// The birthday mode's probes (Probe): the ports probed, the one that
	// answered, how many went out, the goroutine sending them.
	probed   map[netip.AddrPort]bool
	probeHit netip.AddrPort
	probes   atomic.Int64
	probing  sync.WaitGroup
	birthday atomic.Bool // a listener runs its part of the birthday mode (Rung.BirthdayRuns)

	heard     chan struct{} // closed when the first packet from the peer arrived
	heardOnce sync.Once

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Start begins an attempt: it sends pings to every remote address at once
// and keeps sending until Close.
func (m *Manager) Start(p Params) (*Attempt, error) {
	if len(p.Key) != KeyLen {
		return nil, ErrBadKey
	}
	if p.Role != RoleDialer && p.Role != RoleListener {
		return nil, fmt.Errorf("holepunch: bad role %d", p.Role)
	}
	a := &Attempt{
		m: m, p: p,
		txkey:     mac(p.Key, []byte("reach punch txid")),
		validated: map[netip.AddrPort]bool{},
		confirmed: map[netip.AddrPort]bool{},
		added:     map[netip.AddrPort]time.Time{},
		answered:  map[netip.AddrPort]bool{},
		predicted: map[netip.AddrPort]int{},
		ch:        make(chan netip.AddrPort, MaxRemotes),
		heard:     make(chan struct{}),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	if p.OnHeard != nil {
		a.onHeard.Store(&p.OnHeard)
	}
	for _, r := range p.Remote {
		a.addRemote(r)
	}
	a.setPredicted(p.Predicted, p.PredictTTL)
	for _, r := range p.Predicted {
		a.addRemote(r)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrManagerClosed
	}
	if _, ok := m.attempts[p.Attempt]; ok {
		m.mu.Unlock()
		return nil, ErrAttemptInUse
	}
	m.attempts[p.Attempt] = a
	m.mu.Unlock()
	if p.Hold > 0 && p.PrimerTTL > 0 {
		// Before Start returns: the caller answers the introduction
		// next, and the primers must be out before the peer can send.
		a.primeAll()
	}
	go a.run()
	return a, nil
}

// SetOnHeard replaces the attempt's Params.OnHeard (nil: none), for an
// attempt started before its peer was known.
func (a *Attempt) SetOnHeard(f func(addr netip.AddrPort, confirmed bool)) {
	if f == nil {
		a.onHeard.Store(nil)
		return
	}
	a.onHeard.Store(&f)
}

// Lookup returns the running attempt with the given ID, or nil.
func (m *Manager) Lookup(id uint64) *Attempt {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.attempts[id]
}

// AddRemotes adds candidate addresses to a running attempt (up to
// MaxRemotes in all) and pings the new ones at once.
func (a *Attempt) AddRemotes(addrs []netip.AddrPort) {
	var fresh []netip.AddrPort
	a.mu.Lock()
	for _, r := range addrs {
		if a.addRemote(r) {
			fresh = append(fresh, a.remotes[len(a.remotes)-1])
		}
	}
	a.mu.Unlock()
	for _, r := range fresh {
		a.ping(r)
	}
}

// Validated yields each remote address that has shown it works, in the
// order they do, each once: an address whose pong came back (both
// directions work), or one an authenticated ping came from (the peer's
// NAT is open towards us from there, so our packets to it get through
// unless our own NAT maps per destination).
func (a *Attempt) Validated() <-chan netip.AddrPort { return a.ch }

// Heard is closed when the first authenticated packet from the peer
// arrives (a ping or a pong).
func (a *Attempt) Heard() <-chan struct{} { return a.heard }

// Learned returns the peer-reflexive addresses learned so far: addresses
// authenticated pings came from that were not among the candidates.
func (a *Attempt) Learned() []netip.AddrPort {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]netip.AddrPort(nil), a.learned...)
}

// Observed returns this node's address as the peer saw it in its last pong
// (invalid until a pong arrived).
func (a *Attempt) Observed() netip.AddrPort {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.observed
}

// Close stops the attempt and waits for its sender to stop.
func (a *Attempt) Close() {
	a.once.Do(func() {
		close(a.stop)
		a.m.mu.Lock()
		if a.m.attempts[a.p.Attempt] == a {
			delete(a.m.attempts, a.p.Attempt)
		}
		a.m.mu.Unlock()
	})
	<-a.done
	a.probing.Wait()
}

func (a *Attempt) addRemote(r netip.AddrPort) bool {
	r = netip.AddrPortFrom(r.Addr().Unmap(), r.Port())
	if !r.IsValid() || r.Port() == 0 || r.Addr().IsUnspecified() || r.Addr().IsMulticast() || r.Addr() == broadcast {
		return false
	}
	for _, x := range a.remotes {
		if x == r {
			return false
		}
	}
	if len(a.remotes) >= MaxRemotes {
		return false
	}
	a.remotes = append(a.remotes, r)
	a.added[r] = time.Now()
	return true
}

// broadcast is the IPv4 limited broadcast address.
var broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// txid is the transaction ID of pings to addr: a MAC of the address, so a
// pong proves it answers a ping sent to exactly the address it came from.
func (a *Attempt) txid(addr netip.AddrPort) uint64 {
	b, _ := addr.MarshalBinary()
	return binary.BigEndian.Uint64(mac(a.txkey, b))
}

func (a *Attempt) run() {
	defer close(a.done)
	if !a.hold() {
		return
	}
	start := time.Now()
	for {
		now := time.Now()
		a.mu.Lock()
		var targets []netip.AddrPort
		for _, r := range a.remotes {
			if a.p.Budget > 0 && !a.answered[r] && now.Sub(a.added[r]) >= EarlyPhase {
				continue // never answered: its early phase is over
			}
			targets = append(targets, r)
		}
		a.mu.Unlock()
		for _, r := range targets {
			a.ping(r)
		}
		iv := a.p.Interval
		if iv == 0 {
			iv = 250 * time.Millisecond
			if now.Sub(start) < EarlyPhase {
				iv = 40 * time.Millisecond
			}
		}
		if a.p.Budget > 0 && len(targets) > 0 {
			// Pace the rounds so that a whole early phase of pings to
			// every target costs at most half the budget.
			if pace := EarlyPhase * time.Duration(len(targets)) / time.Duration(max(a.p.Budget/2, 1)); pace > iv {
				iv = pace
			}
		}
		select {
		case <-a.stop:
			return
		case <-time.After(iv):
		}
	}
}

// primeAll sends a primer to every remote address (Start does, for an
// attempt with a hold).
func (a *Attempt) primeAll() {
	tw, ok := a.m.sock.(ttlWriter)
	if !ok {
		return
	}
	a.mu.Lock()
	targets := append([]netip.AddrPort(nil), a.remotes...)
	a.mu.Unlock()
	for _, r := range targets {
		a.prime(tw, r)
	}
}

// hold waits out Params.Hold, or until the peer is heard from; it
// reports false when the attempt was closed meanwhile. The early phase of
// every address starts when the hold ends.
func (a *Attempt) hold() bool {
	if a.p.Hold <= 0 {
		return true
	}
	t := time.NewTimer(a.p.Hold)
	defer t.Stop()
	select {
	case <-a.stop:
		return false
	case <-a.heard:
	case <-t.C:
	}
	now := time.Now()
	a.mu.Lock()
	for r := range a.added {
		a.added[r] = now
	}
	a.mu.Unlock()
	return true
}

// ttlWriter is the part of the node's socket (*sock.Socket) that sends a
// packet with a given TTL.
type ttlWriter interface {
	WriteToTTL(b []byte, to netip.AddrPort, ttl int) error
}

// prime sends r a ping with Params.PrimerTTL, within the budget and the
// node's rate.
func (a *Attempt) prime(tw ttlWriter, r netip.AddrPort) {
	a.mu.Lock()
	if a.p.Budget > 0 && a.sent >= a.p.Budget {
		a.mu.Unlock()
		return
	}
	a.sent++
	a.mu.Unlock()
	if !a.m.bucket.take(time.Now()) {
		a.m.throttled.Add(1)
		return
	}
	pk := &packet{typ: typePing, role: a.p.Role, attempt: a.p.Attempt, txid: a.txid(r)}
	if err := tw.WriteToTTL(pk.marshal(a.p.Key), r, a.p.PrimerTTL); err != nil {
		a.m.log.Debug("holepunch: primer", "to", r, "err", err)
	}
}

// ping sends a check to r, within the attempt's budget (with a limited
// TTL to a predicted address that has not answered).
func (a *Attempt) ping(r netip.AddrPort) {
	a.mu.Lock()
	if a.p.Budget > 0 && a.sent >= a.p.Budget {
		a.mu.Unlock()
		return
	}
	a.sent++
	ttl := 0
	if !a.answered[r] {
		ttl = a.predicted[r]
	}
	a.mu.Unlock()
	if tw, ok := a.m.sock.(ttlWriter); ok && ttl > 0 {
		a.sendTTL(tw, r, ttl)
		return
	}
	a.send(typePing, r, netip.AddrPort{}, a.txid(r))
}

// Sent returns how many pings the attempt has sent.
func (a *Attempt) Sent() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sent
}

func (a *Attempt) send(typ byte, to, observed netip.AddrPort, txid uint64) {
	if !a.m.bucket.take(time.Now()) {
		a.m.throttled.Add(1)
		return
	}
	pk := &packet{typ: typ, role: a.p.Role, attempt: a.p.Attempt, txid: txid, observed: observed}
	if err := a.m.sock.WriteTo(pk.marshal(a.p.Key), to); err != nil {
		a.m.log.Debug("holepunch: send", "to", to, "err", err)
	}
}

// handle runs on the socket's read goroutine: it must not block.
func (m *Manager) handle(b []byte, from netip.AddrPort) {
	id, err := peekAttempt(b)
	if err != nil {
		m.dropped.Add(1)
		return
	}
	m.mu.Lock()
	a := m.attempts[id]
	m.mu.Unlock()
	if a == nil {
		m.dropped.Add(1)
		return
	}
	pk, err := unmarshal(b, a.p.Key)
	if err != nil || pk.role == a.p.Role {
		m.dropped.Add(1)
		m.log.Debug("holepunch: dropped packet", "from", from, "err", err)
		return
	}
	a.heardOnce.Do(func() { close(a.heard) })
	switch pk.typ {
	case typePing:
		// Answer at once, to the address it came from; and ping that
		// address ourselves if it is new (peer-reflexive).
		a.mu.Lock()
		probe := a.isProbeLocked(from) // a probe opened our NAT to it
		a.mu.Unlock()
		if f := a.onHeard.Load(); f != nil && !probe {
			(*f)(from, false)
		}
		a.send(typePong, from, from, pk.txid)
		a.mu.Lock()
		learned := a.addRemote(from)
		if learned {
			a.learned = append(a.learned, from)
		}
		a.answered[from] = true
		a.mu.Unlock()
		if learned {
			a.ping(from)
		}
		a.markValidated(from)
	case typePong:
		if pk.txid != a.txid(from) {
			m.dropped.Add(1)
			return
		}
		a.mu.Lock()
		a.observed = pk.observed
		a.confirmed[from] = true
		a.answered[from] = true
		probe := a.isProbeLocked(from)
		a.mu.Unlock()
		if f := a.onHeard.Load(); f != nil && !probe {
			(*f)(from, true)
		}
		a.markValidated(from)
	}
}

// Confirmed reports whether a pong came from addr: proof that addr is the
// peer itself (a pong's transaction ID binds it to the address our ping
// went to), whereas a ping could be a replay from elsewhere.
func (a *Attempt) Confirmed(addr netip.AddrPort) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.confirmed[addr]
}

// markValidated publishes addr on Validated the first time.
func (a *Attempt) markValidated(addr netip.AddrPort) {
	a.mu.Lock()
	fresh := !a.validated[addr]
	a.validated[addr] = true
	a.mu.Unlock()
	if fresh {
		select {
		case a.ch <- addr:
		default:
		}
	}
}

// bucket is a token bucket: rate tokens a second, at most burst saved.
type bucket struct {
	mu          sync.Mutex
	rate, burst float64
	tokens      float64
	last        time.Time
}

func (b *bucket) set(rate, burst float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rate, b.burst, b.tokens, b.last = rate, burst, burst, time.Time{}
}

// take spends one token if there is one.
func (b *bucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
