package holepunch

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/internal/candidate"
)

// The birthday mode, for a peer behind a symmetric NAT that allocates its
// ports at random (docs/architecture.md, "The birthday mode"). Its
// mapping towards us cannot be predicted, so the symmetric side (wide)
// opens many mappings towards our reflexive address, one helper socket
// each with one primer (a ping with the primer TTL: it crosses its own
// NAT and expires before ours), while the other side (probe), whose
// mapping is endpoint-independent, pings many random ports of the
// symmetric side's public IPv4 address. A probe that lands on one of the
// wide side's mappings gets in; the helper socket behind it answers with
// a pong, which our NAT lets in because the probe went out to that very
// address; the pair is validated like any other and QUIC runs on it: on
// the node's socket on the probe side, on the winning helper socket on
// the wide side. With k mappings and m probes over the 64,512 ports a
// NAT allocates from, a hit is 1 - exp(-k*m/64512) likely: about 94%
// with the defaults (256 x 700).
//
// Bounds: only inside an attempt (an introduction by the server between
// two signed registrations, the attempt's punch key authenticating every
// packet), only towards the peer's own reflexive IPv4 address, one
// birthday attempt per node at a time (either role), at most
// MaxBirthdaySockets helper sockets (fewer when the file-descriptor limit
// leaves less headroom), at most BirthdayPacketBudget packets a side
// together with the attempt's own pings; every helper socket but the
// winner closes when the race is won, all of them BirthdayWindow after
// priming or when the dial ends.

// Defaults and caps of the birthday mode (Limits.BirthdaySockets,
// Limits.BirthdayProbes).
const (
	// DefaultBirthdaySockets is how many helper sockets (mappings) the
	// wide side opens; MaxBirthdaySockets caps it.
	DefaultBirthdaySockets = 256
	MaxBirthdaySockets     = 256
	// DefaultBirthdayProbes is how many random ports the probe side
	// pings; MaxBirthdayProbes caps it. With the attempt's own pings
	// (DefaultAttemptPackets) it stays within BirthdayPacketBudget.
	DefaultBirthdayProbes = 700
	MaxBirthdayProbes     = 768
	// BirthdayPacketBudget bounds what one attempt sends on one side,
	// birthday packets and the attempt's pings together.
	BirthdayPacketBudget = 1000
	// BirthdayProbeInterval paces the probes.
	BirthdayProbeInterval = time.Millisecond
	// BirthdayWindow is how long the wide side's sockets stay open after
	// priming when no probe arrived.
	BirthdayWindow = 3 * time.Second
	// birthdayFDReserve is the file-descriptor headroom the wide side
	// leaves to the rest of the process.
	birthdayFDReserve = 128
	// birthdayPongs bounds the pongs one helper socket sends.
	birthdayPongs = 4
	// minProbePort is the lowest port a NAT allocates from (masquerade's
	// random range starts there).
	minProbePort = 1024
)

// Birthday roles.
const (
	birthdayNone = iota
	birthdayWide
	birthdayProbe
)

// Named errors of the birthday mode.
var (
	// ErrBirthdayBusy: another birthday attempt of the node runs.
	ErrBirthdayBusy = errors.New("holepunch: a birthday attempt is already running on this node")
	// ErrNoFDs: the file-descriptor limit leaves no room for helper sockets.
	ErrNoFDs = errors.New("holepunch: no file descriptors to spare for birthday sockets")
)

// birthdayRole decides from the introduction alone what this side does:
// wide when its own NAT maps per destination with unpredictable ports
// and the peer's does not, probe in the converse case, none otherwise
// (cone NATs need none of it, sequential ones get port prediction, and
// two symmetric NATs are out of reach).
func birthdayRole(local, remote candidate.PeerInfo) int {
	unpredictable := func(p candidate.PeerInfo) bool {
		return p.Mapping == candidate.MappingVaries && !p.Ports.Sequential()
	}
	switch {
	case unpredictable(local) && remote.Mapping == candidate.MappingIndependent:
		return birthdayWide
	case unpredictable(remote) && local.Mapping == candidate.MappingIndependent:
		return birthdayProbe
	}
	return birthdayNone
}

// birthdayTarget is the peer's reflexive IPv4 address as the server
// observed it (PeerInfo.Observed), the only address the birthday mode
// sends to: never one of the peer's own candidates, which it writes
// itself (a dialler claiming a random symmetric NAT would otherwise aim
// this node's hundreds of probes at a third party or at the node's own
// network). Invalid: none (the peer registered over TCP, or the address
// is not one a punch may go to).
func (r *Rung) birthdayTarget(p candidate.PeerInfo) netip.AddrPort {
	a := netip.AddrPortFrom(p.Observed.Addr().Unmap(), p.Observed.Port())
	if !a.Addr().Is4() || a.Port() == 0 {
		return netip.AddrPort{}
	}
	if s := r.scope(); !s.Allowed(a.Addr(), p.SameLAN(s)) {
		return netip.AddrPort{}
	}
	return a
}

// birthdaySockets is the rung's k (0: off).
func (r *Rung) birthdaySockets() int {
	if r.limits.BirthdaySockets < 0 {
		return 0
	}
	return r.limits.BirthdaySockets
}

// birthdayProbes is the rung's m (0: off).
func (r *Rung) birthdayProbes() int {
	if r.limits.BirthdaySockets < 0 || r.limits.BirthdayProbes < 0 {
		return 0
	}
	return min(r.limits.BirthdayProbes, max(BirthdayPacketBudget-r.limits.AttemptPackets, 0))
}

// acquireBirthday takes the node's one birthday slot.
func (r *Rung) acquireBirthday() (release func(), err error) {
	select {
	case r.bday <- struct{}{}:
		return sync.OnceFunc(func() { <-r.bday }), nil
	default:
		return nil, ErrBirthdayBusy
	}
}

// BirthdayStats counts what the node's birthday attempts did.
type BirthdayStats struct {
	// Sockets: helper sockets opened (wide side); Open: those open now.
	Sockets, Open int64
	// Packets: primers, pongs and probes sent.
	Packets int64
	// Hits: races won (a probe met a mapping).
	Hits int64
}

// Birthday returns the node's birthday counters.
func (r *Rung) Birthday() BirthdayStats {
	return BirthdayStats{Sockets: r.bstats.sockets.Load(), Open: r.bstats.open.Load(),
		Packets: r.bstats.packets.Load(), Hits: r.bstats.hits.Load()}
}

type birthdayCounters struct {
	sockets, open, packets, hits atomic.Int64
}

// wideWin is the wide side's winning pair: the helper socket a probe
// reached, and the peer's address it came from.
type wideWin struct {
	conn net.PacketConn
	peer netip.AddrPort
	sock int // the socket's index, for the detail
	k    int
}

// wideRace is the wide side of one birthday attempt.
type wideRace struct {
	r       *Rung
	key     []byte
	attempt uint64
	role    byte
	peer    netip.Addr
	k       int

	mu     sync.Mutex
	conns  []net.PacketConn // nil once closed or handed over
	won    bool
	closed bool

	win     chan wideWin // one value, when a probe got in
	wg      sync.WaitGroup
	release func()
	stop    chan struct{}
	once    sync.Once // release
	stopped sync.Once // stop
}

// startWide opens the wide side's helper sockets and primes them towards
// peer (the peer's reflexive address); it returns once every primer is
// out. The race ends (every socket but a handed-over winner closed) on
// Close, ctx's end, or BirthdayWindow after priming without a hit.
func (r *Rung) startWide(ctx context.Context, attempt uint64, key []byte, role byte, peer netip.AddrPort) (*wideRace, error) {
	k := r.birthdaySockets()
	if k == 0 {
		return nil, nil
	}
	release, err := r.acquireBirthday()
	if err != nil {
		return nil, err
	}
	k = min(k, fdHeadroom(birthdayFDReserve))
	if k <= 0 {
		release()
		return nil, ErrNoFDs
	}
	listen := r.h.ListenPacket
	if listen == nil {
		listen = net.ListenPacket
	}
	w := &wideRace{r: r, key: key, attempt: attempt, role: role, peer: peer.Addr(), release: release,
		win: make(chan wideWin, 1), stop: make(chan struct{})}
	txkey := mac(key, []byte("reach punch txid"))
	b, _ := peer.MarshalBinary()
	ping := (&packet{typ: typePing, role: role, attempt: attempt, txid: uint64FromMAC(mac(txkey, b))}).marshal(key)
	ttl := r.predictTTL()
	for range k {
		c, err := listen("udp4", ":0")
		if err != nil {
			r.h.Logger.Debug("birthday: helper socket", "err", err)
			break
		}
		r.bstats.sockets.Add(1)
		r.bstats.open.Add(1)
		if err := writeTTL(c, ping, peer, ttl); err != nil {
			r.h.Logger.Debug("birthday: primer", "err", err)
		}
		r.bstats.packets.Add(1)
		w.mu.Lock()
		w.conns = append(w.conns, c)
		i := len(w.conns) - 1
		w.mu.Unlock()
		w.wg.Add(1)
		go w.read(i, c)
	}
	w.k = len(w.conns)
	if w.k == 0 {
		release()
		return nil, errors.New("holepunch: no birthday socket could be opened")
	}
	r.h.Logger.Debug("birthday: wide side primed", "peer", peer, "sockets", w.k)
	go func() {
		t := time.NewTimer(BirthdayWindow)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-w.stop:
		}
		w.end()
	}()
	return w, nil
}

func uint64FromMAC(b []byte) uint64 {
	var v uint64
	for _, x := range b[:8] {
		v = v<<8 | uint64(x)
	}
	return v
}

// read serves helper socket i: the first authenticated ping of the
// attempt from the peer's IP wins the race for it.
func (w *wideRace) read(i int, c net.PacketConn) {
	defer w.wg.Done()
	buf := make([]byte, 1500)
	pongs := 0
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		src := ua.AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if src.Addr() != w.peer || n != PacketLen || buf[0] != Magic {
			continue
		}
		pk, err := unmarshal(buf[:n], w.key)
		if err != nil || pk.attempt != w.attempt || pk.role == w.role || pk.typ != typePing {
			continue
		}
		if pongs < birthdayPongs {
			pongs++
			pong := (&packet{typ: typePong, role: w.role, attempt: w.attempt, txid: pk.txid, observed: src}).marshal(w.key)
			c.WriteTo(pong, ua)
			w.r.bstats.packets.Add(1)
		}
		w.mu.Lock()
		if w.won || w.closed {
			w.mu.Unlock()
			continue
		}
		w.won = true
		w.conns[i] = nil // handed over: end must not close it
		others := w.conns
		w.conns = nil
		w.mu.Unlock()
		w.closeAll(others)
		w.r.bstats.hits.Add(1)
		w.win <- wideWin{conn: c, peer: src, sock: i, k: w.k}
		return // the session's transport reads c from now on
	}
}

// Won yields the winning pair, once.
func (w *wideRace) Won() <-chan wideWin { return w.win }

// end closes every socket not handed over and releases the node's slot.
func (w *wideRace) end() {
	w.mu.Lock()
	w.closed = true
	conns := w.conns
	w.conns = nil
	w.mu.Unlock()
	w.closeAll(conns)
	w.once.Do(w.release)
	w.stopped.Do(func() { close(w.stop) })
}

// closeAll closes the sockets taken out of w.conns (nil: handed over)
// and counts them closed.
func (w *wideRace) closeAll(conns []net.PacketConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
			w.r.bstats.open.Add(-1)
		}
	}
}

// Over is closed when the race ended (won or not): the sockets not
// handed over are closed.
func (w *wideRace) Over() <-chan struct{} { return w.stop }

// Close ends the race and waits for its readers. A winner already handed
// over (Won) is the caller's, unless the caller did not take it: then
// Close closes it too.
func (w *wideRace) Close() {
	w.end()
	w.wg.Wait()
	select {
	case win := <-w.win:
		win.conn.Close()
		w.r.bstats.open.Add(-1)
	default:
	}
}

// closeWinner closes a winning socket the caller took (Won) and is done with.
func (r *Rung) closeWinner(c net.PacketConn) {
	c.Close()
	r.bstats.open.Add(-1)
}

// Probe pings n distinct random ports of ip (1024-65535), one every pace,
// after wait, with the attempt's transaction IDs, so a pong validates the
// port it came from like any address; it stops when the attempt closes
// or an address validated. Probes bypass the node's packet rate (they
// are bounded by n and the node's one birthday slot instead) and never
// reach OnHeard: a probed port is a guess, not a path for other
// sessions. sent, when not nil, counts every probe; release, when not
// nil, is called once the probes are over.
func (a *Attempt) Probe(ip netip.Addr, n int, pace, wait time.Duration, sent *atomic.Int64, release func()) {
	if release == nil {
		release = func() {}
	}
	ip = ip.Unmap()
	if n <= 0 || !ip.Is4() {
		release()
		return
	}
	a.mu.Lock()
	if a.probed == nil {
		a.probed = map[netip.AddrPort]bool{}
	}
	a.mu.Unlock()
	a.probing.Add(1)
	go func() {
		defer a.probing.Done()
		defer release()
		defer func() {
			a.m.log.Debug("birthday: probes over", "ip", ip, "probes", a.probes.Load(), "hit", a.ProbeHit())
		}()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-a.stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
		// The pace is kept by the clock, not by ticks: a busy machine
		// that wakes the loop late sends what is due at once (at most
		// probeBurst), so the probes are out when the forwarding rungs'
		// wait (Rung.Patience) assumes they are.
		start := time.Now()
		next := time.NewTimer(0)
		defer next.Stop()
		tried := map[uint16]bool{}
		for out := 0; out < n; {
			select {
			case <-a.stop:
				return
			case <-next.C:
			}
			due := probesDue(time.Since(start), pace, n, out)
			for ; out < due; out++ {
				p := uint16(minProbePort + rand.IntN(65536-minProbePort))
				for tried[p] {
					p = uint16(minProbePort + rand.IntN(65536-minProbePort))
				}
				tried[p] = true
				to := netip.AddrPortFrom(ip, p)
				a.mu.Lock()
				a.probed[to] = true
				hit := a.probeHit.IsValid()
				a.mu.Unlock()
				if hit {
					return
				}
				pk := &packet{typ: typePing, role: a.p.Role, attempt: a.p.Attempt, txid: a.txid(to)}
				if err := a.m.sock.WriteTo(pk.marshal(a.p.Key), to); err != nil {
					a.m.log.Debug("birthday: probe", "to", to, "err", err)
				}
				a.probes.Add(1)
				if sent != nil {
					sent.Add(1)
				}
			}
			next.Reset(time.Until(start.Add(time.Duration(out) * pace)))
		}
	}()
}

// probeBurst bounds the probes a late wake-up sends back to back.
const probeBurst = 8

// probesDue is how many of n probes paced pace apart should be out
// elapsed after the first, given sent are: one more at least, at most
// probeBurst more.
func probesDue(elapsed, pace time.Duration, n, sent int) int {
	due := n
	if pace > 0 {
		due = int(elapsed/pace) + 1
	}
	return min(n, max(due, sent+1), sent+probeBurst)
}

// Probes returns how many probes the attempt sent.
func (a *Attempt) Probes() int { return int(a.probes.Load()) }

// ProbeHit returns the probed address that answered (invalid: none).
func (a *Attempt) ProbeHit() netip.AddrPort {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.probeHit
}

// isProbe reports whether addr was probed and marks it the hit; the
// caller holds a.mu.
func (a *Attempt) isProbeLocked(addr netip.AddrPort) bool {
	if !a.probed[addr] {
		return false
	}
	if !a.probeHit.IsValid() {
		a.probeHit = addr
	}
	return true
}

// birthdayDetail is a dialler's session's strategy detail when the
// birthday mode made the path.
func birthdayDetail(role, k, probes int, won netip.AddrPort) string {
	if role == birthdayWide {
		return fmt.Sprintf("birthday: our NAT allocates ports at random; %d of our mappings primed, the peer's probe reached port %d", k, won.Port())
	}
	return fmt.Sprintf("birthday: the peer's NAT allocates ports at random; %d probes sent, its port %d answered", probes, won.Port())
}
