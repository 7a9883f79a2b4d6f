package rendezvous

import (
	"context"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The client's side of parked registrations (park.go, parkwire.go).

// errConnParked: a write on a registration that parked; the caller asks
// again on the registration that replaces it (waitConn wakes it).
var errConnParked = errors.New("rendezvous: registration parked")

// parkRetries are the waits before each keepalive resent when the server
// did not answer the last one; after the last the registration is lost.
var parkRetries = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}

// clientPark is a parked registration at the node.
type clientPark struct {
	token     uint64
	key       [16]byte
	keepalive time.Duration
	events    chan byte // datagram kinds from the server, taken by the demux
	wake      chan struct{}

	mu     sync.Mutex // guards the counters (the demux and runParked)
	sndCtr uint64
	rcvCtr uint64
}

// parkEligible reports whether cc may park now: the server offers it,
// the node's socket can take the datagrams, nothing is in flight and
// nothing but pings went either way for parkAfter.
func (cc *clientConn) parkEligible() bool {
	if cc.parkAfter <= 0 || cc.paths == nil || cc.c.cfg.Volunteer != nil {
		return false
	}
	if time.Since(time.Unix(0, cc.active.Load())) < cc.parkAfter {
		return false
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.pending != nil && len(cc.pending) == 0 && len(cc.flights) == 0
}

// tryPark sends PARK if cc may park; writes wait until the server's
// answer arrives (readFrames).
func (cc *clientConn) tryPark() {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	if cc.parking || cc.parkStuck || cc.park != nil || cc.Err() != nil || !cc.parkEligible() {
		return
	}
	b, _ := appendFrame(nil, typePark, nil)
	cc.setWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := cc.rw.Write(b); err != nil {
		return // readLoop sees the connection die
	}
	cc.parking = true
	time.AfterFunc(parkAnswerTimeout, cc.parkUnanswered)
}

// parkAnswerTimeout is how long the node waits for PARKED (writes wait
// meanwhile) before it stays registered on the connection as it is and
// never asks to park on it again. A server answers at once: only a
// broken one, or a connection about to die, takes longer.
var parkAnswerTimeout = 5 * time.Second

// parkUnanswered ends the wait for a PARKED that did not come within
// parkAnswerTimeout: writes go on on the connection, which stays the
// registration (should PARKED come later after all, parked fails the
// requests written meanwhile, which the server never read).
func (cc *clientConn) parkUnanswered() {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	if !cc.parking {
		return
	}
	cc.parking, cc.parkStuck = false, true
	cc.wcond.Broadcast()
	cc.c.log.Warn("the server did not answer PARK; staying registered", "server", cc.server.String(), "within", parkAnswerTimeout)
}

// parked handles PARKED: the registration parked (readFrames returns
// errConnParked) or the server refused (the connection goes on).
func (cc *clientConn) parked(pb parkedBody) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.parking = false
	cc.wcond.Broadcast()
	if pb.Refused != "" || pb.Token == 0 || len(pb.Key) != 16 {
		cc.c.log.Debug("server refused to park the registration", "reason", pb.Refused)
		cc.active.Store(time.Now().UnixNano()) // try again after parkAfter
		return nil
	}
	p := &clientPark{token: pb.Token, keepalive: time.Duration(pb.KeepaliveMS) * time.Millisecond,
		events: make(chan byte, 4), wake: make(chan struct{}, 1)}
	copy(p.key[:], pb.Key)
	if p.keepalive <= 0 {
		p.keepalive = 25 * time.Second
	}
	cc.park = p
	close(cc.parkedCh)
	if cc.parkStuck {
		// PARKED came after the node stopped waiting for it: the server
		// read nothing it wrote since. The requests fail with
		// errConnParked (Connect asks again, waking the registration).
		cc.failPendingParked()
	}
	return errConnParked
}

// failPendingParked fails the requests waiting on cc, which parked
// before the server read them, with errConnParked.
func (cc *clientConn) failPendingParked() {
	cc.mu.Lock()
	pending := cc.pending
	if pending != nil {
		cc.pending = map[uint64]chan result{}
	}
	cc.mu.Unlock()
	for _, ch := range pending {
		ch <- result{err: fmt.Errorf("%w: %w", ErrServerLost, errConnParked)}
	}
}

// requestWake asks a parked cc to re-attach (a Connect, a mailbox
// request); false if cc is not parked.
func (cc *clientConn) requestWake() bool {
	cc.wmu.Lock()
	p := cc.park
	cc.wmu.Unlock()
	if p == nil {
		return false
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return true
}

// isParked reports whether cc parked.
func (cc *clientConn) isParked() bool {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	return cc.park != nil
}

// runParked keeps parked cc alive with keepalives until it re-attaches
// (WAKE, the node's own request, or the server's hint that it does not
// know the registration), is lost, or the client closes. Whenever the
// node leaves the parked registration other than by re-attaching to it
// (it closes, fails over, or re-attaching failed) it tells the server
// (leave), which forgets the registration at once instead of waking and
// queueing for a node that is gone for up to 80 s.
func (cc *clientConn) runParked() {
	c, p := cc.c, cc.park
	cc.closeTransport()
	remove := cc.paths.InterceptToken(parkToNode, cc.remote, p.token, cc.takePark)
	defer remove()
	c.log.Info("registration parked", "server", cc.server.String(), "keepalive", p.keepalive)
	send := func(kind byte) {
		p.mu.Lock()
		p.sndCtr++
		b := appendParkDatagram(nil, parkToServer, p.token, p.sndCtr, kind, &p.key)
		p.mu.Unlock()
		cc.paths.WriteToUDPAddrPort(b, cc.remote)
	}
	// lose gives up the parked registration: the server is told (it may
	// hear us although we do not hear it) and maintain fails over.
	lose := func(err error) {
		send(parkLeave)
		cc.fail(err)
		c.lost(cc, err)
	}
	reattach := func(why string) {
		if err := cc.reattach(why); err != nil {
			lose(err)
		}
	}
	// The first keepalive goes at once: its answer says the server parked
	// the registration here, or (WAKE) that frames already wait.
	send(parkKeepalive)
	misses := 0
	t := time.NewTimer(parkRetries[0])
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			send(parkLeave) // the server forgets the registration now
			cc.fail(ErrClosed)
			return
		case <-cc.done:
			// Closed (Close), or another registration of this client
			// took over: either way this one is left.
			send(parkLeave)
			return
		case <-p.wake:
			reattach("the node's own request")
			return
		case k := <-p.events:
			switch k {
			case parkKindPong:
				misses = 0
				t.Reset(p.keepalive)
			case parkKindWake:
				reattach("woken by the server")
				return
			case parkKindUnknown:
				// The server restarted, or forgot the registration: it
				// said so in answer to one of our keepalives.
				reattach("the server no longer knows the parked registration")
				return
			case parkKindReplaced:
				cc.fail(ErrReplaced)
				c.lost(cc, &ProtocolError{Code: codeReplaced, Reason: "a newer connection registered this peer ID"})
				return
			case parkKindGone:
				cc.fail(ErrServerLost)
				c.lost(cc, &ProtocolError{Code: codeShutdown, Reason: "server shutting down"})
				return
			}
		case <-t.C:
			if misses > len(parkRetries)-1 {
				lose(errParkLost)
				return
			}
			send(parkKeepalive)
			t.Reset(parkRetries[misses])
			misses++
		}
	}
}

// errParkLost: a parked registration's server stopped answering its
// keepalives; the client registers again (failing over), as for any lost
// server (it matches ErrServerLost).
var errParkLost = fmt.Errorf("%w: parked registration: the server stopped answering keepalives", ErrServerLost)

// reattach registers again with cc's server, naming the parked token so
// that the server hands over what waits, and makes that the client's
// registration. On an error the caller gives cc up (and maintain fails
// over).
func (cc *clientConn) reattach(why string) error {
	c := cc.c
	c.log.Debug("re-attaching the parked registration", "server", cc.server.String(), "why", why)
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.DialTimeout)
	defer cancel()
	nc, err := c.dialQUIC(ctx, cc.server)
	if err == nil {
		nc.resume = cc.park.token
		if err = nc.register(ctx); err != nil {
			nc.closeTransport()
		}
	}
	if err != nil {
		c.log.Warn("re-attaching a parked registration failed", "server", cc.server.String(), "err", err)
		return err
	}
	c.log.Debug("parked registration re-attached", "server", cc.server.String())
	c.install(nc, c.lastIdxOf(nc.server))
	return nil
}

// testParkDrop, set by tests, drops the server's park datagrams of the
// kinds for which it returns true (a lost WAKE).
var testParkDrop atomic.Pointer[func(kind byte) bool]

// takePark handles one park datagram from the server with cc's token, on
// the socket's read loop: one with a valid MAC and a counter above the
// last goes to the parked registration; anything else is dropped.
func (cc *clientConn) takePark(b []byte, _ netip.AddrPort) (int, netip.AddrPort) {
	if _, ok := parseParkHead(b); !ok {
		return 0, netip.AddrPort{}
	}
	p := cc.park
	if b[17] == parkKindUnknown {
		if p.checkUnknownHint(b) {
			select {
			case p.events <- parkKindUnknown:
			default:
			}
		}
		return 0, netip.AddrPort{}
	}
	ctr, kind, err := openParkDatagram(b, &p.key)
	if err != nil {
		return 0, netip.AddrPort{}
	}
	if h := testParkDrop.Load(); h != nil && (*h)(kind) {
		return 0, netip.AddrPort{}
	}
	p.mu.Lock()
	fresh := ctr > p.rcvCtr
	if fresh {
		p.rcvCtr = ctr
	}
	p.mu.Unlock()
	if fresh {
		select {
		case p.events <- kind:
		default:
		}
	}
	return 0, netip.AddrPort{}
}

// unknownHintWindow is how many of its latest keepalives a node takes an
// "unknown" hint for (the keepalive and its resends).
const unknownHintWindow = 4

// checkUnknownHint reports whether b, an "unknown" hint, answers one of
// the node's latest keepalives: it echoes that keepalive's counter and
// MAC, which only who saw the keepalive knows.
func (p *clientPark) checkUnknownHint(b []byte) bool {
	if testParkDrop.Load() != nil && (*testParkDrop.Load())(parkKindUnknown) {
		return false
	}
	ctr := binary.BigEndian.Uint64(b[9:17])
	p.mu.Lock()
	sent := p.sndCtr
	p.mu.Unlock()
	if ctr == 0 || ctr > sent || ctr+unknownHintWindow <= sent {
		return false
	}
	ka := appendParkDatagram(make([]byte, 0, parkDatagramLen), parkToServer, p.token, ctr, parkKeepalive, &p.key)
	return hmac.Equal(ka[18:], b[18:])
}
