package rendezvous

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"
)

// ParkConfig lets idle registrations over QUIC leave their connection
// (docs/protocol.md, "Parked registrations"): the server then keeps a
// few hundred bytes for the peer instead of a QUIC connection and its
// goroutines, and wakes the node when an introduction comes.
type ParkConfig struct {
	// After is how long a QUIC registration must have been idle (no
	// frame but PING and PONG either way) before its client may park it;
	// REGISTERED offers it. Zero: DefaultParkAfter (60 s). Negative:
	// parking is off (no client is offered it, and a PARK is refused).
	After time.Duration
	// Keepalive is how often a parked node sends its keepalive datagram
	// (PARKED tells it). The server forgets a parked registration it has
	// heard nothing valid from for 3 of them plus 5 s. Zero: 25 s, within
	// the 30 s that the shortest common NAT UDP timeouts allow.
	Keepalive time.Duration
	// WakeTimeout is how long a parked node has to re-attach once the
	// server queued a frame for it; then its introductions fail with
	// ErrNotWoken and the queue is dropped. WAKE is sent again every
	// second meanwhile. Zero: 5 s.
	WakeTimeout time.Duration
	// MaxQueue is how many frames may wait for one parked node; an
	// introduction beyond it gets ErrBusy. Zero: 32. At most what a
	// session's send queue holds besides REGISTERED (63): the re-attached
	// session takes them all at once.
	MaxQueue int
	// WakeRate is how many WAKE datagrams the server sends per second in
	// all (a burst of as many); a node due one when none is left gets it
	// at the next second's resend. Zero: 1000.
	WakeRate float64
	// HintRate is how many "unknown" hints the server sends per second
	// in all (half of them each half second): the answer to a keepalive
	// that names no parked registration here (after a restart), which
	// makes the node register again at once. Beyond it such keepalives go unanswered and
	// their nodes register again after their keepalive retries (7 s).
	// Zero: 1000.
	HintRate float64
}

// DefaultParkAfter is ParkConfig.After's zero value: parking is on by
// default.
const DefaultParkAfter = 60 * time.Second

func (c ParkConfig) withDefaults() ParkConfig {
	if c.After == 0 {
		c.After = DefaultParkAfter
	}
	if c.Keepalive <= 0 {
		c.Keepalive = 25 * time.Second
	}
	if c.WakeTimeout <= 0 {
		c.WakeTimeout = 5 * time.Second
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = 32
	}
	c.MaxQueue = min(c.MaxQueue, sendQueueLen-1)
	if c.WakeRate <= 0 {
		c.WakeRate = 1000
	}
	if c.HintRate <= 0 {
		c.HintRate = 1000
	}
	return c
}

// parkExpiry is how long a parked registration lives without a valid
// keepalive.
func (c ParkConfig) parkExpiry() time.Duration { return 3*c.Keepalive + 5*time.Second }

// parkCloseGrace is how long the server keeps a parked registration's
// QUIC connection open after PARKED, for the node to read it and close.
const parkCloseGrace = 3 * time.Second

// wakeResend is how often WAKE is sent again while a node does not come.
const wakeResend = time.Second

// parkState is a parked registration's state at the server. Its fields
// but token and key are guarded by Server.pmu.
type parkState struct {
	token  uint64
	key    [16]byte
	addr   netip.AddrPort // where the node's keepalives come from
	heard  time.Time      // the last valid keepalive (or the parking)
	rcvCtr uint64         // the node's last counter taken
	sndCtr uint64         // the server's last counter sent
	queue  [][]byte       // frames for the node, in order
	wakeBy time.Time      // the node must re-attach by then; zero: nothing queued
	woke   time.Time      // the last WAKE sent
	// next is the registration that took this one over (adoptParkedLocked):
	// a frame for this one that comes later goes there.
	next *session
	// replacedAt is when another registration of the peer took this one
	// over (zero: it was not replaced).
	replacedAt time.Time
}

// testParkHold, set by tests, runs before the server handles a PARK (it
// may wait); false: the PARK is ignored, never answered.
var testParkHold atomic.Pointer[func(*session) bool]

// errParked ends a session's reader once it parked.
var errParked = errors.New("rendezvous: registration parked")

// parkServer is the Server's parked registrations.
type parkServer struct {
	sock   PacketSocket          // the server's UDP socket; nil: no parking
	parked map[uint64]*session   // by token
	waking map[*session]struct{} // parked with frames queued
	tokens float64               // WAKE rate budget
	refill time.Time             // when tokens was last refilled
	// hintsLeft is how many hints (hintUnknown) may go out until the
	// sweeper's next tick sets it again (hintsPerTick): an atomic, so
	// that a flood of unknown tokens takes no lock and reads no clock.
	hintsLeft atomic.Int64
	sweep     chan struct{} // wakes the sweeper early
	remove    func()        // the socket's Intercept
	// replaced are parked registrations another registration of their
	// peer took over, by token, kept for parkExpiry (at most
	// maxReplacedParked): the REPLACED datagram that told the parked node
	// may be lost, and its next keepalive then gets REPLACED again rather
	// than an "unknown" hint, which would make it register again and
	// take the registration back from its successor.
	replaced map[uint64]*parkState

	nParks, nWakes, nWakesLimited, nResumed, nExpired, nNotWoken atomic.Uint64
	nKeepalives, nBadKeepalives, nLeaves, nHints                 atomic.Uint64
	nReplacedAgain                                               atomic.Uint64
}

// maxReplacedParked bounds parkServer.replaced: about 100 bytes each. A
// replacement needs the peer's key and a registration, so only nodes
// that re-register fill it; beyond it a replaced node whose REPLACED is
// lost gets the "unknown" hint, as before the table.
const maxReplacedParked = 1 << 14

// parkBody is PARKED's body: the token and key of the parked
// registration, or why it was refused.
type parkedBody struct {
	Token       uint64 `json:"token,omitempty"`
	Key         []byte `json:"key,omitempty"`
	KeepaliveMS int64  `json:"keepalive_ms,omitempty"`
	Refused     string `json:"refused,omitempty"`
}

// startParking takes the park datagrams of sock and runs the sweeper
// until ctx ends; the returned func waits for it.
func (s *Server) startParking(ctx context.Context, sock PacketSocket) (wait func()) {
	if s.cfg.Park.After <= 0 {
		return func() {}
	}
	s.pmu.Lock()
	s.pk.sock = sock
	s.pk.parked = map[uint64]*session{}
	s.pk.waking = map[*session]struct{}{}
	s.pk.replaced = map[uint64]*parkState{}
	s.pk.sweep = make(chan struct{}, 1)
	s.pk.tokens, s.pk.refill = s.cfg.Park.WakeRate, time.Now()
	s.pk.hintsLeft.Store(s.hintsPerTick())
	s.pmu.Unlock()
	s.pk.remove = sock.Intercept(parkToServer, netip.AddrPort{}, s.takeKeepalive)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.sweepParked(ctx)
	}()
	return func() { <-done }
}

// parkable says why ss may not park now, or "". The caller holds s.mu.
func (s *Server) parkableLocked(ss *session) string {
	switch {
	case s.cfg.Park.After <= 0 || s.pk.sock == nil:
		return "this server does not park"
	case ss.proto != "udp" || !ss.observed().IsValid():
		return "only registrations over QUIC park"
	case s.peers[ss.peer] != ss:
		return "not the peer's registration"
	case len(ss.intros) > 0 || len(ss.flights) > 0:
		return "introductions in progress"
	case s.sn != nil && s.sn.vols[ss.peer] != nil && s.sn.vols[ss.peer].ss == ss:
		return "a supernode stays connected"
	}
	return ""
}

// park handles a client's PARK: it refuses it (the session goes on) or
// parks the session and returns errParked (its reader ends; the writer
// sends PARKED and closes the connection).
func (s *Server) park(ss *session) error {
	if h := testParkHold.Load(); h != nil && !(*h)(ss) {
		return nil // a test's server that never answers PARK
	}
	p := &parkState{addr: ss.observed(), heard: time.Now()}
	rand.Read(p.key[:])
	s.mu.Lock()
	if why := s.parkableLocked(ss); why != "" {
		s.mu.Unlock()
		ss.send(typeParked, parkedBody{Refused: why})
		return nil
	}
	for p.token == 0 {
		var b [8]byte
		rand.Read(b[:])
		p.token = binary.BigEndian.Uint64(b[:])
	}
	b, err := appendFrame(nil, typeParked, parkedBody{Token: p.token, Key: p.key[:], KeepaliveMS: s.cfg.Park.Keepalive.Milliseconds()})
	if err != nil {
		panic(err) // a fixed-size body
	}
	// Under qmu: frames queued before PARKED go out on the connection,
	// every one after it waits in the park queue. ss.park is set before
	// the token is in the parked set, and never changes after.
	ss.qmu.Lock()
	ss.queue = append(ss.queue, b)
	ss.park = p
	ss.drain = true
	s.pmu.Lock()
	if s.pk.parked[p.token] != nil { // 2^-64: refuse rather than loop under locks
		s.pmu.Unlock()
		ss.park, ss.drain = nil, false
		ss.queue = ss.queue[:len(ss.queue)-1]
		ss.qmu.Unlock()
		s.mu.Unlock()
		ss.send(typeParked, parkedBody{Refused: "token collision"})
		return nil
	}
	s.pk.parked[p.token] = ss
	s.pmu.Unlock()
	ss.qmu.Unlock()
	s.mu.Unlock()
	s.pk.nParks.Add(1)
	ss.log.Debug("registration parked", "addr", p.addr)
	return errParked
}

// shed lets a parked session's connection go: what refers to it (the
// stream, the closures over the connection) would keep its QUIC state,
// tens of KB, alive with the registration.
func (ss *session) shed() {
	ss.qmu.Lock()
	defer ss.qmu.Unlock()
	srv, p := ss.srv, ss.park
	ss.rw = nil
	ss.setReadDeadline, ss.setWriteDeadline = nil, nil
	ss.closeConn, ss.closeParked = nil, nil
	ss.observed = func() netip.AddrPort { // where its keepalives come from now
		srv.pmu.Lock()
		defer srv.pmu.Unlock()
		return p.addr
	}
	ss.queue = nil
}

// parkEnqueue queues b for parked ss (the caller holds ss.qmu) and wakes
// the node; false if the queue is full. A session that is no longer
// parked (the caller read ss before) queues nothing: nobody would read
// the queue, and ss would stay among those waking for good; next is the
// registration that took it over, where b goes instead (nil: it expired
// or left, and the caller fails).
func (s *Server) parkEnqueue(ss *session, p *parkState, b []byte) (ok bool, next *session) {
	s.pmu.Lock()
	if s.pk.parked[p.token] != ss {
		next := p.next
		s.pmu.Unlock()
		return false, next
	}
	if len(p.queue) >= s.cfg.Park.MaxQueue {
		s.pmu.Unlock()
		return false, nil
	}
	p.queue = append(p.queue, b)
	first := p.wakeBy.IsZero()
	if first {
		p.wakeBy = time.Now().Add(s.cfg.Park.WakeTimeout)
		s.pk.waking[ss] = struct{}{}
	}
	var wake parkOut
	var send bool
	if first {
		wake, send = s.wakeLocked(p, time.Now())
	}
	s.pmu.Unlock()
	if send {
		wake.send(s.pk.sock)
	}
	return true, nil
}

// parkOut is a server → node park datagram to build and send once pmu
// is released (the HMAC is not computed under the lock).
type parkOut struct {
	token, ctr uint64
	kind       byte
	key        *[16]byte
	to         netip.AddrPort
}

func (o parkOut) send(sock PacketSocket) {
	sock.WriteToUDPAddrPort(appendParkDatagram(nil, parkToNode, o.token, o.ctr, o.kind, o.key), o.to)
}

// outLocked takes p's next counter for a datagram of kind to p's
// address. The caller holds s.pmu.
func outLocked(p *parkState, kind byte) parkOut {
	p.sndCtr++
	return parkOut{token: p.token, ctr: p.sndCtr, kind: kind, key: &p.key, to: p.addr}
}

// hintsPerTick is the hint budget of one sweeper tick: HintRate a
// second.
func (s *Server) hintsPerTick() int64 { return max(int64(s.cfg.Park.HintRate*sweepTick.Seconds()), 1) }

// sweepTick is how often the sweeper runs.
const sweepTick = wakeResend / 2

// takeBudget spends one of a rate-limited budget of datagrams (tokens
// refilled at rate a second, at most rate held); false if none is left.
// The caller holds s.pmu.
func takeBudget(tokens *float64, refill *time.Time, rate float64, now time.Time) bool {
	*tokens = min(rate, *tokens+now.Sub(*refill).Seconds()*rate)
	*refill = now
	if *tokens < 1 {
		return false
	}
	*tokens--
	return true
}

// wakeLocked returns the WAKE datagram for p if the rate allows one now.
// The caller holds s.pmu.
func (s *Server) wakeLocked(p *parkState, now time.Time) (parkOut, bool) {
	if !takeBudget(&s.pk.tokens, &s.pk.refill, s.cfg.Park.WakeRate, now) {
		s.pk.nWakesLimited.Add(1)
		return parkOut{}, false
	}
	p.woke = now
	s.pk.nWakes.Add(1)
	return outLocked(p, parkKindWake), true
}

// hintUnknown answers a keepalive b that names no parked registration
// (token) with a hint that the node's registration is gone here (the
// server restarted, or forgot it): the node registers again at once
// instead of after its keepalives go unanswered. The server cannot MAC
// it (it has no key for the token), so the hint echoes the keepalive's
// counter and MAC: the node takes it only for a keepalive it sent lately,
// which an off-path attacker never saw (the token and MAC are 8 and 16
// bytes of the node's secrets). The hints are rate-limited
// (ParkConfig.HintRate), separately from WAKE: forged keepalives cannot
// starve the WAKEs, and the server reflects at most that many 34-byte
// datagrams a second, none larger than what came in.
func (s *Server) hintUnknown(b []byte, token uint64, from netip.AddrPort) {
	if b[17] != parkKeepalive || !from.IsValid() {
		return // a leave, or an unknown kind: nothing to answer
	}
	if s.pk.hintsLeft.Add(-1) < 0 { // refilled by the sweeper
		return
	}
	s.pk.nHints.Add(1)
	out := make([]byte, 0, parkDatagramLen)
	out = append(out, parkToNode)
	out = binary.BigEndian.AppendUint64(out, token)
	out = append(out, b[9:17]...) // the node's counter
	out = append(out, parkKindUnknown)
	out = append(out, b[18:]...) // the keepalive's MAC
	s.pk.sock.WriteToUDPAddrPort(out, from)
}

// replacedAgain answers a valid keepalive b of rp, a parked registration
// that another registration of its peer took over, with REPLACED again:
// the node missed the first one. (Answered only to a keepalive under the
// registration's key with a counter not seen before: no more than one
// datagram, of the same size, per keepalive the node sends. A leave ends
// it.)
func (s *Server) replacedAgain(rp *parkState, b []byte, from netip.AddrPort) {
	ctr, nodeKind, err := openParkDatagram(b, &rp.key)
	if err != nil {
		s.pk.nBadKeepalives.Add(1)
		return
	}
	s.pmu.Lock()
	if s.pk.replaced[rp.token] != rp || ctr <= rp.rcvCtr {
		s.pmu.Unlock()
		s.pk.nBadKeepalives.Add(1)
		return
	}
	rp.rcvCtr = ctr
	if nodeKind == parkLeave {
		delete(s.pk.replaced, rp.token)
		s.pmu.Unlock()
		return
	}
	o := outLocked(rp, parkKindReplaced)
	o.to = from
	s.pmu.Unlock()
	s.pk.nReplacedAgain.Add(1)
	o.send(s.pk.sock)
}

// takeKeepalive handles one datagram of first byte parkToServer, on the
// socket's read loop: a valid keepalive of a parked registration is
// answered (PONG, or WAKE when frames wait) and moves it to the address
// it came from; anything else is dropped and counted, with no state kept
// and no answer.
func (s *Server) takeKeepalive(b []byte, from netip.AddrPort) (int, netip.AddrPort) {
	token, ok := parseParkHead(b)
	if !ok {
		s.pk.nBadKeepalives.Add(1)
		return 0, netip.AddrPort{}
	}
	s.pmu.Lock()
	ss := s.pk.parked[token]
	rp := s.pk.replaced[token]
	s.pmu.Unlock()
	if ss == nil && rp != nil {
		s.replacedAgain(rp, b, from)
		return 0, netip.AddrPort{}
	}
	if ss == nil {
		s.pk.nBadKeepalives.Add(1)
		s.hintUnknown(b, token, from)
		return 0, netip.AddrPort{}
	}
	// The MAC is checked outside pmu (a token's key never changes): a
	// flood of keepalives that name a parked token holds the lock for a
	// map lookup and a counter, not for an HMAC.
	p := ss.park
	ctr, nodeKind, err := openParkDatagram(b, &p.key)
	if err != nil {
		s.pk.nBadKeepalives.Add(1)
		return 0, netip.AddrPort{}
	}
	s.pmu.Lock()
	if s.pk.parked[token] != ss || ctr <= p.rcvCtr {
		s.pmu.Unlock()
		s.pk.nBadKeepalives.Add(1)
		return 0, netip.AddrPort{}
	}
	if nodeKind == parkLeave {
		// Expired at once, by the sweeper: unregister takes s.mu and
		// sends RESULTs, which the socket's read loop must not wait for.
		p.rcvCtr, p.heard = ctr, time.Time{}
		s.pmu.Unlock()
		s.pk.nLeaves.Add(1)
		select {
		case s.pk.sweep <- struct{}{}:
		default:
		}
		return 0, netip.AddrPort{}
	}
	now := time.Now()
	p.rcvCtr, p.heard, p.addr = ctr, now, from
	kind := byte(parkKindPong)
	if len(p.queue) > 0 {
		kind = parkKindWake
		p.woke = now // the next resend is a second from now
		s.pk.nWakes.Add(1)
	}
	p.sndCtr++
	sndCtr := p.sndCtr
	s.pmu.Unlock()
	out := appendParkDatagram(nil, parkToNode, token, sndCtr, kind, &p.key)
	s.pk.nKeepalives.Add(1)
	s.pk.sock.WriteToUDPAddrPort(out, from)
	return 0, netip.AddrPort{}
}

// sweepParked resends WAKE, fails what waits for nodes that do not come,
// and forgets parked registrations whose keepalives stopped. At the end
// it tells every parked node that the server is going (GONE).
func (s *Server) sweepParked(ctx context.Context) {
	defer s.pk.remove()
	tick := time.NewTicker(sweepTick)
	defer tick.Stop()
	lastExpiry := time.Now()
	for {
		select {
		case <-ctx.Done():
			s.goneAll()
			return
		case <-tick.C:
			s.pk.hintsLeft.Store(s.hintsPerTick())
		case <-s.pk.sweep:
			lastExpiry = time.Time{} // a node left: expire now
		}
		now := time.Now()
		s.sweepWaking(now)
		if now.Sub(lastExpiry) >= s.cfg.Park.Keepalive/5 {
			lastExpiry = now
			s.expireParked(now)
		}
	}
}

func (s *Server) sweepWaking(now time.Time) {
	var sends []parkOut
	var late []*session
	s.pmu.Lock()
	for ss := range s.pk.waking {
		p := ss.park
		switch {
		case now.After(p.wakeBy):
			late = append(late, ss)
		case now.Sub(p.woke) >= wakeResend:
			if o, ok := s.wakeLocked(p, now); ok {
				sends = append(sends, o)
			}
		}
	}
	s.pmu.Unlock()
	for _, o := range sends {
		o.send(s.pk.sock)
	}
	for _, ss := range late {
		s.notWoken(ss)
	}
}

// notWoken fails the introductions to parked ss, which did not re-attach
// within WakeTimeout, with ErrNotWoken, and drops its queue. It stays
// parked: its keepalives may still come.
func (s *Server) notWoken(ss *session) {
	s.mu.Lock()
	s.pmu.Lock()
	p := ss.park
	if s.pk.parked[p.token] != ss || p.wakeBy.IsZero() {
		delete(s.pk.waking, ss)
		s.pmu.Unlock()
		s.mu.Unlock()
		return
	}
	p.queue, p.wakeBy = nil, time.Time{}
	delete(s.pk.waking, ss)
	s.pmu.Unlock()
	var ids []uint64
	for id, pi := range ss.intros {
		if pi.to == ss {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	s.pk.nNotWoken.Add(1)
	ss.log.Info("parked peer did not wake", "within", s.cfg.Park.WakeTimeout)
	for _, id := range ids {
		s.finishIntro(id, nil, resultBody{Error: codeNotWoken, Reason: fmt.Sprintf("woken, it did not come back within %v", s.cfg.Park.WakeTimeout)})
	}
}

// expireParked forgets the parked registrations whose keepalives
// stopped.
func (s *Server) expireParked(now time.Time) {
	var gone []*session
	var left []bool
	s.pmu.Lock()
	for _, ss := range s.pk.parked {
		if now.Sub(ss.park.heard) > s.cfg.Park.parkExpiry() {
			gone = append(gone, ss)
			left = append(left, ss.park.heard.IsZero())
		}
	}
	for token, rp := range s.pk.replaced {
		if now.Sub(rp.replacedAt) > s.cfg.Park.parkExpiry() {
			delete(s.pk.replaced, token)
		}
	}
	s.pmu.Unlock()
	for i, ss := range gone {
		if !s.unpark(ss) {
			continue
		}
		if left[i] {
			ss.log.Debug("parked node left")
		} else {
			s.pk.nExpired.Add(1)
			ss.log.Debug("parked registration expired")
		}
		s.unregister(ss)
	}
}

// unpark takes ss out of the parked set; false if it was not there.
func (s *Server) unpark(ss *session) bool {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	p := ss.park
	if p == nil || s.pk.parked[p.token] != ss {
		return false
	}
	delete(s.pk.parked, p.token)
	delete(s.pk.waking, ss)
	return true
}

// goneAll tells every parked node that the server is going.
func (s *Server) goneAll() {
	s.pmu.Lock()
	var out []parkOut
	for _, ss := range s.pk.parked {
		out = append(out, outLocked(ss.park, parkKindGone))
	}
	s.pmu.Unlock()
	for _, o := range out {
		o.send(s.pk.sock)
	}
}

// adoptParkedLocked hands the parked registration old of ss's peer to ss,
// which registered since and has REGISTERED queued: its introductions,
// flights and queued frames (queued on ss here, before any frame for old
// that comes later and goes to ss too). resumed says ss named old's
// token (the same node coming back); if not, the parked node is told it
// was replaced. The caller holds s.mu; it returns how many frames were
// handed over, and the replaced notice to send (nil if none) and where.
func (s *Server) adoptParkedLocked(ss, old *session, resume uint64) (queued int, notice []byte, to netip.AddrPort) {
	old.qmu.Lock()
	s.pmu.Lock()
	p := old.park
	delete(s.pk.parked, p.token)
	delete(s.pk.waking, old)
	frames := p.queue
	p.queue, p.next = nil, ss
	var replaced parkOut
	if resume != p.token {
		replaced = outLocked(p, parkKindReplaced)
		if len(s.pk.replaced) < maxReplacedParked {
			// A copy: the counters and the key, nothing that keeps the
			// sessions alive.
			s.pk.replaced[p.token] = &parkState{token: p.token, key: p.key, rcvCtr: p.rcvCtr, sndCtr: p.sndCtr, replacedAt: time.Now()}
		}
	}
	s.pmu.Unlock()
	if replaced.key != nil {
		notice, to = appendParkDatagram(nil, parkToNode, p.token, replaced.ctr, parkKindReplaced, replaced.key), replaced.to
	}
	// Under old's qmu: a frame for old that comes meanwhile waits, and
	// then follows these.
	for _, b := range frames {
		ss.enqueue(b, true)
	}
	old.qmu.Unlock()
	for id, pi := range old.intros {
		if pi.to == old {
			pi.to = ss
		}
		if pi.from == old {
			pi.from = ss
		}
		if fp := s.flights[id]; fp != nil && fp.to == old {
			fp.to = ss
		}
		ss.intros[id] = pi
	}
	ss.pending, ss.incoming, ss.incomingFrom = old.pending, old.incoming, old.incomingFrom
	old.intros, old.pending, old.incoming, old.incomingFrom = map[uint64]*pendingIntro{}, 0, 0, map[netip.Prefix]int{}
	if resume == p.token {
		s.pk.nResumed.Add(1)
	}
	return len(frames), notice, to
}

// parkedCount is how many registrations are parked now.
func (s *Server) parkedCount() int {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	return len(s.pk.parked)
}

// parkAfterFor is what REGISTERED offers ss: ParkConfig.After, or zero
// where it cannot park (over TCP, or parking off).
func (s *Server) parkAfterFor(ss *session) time.Duration {
	if s.pk.sock == nil || ss.proto != "udp" {
		return 0
	}
	return s.cfg.Park.After
}
