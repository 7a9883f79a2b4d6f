package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/internal/pathsock"
)

// clientConn is one registration with one server over QUIC or TLS.
type clientConn struct {
	c                *Client
	server           ServerAddr
	proto            string // "udp" or "tcp"
	rw               io.ReadWriter
	fr               *frameReader
	setReadDeadline  func(time.Time) error
	setWriteDeadline func(time.Time) error
	closeTransport   func()
	mapErr           func(error) error // turns transport errors into ours

	observed  netip.AddrPort
	remote    netip.AddrPort // the server's UDP address (QUIC only)
	keepalive time.Duration
	fleet     []string             // REGISTERED: the other live servers of the fleet
	inFleet   bool                 // REGISTERED: the server is in a fleet (fleet is its list, maybe empty)
	relearned chan struct{}        // a PONG changed the servers known: pingLoop re-arms
	parkedCh  chan struct{}        // closed when the registration parked: pingLoop ends
	protocols []string             // REGISTERED's: the server's other ALPN protocols
	codes     bool                 // REGISTERED's: the server keeps a short-code mailbox
	rtt       func() time.Duration // nil: unknown (TCP)

	wmu sync.Mutex // serialises writes
	// Parking (parkclient.go). parking (PARK sent, no answer yet) and
	// park are guarded by wmu; writes wait on wcond while parking.
	paths     *pathsock.Conn // the node's socket, if it can take park datagrams
	parkAfter time.Duration  // idle time before PARK; zero: never
	active    atomic.Int64   // UnixNano of the last frame but PING/PONG either way
	parking   bool
	parkStuck bool // PARK went unanswered (parkAnswerTimeout): not again on this connection
	park      *clientPark
	wcond     *sync.Cond
	resume    uint64 // REGISTER's: the parked registration this one takes over

	mu      sync.Mutex
	pending map[uint64]chan result // nil once failed
	flights map[flightKey]*Flight
	err     error
	done    chan struct{}
}

type result struct {
	body resultBody
	code *codeResultBody // a CODE_RESULT's
	err  error
}

const writeTimeout = 10 * time.Second

func newClientConn(c *Client, sa ServerAddr, proto string) *clientConn {
	cc := &clientConn{c: c, server: sa, proto: proto, pending: make(map[uint64]chan result), done: make(chan struct{}),
		relearned: make(chan struct{}, 1), parkedCh: make(chan struct{})}
	cc.wcond = sync.NewCond(&cc.wmu)
	cc.active.Store(time.Now().UnixNano())
	return cc
}

// register sends REGISTER and waits for REGISTERED.
func (cc *clientConn) register(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		cc.setReadDeadline(time.Now())
		cc.setWriteDeadline(time.Now())
	})
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		cc.setReadDeadline(dl)
		cc.setWriteDeadline(dl)
	}
	b, _ := appendFrame(nil, typeRegister, registerBody{Agent: "reach", Resume: cc.resume})
	if _, err := cc.rw.Write(b); err != nil {
		return cc.mapErr(err)
	}
	cc.fr = newFrameReader(cc.rw, maxFrameBody)
	for {
		t, body, err := cc.fr.next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return cc.mapErr(err)
		}
		switch t {
		case typeRegistered:
			var rb registeredBody
			if err := decodeBody(t, body, &rb); err != nil {
				return err
			}
			if rb.Peer != cc.c.cfg.Key.ID() {
				return &ProtocolError{Code: codeBadBody, Reason: "server registered a different peer ID"}
			}
			cc.observed = netip.AddrPortFrom(rb.Observed.Addr().Unmap(), rb.Observed.Port())
			cc.protocols = rb.Protocols
			cc.fleet, cc.inFleet = rb.Servers, rb.Fleet
			cc.codes = rb.Codes
			if pa := cc.c.cfg.ParkAfter; rb.ParkAfterMS > 0 && pa >= 0 {
				cc.parkAfter = max(pa, time.Duration(rb.ParkAfterMS)*time.Millisecond)
			}
			cc.keepalive = max(time.Duration(rb.KeepaliveMS)*time.Millisecond, 100*time.Millisecond)
			if rb.KeepaliveMS == 0 {
				cc.keepalive = 10 * time.Second
			}
			cc.setReadDeadline(time.Time{})
			cc.setWriteDeadline(time.Time{})
			return nil
		case typeError:
			var eb errorBody
			decodeBody(t, body, &eb)
			return &ProtocolError{Code: eb.Code, Reason: eb.Reason}
		case typePing, typePong:
		default:
			return &ProtocolError{Code: codeUnexpected, Reason: t.String() + " before REGISTERED"}
		}
	}
}

// readLoop handles frames from the server until the connection dies.
func (cc *clientConn) readLoop() {
	err := cc.readFrames()
	cc.wmu.Lock()
	cc.parking = false // writers waiting for PARKED see the outcome
	cc.wcond.Broadcast()
	cc.wmu.Unlock()
	if errors.Is(err, errConnParked) {
		cc.runParked()
		return
	}
	cc.fail(err)
	cc.c.lost(cc, err)
}

func (cc *clientConn) readFrames() error {
	for {
		cc.setReadDeadline(time.Now().Add(cc.silentFor()))
		t, body, err := cc.fr.next()
		if err != nil {
			if e := cc.Err(); e != nil {
				return e
			}
			var pe *ProtocolError
			if errors.As(err, &pe) {
				cc.writeFrame(typeError, errorBody{Code: pe.Code, Reason: pe.Reason}, false)
			}
			return cc.mapErr(err)
		}
		if t != typePing && t != typePong && t != typeParked {
			cc.active.Store(time.Now().UnixNano())
		}
		switch t {
		case typeParked:
			var pb parkedBody
			if err := decodeBody(t, body, &pb); err != nil {
				return err
			}
			if err := cc.parked(pb); err != nil {
				return err
			}
		case typeResult:
			var rb resultBody
			if err := decodeBody(t, body, &rb); err != nil {
				return err
			}
			cc.deliver(rb)
		case typeCodeResult:
			var rb codeResultBody
			if err := decodeBody(t, body, &rb); err != nil {
				return err
			}
			cc.deliverResult(rb.ID, result{code: &rb})
		case typeIntro:
			var ib introBody
			if err := decodeBody(t, body, &ib); err != nil {
				return err
			}
			in := &Introduction{Offer: ib.Offer, cc: cc, id: ib.ID, flight: NewFlight()}
			in.flight.arm(cc, flightKey{intro: true, id: ib.ID})
			select {
			case cc.c.incoming <- in:
			default:
				cc.c.log.Warn("incoming queue full; rejecting introduction", "from", ib.Offer.Peer.Short())
				in.flight.Close()
				cc.writeFrame(typeReject, rejectBody{ID: ib.ID, Reason: "busy"}, false)
			}
		case typeFlight:
			var fb flightBody
			if err := decodeBody(t, body, &fb); err != nil {
				return err
			}
			cc.flightFrame(fb)
		case typeVolunteered:
			var vb volunteeredBody
			if err := decodeBody(t, body, &vb); err != nil {
				return err
			}
			cc.c.volunteered(cc, vb)
		case typePing:
			var p pingBody
			decodeBody(t, body, &p)
			cc.writeFrame(typePong, p, false)
		case typePong:
			var p pingBody
			if err := decodeBody(t, body, &p); err != nil {
				return err
			}
			if p.Fleet {
				cc.c.mu.Lock()
				if cc.c.conn == cc {
					cc.c.learnLocked(p.Servers, cc.server)
					cc.c.lastIdx = cc.c.indexLocked(cc.server)
				}
				cc.c.mu.Unlock()
				select {
				case cc.relearned <- struct{}{}:
				default:
				}
			}
		case typeError:
			var eb errorBody
			decodeBody(t, body, &eb)
			return &ProtocolError{Code: eb.Code, Reason: eb.Reason}
		default:
			return &ProtocolError{Code: codeUnexpected, Reason: t.String() + " is not sent by servers"}
		}
	}
}

// silentFor is how long the server may stay silent before the
// connection is taken for dead (ClientConfig.Liveness).
func (cc *clientConn) silentFor() time.Duration {
	l := cc.c.cfg.Liveness
	if l == 0 && len(cc.c.serverList()) > 1 {
		l = DefaultFleetLiveness
	}
	if l > 0 {
		return max(min(l, 3*cc.keepalive), minLiveness)
	}
	return 3 * cc.keepalive
}

// minLiveness is the least silence taken for a dead server.
const minLiveness = 300 * time.Millisecond

// pingLoop pings every third of silentFor, which it reads again for each
// ping: a client that learns a second server pings more often from then
// on.
func (cc *clientConn) pingLoop() {
	t := time.NewTimer(cc.silentFor() / 3)
	defer t.Stop()
	// parkT fires when the registration may have been idle for parkAfter
	// (parkclient.go); never without an offer to park.
	parkT := time.NewTimer(time.Hour)
	defer parkT.Stop()
	parkT.Stop()
	armPark := func() {
		if cc.parkAfter > 0 {
			idle := time.Since(time.Unix(0, cc.active.Load()))
			parkT.Reset(max(cc.parkAfter-idle, 10*time.Millisecond))
		}
	}
	armPark()
	var seq uint64
	for {
		select {
		case <-parkT.C:
			if cc.parkEligible() {
				cc.tryPark()
				parkT.Reset(cc.parkAfter) // if refused or lost: not before
			} else {
				armPark()
			}
		case <-cc.parkedCh:
			return
		case <-t.C:
			seq++
			if cc.write(typePing, pingBody{Seq: seq}) != nil {
				return
			}
			t.Reset(cc.silentFor() / 3)
		case <-cc.relearned:
			// The servers known changed (a PONG): the next ping comes
			// within the new interval.
			t.Reset(cc.silentFor() / 3)
		case <-cc.done:
			return
		}
	}
}

// write sends one frame; a failure kills the connection. While PARK
// awaits its answer it waits; on a parked registration it fails with
// errConnParked (and ErrServerLost).
func (cc *clientConn) write(t msgType, body any) error { return cc.writeFrame(t, body, true) }

// writeFrame is write; the reader's own writes do not wait for PARKED
// (wait false): the reader is what takes it.
func (cc *clientConn) writeFrame(t msgType, body any, wait bool) error {
	b, err := appendFrame(nil, t, body)
	if err != nil {
		return err
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	for wait && cc.parking {
		cc.wcond.Wait()
	}
	if cc.park != nil {
		return fmt.Errorf("%w: %w", ErrServerLost, errConnParked)
	}
	if err := cc.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrServerLost, err)
	}
	if t != typePing && t != typePong {
		cc.active.Store(time.Now().UnixNano())
	}
	cc.setWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := cc.rw.Write(b); err != nil {
		err = cc.mapErr(err)
		cc.fail(err)
		return fmt.Errorf("%w: %w", ErrServerLost, err)
	}
	return nil
}

// fail closes the connection (once) and fails pending requests.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.pending == nil {
		cc.mu.Unlock()
		return
	}
	if err == nil {
		err = io.EOF
	}
	pending := cc.pending
	cc.pending = nil
	cc.err = err
	close(cc.done)
	cc.mu.Unlock()
	cc.closeTransport()
	lost := err
	if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrReplaced) {
		lost = fmt.Errorf("%w: %w", ErrServerLost, err)
	}
	for _, ch := range pending {
		ch <- result{err: lost}
	}
}

// close shuts a connection that was never installed.
func (cc *clientConn) close() { cc.fail(ErrClosed) }

// Err returns why the connection failed, or nil while it is up.
func (cc *clientConn) Err() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err
}

func (cc *clientConn) expect(id uint64) chan result {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.pending == nil {
		return nil
	}
	ch := make(chan result, 1)
	cc.pending[id] = ch
	return ch
}

func (cc *clientConn) unexpect(id uint64) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	delete(cc.pending, id)
}

func (cc *clientConn) deliver(rb resultBody) { cc.deliverResult(rb.ID, result{body: rb}) }

func (cc *clientConn) deliverResult(id uint64, r result) {
	cc.mu.Lock()
	ch := cc.pending[id]
	delete(cc.pending, id)
	cc.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// Introduction is another peer's request to connect, from Incoming.
type Introduction struct {
	// Offer is the dialler's offer; Offer.Peer is its authenticated ID.
	Offer    PeerInfo
	cc       *clientConn
	id       uint64
	flight   *Flight
	answered atomic.Bool
}

// Accept sends answer to the dialler. The client appends its Candidates();
// a zero Attempt and a nil PunchKey are filled from the offer. It returns
// ErrAnswered on a second call, or an error wrapping ErrServerLost if the
// connection the introduction came on is gone.
func (in *Introduction) Accept(answer PeerInfo) error {
	if !in.answered.CompareAndSwap(false, true) {
		return ErrAnswered
	}
	answer.Candidates = in.cc.c.withCandidates(answer.Candidates)
	if answer.Attempt == 0 {
		answer.Attempt = in.Offer.Attempt
	}
	if answer.PunchKey == nil {
		answer.PunchKey = in.Offer.PunchKey
	}
	return in.cc.write(typeAnswer, answerBody{ID: in.id, Answer: answer})
}

// Reject refuses the introduction; the dialler's Connect returns a
// *ConnectError with ErrRejected and reason (at most 256 bytes are kept).
func (in *Introduction) Reject(reason string) error {
	if !in.answered.CompareAndSwap(false, true) {
		return ErrAnswered
	}
	return in.cc.write(typeReject, rejectBody{ID: in.id, Reason: reason})
}
