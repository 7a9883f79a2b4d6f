package rendezvous

import (
	"maps"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// register makes ss the live connection of its peer, replacing (and
// closing) an older one.
func (s *Server) register(ss *session) error {
	reg, err := appendFrame(nil, typeRegistered, registeredBody{
		Peer:        ss.peer,
		Observed:    ss.observed(),
		KeepaliveMS: (s.cfg.IdleTimeout / 3).Milliseconds(),
		MaxFrame:    s.cfg.MaxFrameSize,
		Protocols:   slices.Sorted(maps.Keys(s.cfg.Protocols)),
		Codes:       !s.cfg.Codes.Disable,
		Servers:     ss.fleetList(),
		Fleet:       s.fleet.Load() != nil,
		ParkAfterMS: s.parkAfterFor(ss).Milliseconds(),
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	old := s.peers[ss.peer]
	if old == nil && len(s.peers) >= s.cfg.MaxPeers {
		s.mu.Unlock()
		s.outcomes.regFull.Add(1)
		return &ProtocolError{Code: codeBusy, Reason: "server is at its peer limit"}
	}
	parked := old != nil && old.park != nil
	resumed := parked && ss.resume == old.park.token
	// Counted before the client can read REGISTERED (tests and metrics
	// read them once it registered).
	s.nRegistrations.Add(1)
	switch {
	case resumed:
	case old != nil:
		s.nReplaced.Add(1)
	default:
		s.outcomes.regNew.Add(1)
	}
	// REGISTERED, then the frames that waited for a parked registration,
	// are queued before anyone else can send to ss: a frame for the parked
	// one is handed to ss from the moment it is adopted, and one for the
	// peer from the moment ss is among the peers (an introduction, a
	// dialler's FLIGHT); the client takes no frame before REGISTERED.
	ss.enqueue(reg, false)
	var queued int
	var notice []byte
	var noticeTo netip.AddrPort
	if parked {
		queued, notice, noticeTo = s.adoptParkedLocked(ss, old, ss.resume)
	}
	s.peers[ss.peer] = ss
	s.seen[ss.peer] = time.Now()
	s.mu.Unlock()
	if h := testRegisterGap.Load(); h != nil {
		(*h)(ss)
	}
	if r := s.cfg.Registry; r != nil {
		r.Register(ss.peer)
	}
	if notice != nil {
		s.pk.sock.WriteToUDPAddrPort(notice, noticeTo)
	}
	switch {
	case resumed:
		ss.log.Debug("parked registration resumed", "queued", queued)
	case old != nil:
		ss.log.Info("registration replaces an older connection")
		old.closeWith(&ProtocolError{Code: codeReplaced, Reason: "a newer connection registered this peer ID"})
	default:
		ss.log.Debug("registered") // one a peer: Info would flood a busy server's log
	}
	return nil
}

// testRegisterGap, set by tests, runs once a registration is among the
// server's peers (others may send to it from then on).
var testRegisterGap atomic.Pointer[func(*session)]
