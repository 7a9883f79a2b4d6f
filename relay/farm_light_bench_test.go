package relay_test

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// Keepalive-only peers: BenchmarkRelayScale's client farms link every
// simulated peer with the real clients (rendezvous.Client registering
// over QUIC, relay.Client linking over UDP, from a pathsock socket shared
// by lightPerSocket peers), wait until the registration has parked and
// the link has detached, and then keep of the peer only what its
// keepalives need: the parked registration's token, key and counter and
// the detached link's data token (48 bytes). The farm then sends
// what the real node would send while idle, from the same socket (so
// from the same address), and nothing else:
//
//   - the parked registration's keepalive (docs/protocol.md, "Parked
//     registrations": 34 bytes, HMAC'd, counter growing) once at once and
//     then every period the server gave (PARKED's keepalive, 25 s);
//   - the detached link's PING (a data packet to the all-zero peer key,
//     8 random bytes) every period the link uses (10 s);
//
// and reads the server's answers (counted: a keepalive unanswered is
// not resent, unlike the real node's, which resends after 1, 2 and 4 s
// and then registers again; the benchmark checks that the server
// answered). The real clients are closed after their socket: the datagrams
// they send on closing (the parked registration's "leave", the link's
// ERROR) cannot leave, so the server keeps both, as it would for a node
// that stays. What the server does per peer is then what a parked,
// detached node causes; what the farm does per peer is two timer slots
// and two datagrams a period each way, instead of the real clients'
// goroutines, timers and QUIC state (100–145 KB a peer).

// lightPerSocket is how many peers share one UDP socket by default
// (RELAY_SCALE_PER_SOCKET sets another): few, so that a socket's read
// loop and quic-go's per-Transport connection-ID map are not shared by
// many handshakes at once (at 100 a socket a farm stalled on that lock).
const lightPerSocket = 10

// wheelTick is the resolution of the farm's keepalive schedule.
const wheelTick = 100 * time.Millisecond

// lightPeer is what the farm keeps of one peer.
type lightPeer struct {
	sock    int32
	regTok  uint64 // parked registration's token
	regCtr  uint64 // its last counter sent
	regKey  [16]byte
	linkTok uint64 // detached link's data token; 0: no link
}

// lightFarm holds keepalive-only peers and sends their keepalives.
type lightFarm struct {
	mu        sync.Mutex
	server    netip.AddrPort // where every keepalive goes (one server)
	socks     []*net.UDPConn
	peers     []lightPeer
	parkSlots [][]int32 // peers by the tick of their next park keepalive
	pingSlots [][]int32 // peers by the tick of their next link PING
	start     time.Time

	sentPark, sentPing, pongPark, pongPing, unknown, other atomic.Uint64
}

// lightStats are a farm's keepalive counters.
type lightStats struct {
	sentPark, sentPing, pongPark, pongPing, unknown, other uint64
}

func (f *lightFarm) stats() lightStats {
	return lightStats{f.sentPark.Load(), f.sentPing.Load(), f.pongPark.Load(), f.pongPing.Load(), f.unknown.Load(), f.other.Load()}
}

// errNotIdle: a peer did not park (or its link did not detach) in time.
var errNotIdle = errors.New("peer did not park and detach in time")

// linkLightPeers links count peers to the server at cs as keepalive-only
// peers (link: "udp", or "" for registrations alone), workers handshakes
// at a time, perSock peers to a socket; up to tolerate peers may fail.
func linkLightPeers(cs string, count int, link string, workers, perSock, tolerate int) (_ *lightFarm, failed int, err error) {
	sa, err := rendezvous.ParseServerAddr(cs)
	if err != nil {
		return nil, 0, err
	}
	f := &lightFarm{start: time.Now()}
	go f.run() // from the first peer converted: the server drops a parked registration or detached link that falls silent
	var nFailed atomic.Int64
	fail := func(e error) error {
		if nFailed.Add(1) > int64(tolerate) {
			return e
		}
		fmt.Fprintf(os.Stderr, "left out: %v\n", e)
		return nil
	}
	var errMu sync.Mutex
	setErr := func(e error) {
		errMu.Lock()
		if err == nil {
			err = e
		}
		errMu.Unlock()
	}
	failed2 := func() bool {
		errMu.Lock()
		defer errMu.Unlock()
		return err != nil
	}
	// one links peer i on tr.
	one := func(tr *quic.Transport, i int) (lightMember, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		k, err := identity.GenerateKey()
		if err != nil {
			return lightMember{}, err
		}
		rc, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: k, Servers: []rendezvous.ServerAddr{sa},
			Transport: tr, DialTimeout: 15 * time.Second, Logger: quiet()})
		if err != nil {
			return lightMember{}, err
		}
		if err := rc.Start(ctx); err != nil {
			rc.Close()
			return lightMember{}, fmt.Errorf("peer %d: register: %w", i, err)
		}
		m := lightMember{rc: rc}
		if link != "" {
			c, err := relay.NewClient(relay.ClientConfig{Key: k, Dialers: []relay.LinkDialer{relay.UDPDialer{Socket: tr}},
				DialTimeout: 15 * time.Second, Logger: quiet()})
			if err != nil {
				rc.Close()
				return lightMember{}, err
			}
			l, err := c.Connect(ctx, sa)
			if err != nil {
				c.Close()
				rc.Close()
				return lightMember{}, fmt.Errorf("peer %d: link: %w", i, err)
			}
			m.c, m.l = c, l
		}
		return m, nil
	}
	// A group is one socket's peers: a worker links them one after
	// another (each tried up to three times), hands the group to a
	// goroutine of its own that waits for them to park and detach and
	// converts them, and goes on with the next group.
	var wg, convs sync.WaitGroup
	var done atomic.Int64
	start := time.Now()
	groups := make(chan int)
	for range workers {
		wg.Go(func() {
			for gi := range groups {
				uc, e := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if e != nil {
					setErr(e)
					continue
				}
				tr := &quic.Transport{Conn: pathsock.New(uc)}
				var ms []lightMember
				for i := gi * perSock; i < min((gi+1)*perSock, count); i++ {
					var m lightMember
					var e error
					for range 3 {
						if m, e = one(tr, i); e == nil {
							break
						}
					}
					if e != nil {
						if e = fail(e); e != nil {
							setErr(e)
						}
					} else {
						ms = append(ms, m)
					}
					if n := done.Add(1); n%2000 == 0 {
						fmt.Fprintf(os.Stderr, "%d peers in %v\n", n, time.Since(start).Round(time.Second))
					}
				}
				convs.Go(func() {
					if k, e := f.convert(uc, tr, ms, link != ""); e != nil {
						setErr(e)
					} else {
						for range k {
							if e := fail(errNotIdle); e != nil {
								setErr(e)
								break
							}
						}
					}
				})
			}
		})
	}
	for gi := 0; gi*perSock < count && !failed2(); gi++ {
		groups <- gi
	}
	close(groups)
	wg.Wait()
	convs.Wait()
	return f, int(nFailed.Load()), err
}

// lightMember is a peer with its real clients, until converted.
type lightMember struct {
	rc *rendezvous.Client
	c  *relay.Client // nil: registered only
	l  relay.Link
}

// parkedReg is a parked registration's state, read out of a
// rendezvous.Client (which keeps it unexported: parkclient.go's
// clientPark; a benchmark may look). park is the *clientPark, whose
// counter is read again once the client has closed.
type parkedReg struct {
	token     uint64
	key       [16]byte
	keepalive time.Duration
	server    netip.AddrPort
	park      reflect.Value
}

// field is v's field name, readable although unexported; it panics if
// there is none (rendezvous changed: this file must follow).
func field(v reflect.Value, name string) reflect.Value {
	f := v.FieldByName(name)
	if !f.IsValid() {
		panic(fmt.Sprintf("farm: %s has no field %q: update farm_light_bench_test.go", v.Type(), name))
	}
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
}

// parkedState reads rc's parked registration; ok is false while it has
// not parked.
func parkedState(rc *rendezvous.Client) (p parkedReg, ok bool) {
	conn := field(reflect.ValueOf(rc).Elem(), "conn")
	if conn.IsNil() {
		return p, false
	}
	cc := conn.Elem()
	park := field(cc, "park")
	if park.IsNil() {
		return p, false
	}
	pk := park.Elem()
	p.token = field(pk, "token").Uint()
	p.key = field(pk, "key").Interface().([16]byte)
	p.keepalive = time.Duration(field(pk, "keepalive").Int())
	p.server = field(cc, "remote").Interface().(netip.AddrPort)
	p.park = park
	return p, true
}

// convert waits (up to 20 s) for the peers of one socket to park and
// detach, and makes them keepalive-only peers: the socket is kept (a
// copy of its descriptor) and closed under the real clients, which are
// then closed (what they send on closing cannot leave). It returns how
// many peers did not park or detach in time (left out: the server drops
// them when they fall silent).
func (f *lightFarm) convert(uc *net.UDPConn, tr *quic.Transport, ms []lightMember, linked bool) (left int, err error) {
	regs := make([]parkedReg, len(ms))
	ready := make([]bool, len(ms))
	links := make([]uint64, len(ms))
	var pingEvery time.Duration
	var linkServer netip.AddrPort
	deadline := time.Now().Add(20 * time.Second)
	for {
		all := true
		for i, m := range ms {
			if ready[i] {
				continue
			}
			p, ok := parkedState(m.rc)
			if ok && linked {
				var tok uint64
				tok, linkServer, pingEvery, ok = relay.DetachedKeepalive(m.l)
				links[i] = tok
			}
			if ok {
				regs[i], ready[i] = p, true
			} else {
				all = false
			}
		}
		if all || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	file, err := uc.File() // the socket, kept past uc.Close
	if err != nil {
		return 0, err
	}
	defer file.Close()
	uc.Close()
	tr.Close()
	for _, m := range ms {
		if m.c != nil {
			m.c.Close()
		}
		m.rc.Close()
	}
	pc, err := net.FilePacketConn(file)
	if err != nil {
		return 0, err
	}
	sock := pc.(*net.UDPConn)
	f.mu.Lock()
	defer f.mu.Unlock()
	si := int32(len(f.socks))
	f.socks = append(f.socks, sock)
	now := f.tick()
	for i := range ms {
		if !ready[i] {
			left++
			continue
		}
		r := regs[i]
		if !f.server.IsValid() {
			f.server = r.server
			f.parkSlots = make([][]int32, max(r.keepalive/wheelTick, 1))
			if linked {
				f.pingSlots = make([][]int32, max(pingEvery/wheelTick, 1))
			}
		}
		if r.server != f.server || linked && linkServer != f.server ||
			len(f.parkSlots) != int(max(r.keepalive/wheelTick, 1)) || linked && len(f.pingSlots) != int(max(pingEvery/wheelTick, 1)) {
			return left, fmt.Errorf("farm: peers differ in server (%v, %v, %v) or periods (%v, %v)", f.server, r.server, linkServer, r.keepalive, pingEvery)
		}
		pi := int32(len(f.peers))
		f.peers = append(f.peers, lightPeer{sock: si, regTok: r.token, regKey: r.key,
			regCtr: field(r.park.Elem(), "sndCtr").Uint(), linkTok: links[i]})
		// The parked node's first keepalive goes at once (runParked's,
		// which the closed socket may have kept in), then every period;
		// the link's first PING one period after it detached.
		f.sendPark(&f.peers[pi])
		slot := (now + int64(len(f.parkSlots))) % int64(len(f.parkSlots))
		f.parkSlots[slot] = append(f.parkSlots[slot], pi)
		if linked {
			slot := (now + int64(len(f.pingSlots))) % int64(len(f.pingSlots))
			f.pingSlots[slot] = append(f.pingSlots[slot], pi)
		}
	}
	go f.read(sock)
	return left, nil
}

// tick is the schedule's tick now.
func (f *lightFarm) tick() int64 { return int64(time.Since(f.start) / wheelTick) }

// sendPark sends p's parked-registration keepalive (f.mu held).
func (f *lightFarm) sendPark(p *lightPeer) {
	p.regCtr++
	b := appendParkKeepalive(make([]byte, 0, 34), p.regTok, p.regCtr, &p.regKey)
	f.socks[p.sock].WriteToUDPAddrPort(b, f.server)
	f.sentPark.Add(1)
}

// sendPing sends p's detached link's PING (f.mu held).
func (f *lightFarm) sendPing(p *lightPeer) {
	var nonce [8]byte
	rand.Read(nonce[:])
	f.socks[p.sock].WriteToUDPAddrPort(relay.AppendDetachedPing(nil, p.linkTok, nonce), f.server)
	f.sentPing.Add(1)
}

// run sends the keepalives due, tick by tick (a late tick catches up).
func (f *lightFarm) run() {
	t := time.NewTicker(wheelTick)
	defer t.Stop()
	f.mu.Lock()
	next := f.tick() + 1
	f.mu.Unlock()
	for range t.C {
		f.mu.Lock()
		for now := f.tick(); next <= now; next++ {
			if n := int64(len(f.parkSlots)); n > 0 {
				for _, pi := range f.parkSlots[next%n] {
					f.sendPark(&f.peers[pi])
				}
			}
			if n := int64(len(f.pingSlots)); n > 0 {
				for _, pi := range f.pingSlots[next%n] {
					f.sendPing(&f.peers[pi])
				}
			}
		}
		f.mu.Unlock()
	}
}

// read counts the server's answers on one socket.
func (f *lightFarm) read(uc *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, _, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := buf[:n]
		switch {
		case n == 34 && b[0] == 0x2f && b[17] == 0x01: // park PONG
			f.pongPark.Add(1)
		case n == 34 && b[0] == 0x2f && b[17] == 0x05: // "unknown": register again
			f.unknown.Add(1)
		case relay.IsDetachedPong(b):
			f.pongPing.Add(1)
		default:
			f.other.Add(1)
		}
	}
}

// appendParkKeepalive appends a parked registration's keepalive as the
// node sends it (docs/protocol.md, "Parked registrations"): 0x2e, token,
// counter, kind 0 (keepalive), and the first 16 bytes of HMAC-SHA256
// under the park key of "reach park" and the first 18 bytes.
func appendParkKeepalive(dst []byte, token, counter uint64, key *[16]byte) []byte {
	start := len(dst)
	dst = append(dst, 0x2e)
	dst = binary.BigEndian.AppendUint64(dst, token)
	dst = binary.BigEndian.AppendUint64(dst, counter)
	dst = append(dst, 0x00)
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte("reach park"))
	m.Write(dst[start:])
	return append(dst, m.Sum(nil)[:16]...)
}
