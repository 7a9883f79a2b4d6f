package rendezvous

import (
	"errors"
	"sync"
	"time"
)

// First flights through the server (docs/protocol.md, "FLIGHT").
//
// A dialler may send the first packets of its QUIC handshake to the peer
// through the server, alongside the introduction, and the peer may send
// its answer back the same way. The handshake then costs no round trip of
// its own: it travels with the introduction, and the first packets either
// side sends straight to the other follow the handshake, by which time
// both NATs are open (the peer primed its own before it read the
// dialler's first packet; the dialler sends only after the peer's
// answer). The server relays only a few packets per introduction, for a
// short while, and never the data of a session.
const (
	// MaxFlightPackets bounds the packets the server relays one way for
	// one introduction (a QUIC handshake takes 2-6).
	MaxFlightPackets = 16
	// MaxFlightPacket is the largest packet relayed (a QUIC packet on a
	// path that has not done MTU discovery is at most about 1452 bytes).
	MaxFlightPacket = 1500
	// FlightWindow is how long after the introduction the server relays
	// its flight packets, and how long a client keeps a flight open.
	FlightWindow = 10 * time.Second
	// maxOpenFlights bounds the flights one dialler may have open at
	// the server; beyond it its introductions still work, without one.
	maxOpenFlights = 32
)

// ErrFlightFull: a flight sent MaxFlightPackets packets already, or the
// packet is larger than MaxFlightPacket.
var ErrFlightFull = errors.New("rendezvous: flight is full")

// ErrFlightClosed: the flight is closed (Close, or its FlightWindow is
// over).
var ErrFlightClosed = errors.New("rendezvous: flight is closed")

type flightBody struct {
	// Req names the flight between the dialler and the server (the
	// CONNECT id); Intro between the server and the peer (the INTRO id).
	Req    uint64 `json:"req,omitempty"`
	Intro  uint64 `json:"intro,omitempty"`
	Packet []byte `json:"p"`
}

// flightKey is one flight on a client connection.
type flightKey struct {
	intro bool
	id    uint64
}

// Flight carries packets between the two sides of one introduction through
// the server (see MaxFlightPackets). The dialler makes one with NewFlight
// and gives it to ConnectFlight; the peer gets one from
// Introduction.Flight. It is safe for concurrent use.
type Flight struct {
	mu     sync.Mutex
	cc     *clientConn
	key    flightKey
	sent   [][]byte // every packet sent (or queued before Connect), in order
	inbox  [][]byte // received before Receive was called
	recv   func([]byte)
	closed bool
	timer  *time.Timer
}

// NewFlight returns a flight for ConnectFlight. Packets sent before the
// introduction is on its way wait for it.
func NewFlight() *Flight { return &Flight{} }

// Send sends a copy of pkt to the other side. Errors: ErrFlightFull,
// ErrFlightClosed, or one wrapping ErrServerLost.
func (f *Flight) Send(pkt []byte) error {
	if len(pkt) > MaxFlightPacket {
		return ErrFlightFull
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrFlightClosed
	}
	if len(f.sent) >= MaxFlightPackets {
		f.mu.Unlock()
		return ErrFlightFull
	}
	p := append([]byte(nil), pkt...)
	f.sent = append(f.sent, p)
	cc, key := f.cc, f.key
	f.mu.Unlock()
	if cc == nil {
		return nil // sent when the introduction is
	}
	return cc.write(typeFlight, key.body(p))
}

func (k flightKey) body(p []byte) flightBody {
	if k.intro {
		return flightBody{Intro: k.id, Packet: p}
	}
	return flightBody{Req: k.id, Packet: p}
}

// Receive makes fn the flight's receiver: it is called with each packet
// from the other side (on the client's read goroutine: it must not
// block), first with those that came before Receive.
func (f *Flight) Receive(fn func(pkt []byte)) {
	f.mu.Lock()
	f.recv = fn
	early := f.inbox
	f.inbox = nil
	f.mu.Unlock()
	for _, p := range early {
		fn(p)
	}
}

// deliver hands a packet from the other side to the receiver.
func (f *Flight) deliver(p []byte) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	fn := f.recv
	if fn == nil {
		if len(f.inbox) < MaxFlightPackets {
			f.inbox = append(f.inbox, p)
		}
		f.mu.Unlock()
		return
	}
	f.mu.Unlock()
	fn(p)
}

// Close ends the flight: nothing more is sent or received.
func (f *Flight) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	cc, key := f.cc, f.key
	f.inbox = nil
	if f.timer != nil {
		f.timer.Stop()
	}
	f.mu.Unlock()
	if cc != nil {
		cc.mu.Lock()
		if cc.flights[key] == f {
			delete(cc.flights, key)
		}
		cc.mu.Unlock()
	}
}

// arm binds the flight to cc as key, sends what was sent before (again,
// after a second CONNECT) and closes it after FlightWindow.
func (f *Flight) arm(cc *clientConn, key flightKey) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	old, oldKey := f.cc, f.key
	f.cc, f.key = cc, key
	sent := append([][]byte(nil), f.sent...)
	if f.timer != nil {
		f.timer.Stop()
	}
	f.timer = time.AfterFunc(FlightWindow, f.Close)
	f.mu.Unlock()
	if old != nil {
		old.mu.Lock()
		if old.flights[oldKey] == f {
			delete(old.flights, oldKey)
		}
		old.mu.Unlock()
	}
	cc.mu.Lock()
	if cc.flights == nil {
		cc.flights = map[flightKey]*Flight{}
	}
	cc.flights[key] = f
	cc.mu.Unlock()
	for _, p := range sent {
		if cc.write(typeFlight, key.body(p)) != nil {
			return
		}
	}
}

// flightFrame handles a FLIGHT frame from the server.
func (cc *clientConn) flightFrame(fb flightBody) {
	key := flightKey{id: fb.Req}
	if fb.Intro != 0 {
		key = flightKey{intro: true, id: fb.Intro}
	}
	cc.mu.Lock()
	f := cc.flights[key]
	cc.mu.Unlock()
	if f != nil && len(fb.Packet) > 0 {
		f.deliver(fb.Packet)
	}
}

// Flight returns the introduction's flight: packets the dialler sent
// through the server (Receive), and the way to answer them (Send).
func (in *Introduction) Flight() *Flight { return in.flight }

// Server side.

// flightPair is one introduction's flight at the server.
type flightPair struct {
	from, to   *session
	req, intro uint64
	up, down   int // packets relayed dialler → peer, peer → dialler
}

// openFlight starts relaying flight packets for introduction intro (the
// dialler's CONNECT req) for FlightWindow.
func (s *Server) openFlight(from, to *session, req, intro uint64) {
	if s.cfg.DisableFlights {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(from.flights) >= maxOpenFlights {
		return
	}
	fp := &flightPair{from: from, to: to, req: req, intro: intro}
	if s.flights == nil {
		s.flights = map[uint64]*flightPair{}
	}
	if from.flights == nil {
		from.flights = map[uint64]*flightPair{}
	}
	s.flights[intro] = fp
	from.flights[req] = fp
	time.AfterFunc(FlightWindow, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.flights[intro] == fp {
			delete(s.flights, intro)
		}
		if from.flights[req] == fp {
			delete(from.flights, req)
		}
	})
}

// relayFlight forwards a FLIGHT frame from ss to the other side of its
// introduction, within the flight's limits; anything else is dropped.
func (s *Server) relayFlight(ss *session, fb flightBody) {
	if len(fb.Packet) == 0 || len(fb.Packet) > MaxFlightPacket || fb.Packet[0]&0x80 == 0 {
		// Only QUIC handshake packets (long header): a session's own
		// packets never go through the server.
		s.nFlightDropped.Add(1)
		return
	}
	s.mu.Lock()
	var to *session
	var out flightBody
	switch fp := s.flights[fb.Intro]; {
	case fb.Req != 0:
		if fp := ss.flights[fb.Req]; fp != nil && fp.up < MaxFlightPackets {
			fp.up++
			to, out = fp.to, flightBody{Intro: fp.intro, Packet: fb.Packet}
		}
	case fp != nil && fp.to == ss && fp.down < MaxFlightPackets:
		fp.down++
		to, out = fp.from, flightBody{Req: fp.req, Packet: fb.Packet}
	}
	s.mu.Unlock()
	if to == nil || !to.trySend(typeFlight, out) {
		s.nFlightDropped.Add(1)
		return
	}
	s.nFlightRelayed.Add(1)
}
