package rendezvous

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/reachp2p/reach/identity"
)

// The server's per-source limits (docs/security.md, "Rendezvous server:
// per-source limits"). A source is the client's IPv4 address, or its
// IPv6 /64 (one subscriber's network). Each rate is a token bucket; the
// buckets live in bounded maps, so that a flood from many (spoofed)
// sources costs a bounded amount of memory.

// Defaults of LimitConfig. Per-source limits are generous, because a NAT
// (an office, a carrier-grade NAT) puts many honest peers behind one
// address; per-peer-ID ones are tighter, because one node needs few.
const (
	// DefaultConnRate and DefaultConnBurst: new connections (QUIC
	// handshakes and TCP connections, signalling and relay alike) per
	// source.
	DefaultConnRate  = 50.0
	DefaultConnBurst = 500
	// DefaultHandshakesPerSource: handshakes in progress at once from one
	// source.
	DefaultHandshakesPerSource = 100
	// DefaultRetryHandshakes: handshakes in progress (all sources) from
	// which on every new QUIC connection must first prove its address
	// with a Retry.
	DefaultRetryHandshakes = 128
	// DefaultMaxHandshakes: handshakes in progress (all sources) beyond
	// which new connections are refused.
	DefaultMaxHandshakes = 2048
	// DefaultRegisterRate and DefaultRegisterBurst: registrations per
	// source (each one a different peer, behind a NAT).
	DefaultRegisterRate  = 30.0
	DefaultRegisterBurst = 300
	// DefaultPeerRegisterRate and DefaultPeerRegisterBurst: registrations
	// of one peer ID (reconnections): 10 at once, then one every 5 s.
	DefaultPeerRegisterRate  = 0.2
	DefaultPeerRegisterBurst = 10
	// DefaultIntroRate and DefaultIntroBurst: introductions asked for
	// by all the peers of one source.
	DefaultIntroRate  = 50.0
	DefaultIntroBurst = 500
	// DefaultPeerIntroRate and DefaultPeerIntroBurst: introductions asked
	// for by one peer ID.
	DefaultPeerIntroRate  = 3.0
	DefaultPeerIntroBurst = 30
	// DefaultIncomingPerSource: introductions from one source that may
	// wait at once for one target's answer (a quarter of the default
	// MaxIncomingIntros, so three other sources always find room).
	DefaultIncomingPerSource = 8
	// DefaultSTUNRate and DefaultSTUNBurst: STUN binding requests
	// answered per source.
	DefaultSTUNRate  = 20.0
	DefaultSTUNBurst = 200
	// DefaultMaxSources: buckets each limit keeps (sources or peer IDs).
	DefaultMaxSources = 16384
)

// codeRateLimited is the ERROR and RESULT code of a request over a rate
// limit.
const codeRateLimited = "rate_limited"

// Rate is a token bucket: Burst requests at once, then PerSecond.
type Rate struct {
	// PerSecond is the sustained rate. Zero: the limit's default;
	// negative: no limit.
	PerSecond float64
	// Burst is how many requests may come at once. Zero: the limit's
	// default.
	Burst int
}

// LimitConfig configures a server's per-source limits. Every zero value is
// the named default; a negative rate or count turns that limit off.
type LimitConfig struct {
	// Disable turns every limit of this struct off (a private server).
	Disable bool
	// Conns: new connections (QUIC handshakes, TCP connections) per
	// source. A QUIC handshake from a source with less than half its
	// burst left must first prove its address (Retry); beyond the rate
	// it is refused (CONNECTION_REFUSED), a TCP connection is closed at
	// once. Zero: DefaultConnRate, DefaultConnBurst.
	Conns Rate
	// HandshakesPerSource: handshakes in progress at once per source; more
	// are refused. Zero: DefaultHandshakesPerSource.
	HandshakesPerSource int
	// RetryHandshakes: while this many handshakes are in progress (all
	// sources), every new QUIC connection must prove its address with a
	// Retry first, so spoofed sources cannot hold handshake state.
	// Zero: DefaultRetryHandshakes.
	RetryHandshakes int
	// MaxHandshakes: handshakes in progress (all sources) beyond which new
	// connections are refused. Zero: DefaultMaxHandshakes.
	MaxHandshakes int
	// Registrations: registrations per source; beyond, ERROR
	// "rate_limited" (ErrRateLimited at the client). Zero:
	// DefaultRegisterRate, DefaultRegisterBurst.
	Registrations Rate
	// PeerRegistrations: registrations per peer ID, likewise. Zero:
	// DefaultPeerRegisterRate, DefaultPeerRegisterBurst.
	PeerRegistrations Rate
	// Intros: introductions asked for per source; beyond, the dialler
	// gets ErrRateLimited. Zero: DefaultIntroRate, DefaultIntroBurst.
	Intros Rate
	// PeerIntros: introductions asked for per peer ID, likewise. Zero:
	// DefaultPeerIntroRate, DefaultPeerIntroBurst.
	PeerIntros Rate
	// IncomingPerSource: introductions from one source that may wait for
	// one target's answer at once (its fair share of MaxIncomingIntros);
	// more get ErrBusy. Zero: DefaultIncomingPerSource.
	IncomingPerSource int
	// STUN: binding requests answered per source; the rest are dropped
	// (answers are 2.6-3.2 times a request: no amplification for a
	// spoofed victim beyond this rate). Zero: DefaultSTUNRate,
	// DefaultSTUNBurst.
	STUN Rate
	// MaxSources: buckets each limit keeps at most. When full, buckets
	// back to their full burst go first, then arbitrary ones (that source
	// starts afresh). Zero: DefaultMaxSources.
	MaxSources int
}

func (c LimitConfig) withDefaults() LimitConfig {
	defR := func(r *Rate, perSec float64, burst int) {
		if r.PerSecond == 0 {
			r.PerSecond = perSec
		}
		if r.Burst <= 0 {
			r.Burst = burst
		}
	}
	defN := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defR(&c.Conns, DefaultConnRate, DefaultConnBurst)
	defN(&c.HandshakesPerSource, DefaultHandshakesPerSource)
	defN(&c.RetryHandshakes, DefaultRetryHandshakes)
	defN(&c.MaxHandshakes, DefaultMaxHandshakes)
	defR(&c.Registrations, DefaultRegisterRate, DefaultRegisterBurst)
	defR(&c.PeerRegistrations, DefaultPeerRegisterRate, DefaultPeerRegisterBurst)
	defR(&c.Intros, DefaultIntroRate, DefaultIntroBurst)
	defR(&c.PeerIntros, DefaultPeerIntroRate, DefaultPeerIntroBurst)
	defN(&c.IncomingPerSource, DefaultIncomingPerSource)
	defR(&c.STUN, DefaultSTUNRate, DefaultSTUNBurst)
	if c.MaxSources <= 0 {
		c.MaxSources = DefaultMaxSources
	}
	return c
}

// sourceOf returns the source a client address counts against: its IPv4
// address (a /32), or its IPv6 /64. The zero Prefix for no address.
func sourceOf(a netip.Addr) netip.Prefix {
	if !a.IsValid() {
		return netip.Prefix{}
	}
	a = a.Unmap().WithZone("")
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

func sourceOfAddr(a net.Addr) netip.Prefix { return sourceOf(addrPortOf(a).Addr()) }

// buckets is a bounded map of token buckets, one per key.
type buckets[K comparable] struct {
	limit   rate.Limit
	burst   int
	max     int
	mu      sync.Mutex
	m       map[K]*rate.Limiter
	evicted uint64 // buckets dropped before they were full again
}

// newBuckets returns the buckets of r, or nil (no limit) for a negative
// rate.
func newBuckets[K comparable](r Rate, max int) *buckets[K] {
	if r.PerSecond < 0 {
		return nil
	}
	return &buckets[K]{limit: rate.Limit(r.PerSecond), burst: r.Burst, max: max, m: make(map[K]*rate.Limiter)}
}

// allow takes a token from k's bucket and reports whether there was one.
func (b *buckets[K]) allow(k K, now time.Time) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.m[k]
	if l == nil {
		if len(b.m) >= b.max {
			b.sweepLocked(now)
		}
		l = rate.NewLimiter(b.limit, b.burst)
		b.m[k] = l
	}
	return l.AllowN(now, 1)
}

// low reports whether k's bucket has less than half its burst left. It
// makes no bucket.
func (b *buckets[K]) low(k K, now time.Time) bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.m[k]
	return l != nil && l.TokensAt(now) < float64(b.burst)/2
}

// sweepLocked makes room: it drops the buckets that are full again (a new
// one is the same), then arbitrary ones, down to three quarters of max,
// so that a flood of new keys sweeps once per max/4 keys.
func (b *buckets[K]) sweepLocked(now time.Time) {
	full := float64(b.burst)
	for k, l := range b.m {
		if l.TokensAt(now) >= full {
			delete(b.m, k)
		}
	}
	for k := range b.m { // map order is random
		if len(b.m) <= b.max*3/4 {
			break
		}
		delete(b.m, k)
		b.evicted++
	}
}

func (b *buckets[K]) len() int {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}

// limits are a server's per-source limits and their counters.
type limits struct {
	cfg LimitConfig
	off bool

	conns, regs, intros, stun *buckets[netip.Prefix]
	peerRegs, peerIntros      *buckets[identity.PeerID]

	hmu        sync.Mutex
	handshakes int                  // in progress, all sources
	perSource  map[netip.Prefix]int // in progress per source (no zero entries)
	peak       int                  // most handshakes in progress at once

	nConnsRefused, nRetries, nRegLimited, nIntroLimited, nSTUNLimited atomic.Uint64
}

func newLimits(cfg LimitConfig) *limits {
	l := &limits{cfg: cfg.withDefaults(), off: cfg.Disable, perSource: make(map[netip.Prefix]int)}
	c := l.cfg
	l.conns = newBuckets[netip.Prefix](c.Conns, c.MaxSources)
	l.regs = newBuckets[netip.Prefix](c.Registrations, c.MaxSources)
	l.intros = newBuckets[netip.Prefix](c.Intros, c.MaxSources)
	l.stun = newBuckets[netip.Prefix](c.STUN, c.MaxSources)
	l.peerRegs = newBuckets[identity.PeerID](c.PeerRegistrations, c.MaxSources)
	l.peerIntros = newBuckets[identity.PeerID](c.PeerIntros, c.MaxSources)
	return l
}

// sources is how many buckets the limits keep now, all maps together.
func (l *limits) sources() int {
	return l.conns.len() + l.regs.len() + l.intros.len() + l.stun.len() + l.peerRegs.len() + l.peerIntros.len()
}

// inProgress returns the handshakes in progress now and the most at once.
func (l *limits) inProgress() (now, peak int) {
	l.hmu.Lock()
	defer l.hmu.Unlock()
	return l.handshakes, l.peak
}

// verifySource is the QUIC transport's VerifySourceAddress: a new
// connection must prove its address with a Retry while the server is
// under load, or when its source opens connections fast.
func (l *limits) verifySource(a net.Addr) bool {
	if l.off {
		return false
	}
	l.hmu.Lock()
	n := l.handshakes
	l.hmu.Unlock()
	retry := l.cfg.RetryHandshakes >= 0 && n >= l.cfg.RetryHandshakes ||
		l.conns.low(sourceOfAddr(a), time.Now())
	if retry {
		l.nRetries.Add(1)
	}
	return retry
}

// errLimited refuses a connection over a limit (quic-go answers
// CONNECTION_REFUSED).
var errLimited = errors.New("rendezvous: over a per-source limit")

// handshakeKey is the context key of a QUIC connection's handshake slot.
type handshakeKey struct{}

// connContext is the QUIC transport's ConnContext: it admits a new
// connection (see beginConn) and ties its handshake slot to it.
func (l *limits) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	done, ok := l.beginConn(sourceOfAddr(info.RemoteAddr))
	if !ok {
		return nil, errLimited
	}
	var once sync.Once
	release := func() { once.Do(done) }
	context.AfterFunc(ctx, release) // the handshake failed, or the connection closed
	return context.WithValue(ctx, handshakeKey{}, release), nil
}

// handshakeDone frees the handshake slot of a QUIC connection whose
// handshake completed.
func handshakeDone(conn *quic.Conn) {
	if release, ok := conn.Context().Value(handshakeKey{}).(func()); ok {
		release()
	}
}

// beginConn admits a new connection from src: a token of its bucket and a
// handshake slot. done frees the slot once the handshake is over.
func (l *limits) beginConn(src netip.Prefix) (done func(), ok bool) {
	if l.off {
		return func() {}, true
	}
	if !l.conns.allow(src, time.Now()) {
		l.nConnsRefused.Add(1)
		return nil, false
	}
	l.hmu.Lock()
	defer l.hmu.Unlock()
	if l.cfg.MaxHandshakes >= 0 && l.handshakes >= l.cfg.MaxHandshakes ||
		l.cfg.HandshakesPerSource >= 0 && l.perSource[src] >= l.cfg.HandshakesPerSource {
		l.nConnsRefused.Add(1)
		return nil, false
	}
	l.handshakes++
	l.perSource[src]++
	l.peak = max(l.peak, l.handshakes)
	return func() {
		l.hmu.Lock()
		defer l.hmu.Unlock()
		l.handshakes--
		if l.perSource[src]--; l.perSource[src] <= 0 {
			delete(l.perSource, src)
		}
	}, true
}

// allowRegister takes a registration token of src and of peer.
func (l *limits) allowRegister(src netip.Prefix, peer identity.PeerID) bool {
	if l.off {
		return true
	}
	now := time.Now()
	if !l.regs.allow(src, now) || !l.peerRegs.allow(peer, now) {
		l.nRegLimited.Add(1)
		return false
	}
	return true
}

// allowIntro takes an introduction token of src and of peer.
func (l *limits) allowIntro(src netip.Prefix, peer identity.PeerID) bool {
	if l.off {
		return true
	}
	now := time.Now()
	if !l.peerIntros.allow(peer, now) || !l.intros.allow(src, now) {
		l.nIntroLimited.Add(1)
		return false
	}
	return true
}

// allowSTUN takes a STUN token of src.
func (l *limits) allowSTUN(src netip.Prefix) bool {
	if l.off || l.stun.allow(src, time.Now()) {
		return true
	}
	l.nSTUNLimited.Add(1)
	return false
}

// incomingShare is how many introductions from one source may wait for
// one target; -1: no limit.
func (l *limits) incomingShare() int {
	if l.off || l.cfg.IncomingPerSource < 0 {
		return -1
	}
	return l.cfg.IncomingPerSource
}
