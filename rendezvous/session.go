package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/reachp2p/reach/identity"
)

// session is one authenticated signalling connection on the server, QUIC
// or TLS. Its reader runs in run; a writer goroutine drains out.
type session struct {
	srv              *Server
	peer             identity.PeerID
	proto            string                // "udp" or "tcp"
	src              netip.Prefix          // the source its limits count against (sourceOf)
	observed         func() netip.AddrPort // the peer's UDP address as seen here; invalid on TCP
	tcpObserved      netip.AddrPort        // the TCP connection's remote address; invalid on UDP
	rw               io.ReadWriter
	setReadDeadline  func(time.Time) error
	setWriteDeadline func(time.Time) error
	closeConn        func(*ProtocolError) // closes the transport; nil: no error
	// closeParked ends the transport of a session that parked: gently,
	// so that PARKED arrives (QUIC's CONNECTION_CLOSE would discard it).
	closeParked func()

	log     *slog.Logger
	stopCtx func() bool   // stops the server context's hook that closes the session
	done    chan struct{} // closed by closeWith
	// lastFrame is when the reader last read a whole frame (REGISTER at
	// first): silent for ServerConfig.IdleTimeout from it, the session
	// ends. Reader only.
	lastFrame time.Time
	// parkRaw is the descriptor a TCP registration's reader parks on
	// (tcppark.go); nil: it never parks. Reader only.
	parkRaw syscall.RawConn
	// tcpPark is the reader's state while it is parked.
	tcpPark   tcpParking
	closeOnce sync.Once
	final     *ProtocolError // written before done is closed

	// The send queue: a writer goroutine runs only while there is
	// something to write (and writerLinger after), so an idle session has
	// none, nor its stack.
	qmu        sync.Mutex
	queue      [][]byte
	writing    bool          // a writer runs (or is starting)
	wake       chan struct{} // tells a running writer that more was queued
	space      chan struct{} // tells the reader that the writer wrote a batch
	fleetVer   uint64        // the version of the fleet's server list last sent (reader only)
	writerDone chan struct{} // closed by the writer that closed the transport
	// park is set (under qmu, once) when the session parks: frames go to
	// its queue from then on (park.go). drain makes the writer send what
	// was queued before (PARKED last) although the session is closing.
	park  *parkState
	drain bool
	// inWrite is the deadline of the frame the writer is writing; zero:
	// none (closeWith cuts it short).
	inWrite time.Time
	// resume is REGISTER's token of a parked registration to take over.
	resume uint64

	// Guarded by srv.mu.
	intros   map[uint64]*pendingIntro // introductions this session is part of
	pending  int                      // of those, how many it dialled
	incoming int                      // of those, how many are addressed to it
	// incomingFrom counts incoming by the dialler's source (no zero
	// entries), for LimitConfig.IncomingPerSource.
	incomingFrom map[netip.Prefix]int
	flights      map[uint64]*flightPair // flights this session dialled, by CONNECT id
}

// pendingIntro is an introduction waiting for the target's answer.
type pendingIntro struct {
	id       uint64   // server-assigned, the INTRO/ANSWER id
	reqID    uint64   // the dialler's CONNECT id
	from, to *session // from is nil for a dialler on another server (remote)
	timer    *time.Timer
	// src is the dialler's source, which the target's per-source count
	// of incoming introductions is kept by.
	src netip.Prefix
	// remote, for an introduction from another server of the fleet,
	// takes its result.
	remote func(FleetResult)
	// supernodes are the volunteers for the dialler, added to the answer.
	supernodes []Candidate
}

// errClientError: the client sent an ERROR frame; close without replying.
var errClientError = errors.New("client sent ERROR")

const sendQueueLen = 64

// ownQueueLen is how much of the send queue the session's own requests
// may fill with their answers before it reads no more of them (so a
// client that asks for many introductions at once is slowed, not closed
// as a slow reader). The rest stays for what others send it: incoming
// introductions (ServerConfig.MaxIncomingIntros, half the queue) and the
// answers to its requests that come later (MaxPendingIntros).
const ownQueueLen = sendQueueLen / 4

func (ss *session) run(ctx context.Context) {
	s := ss.srv
	ss.log = s.log.With("peer", ss.peer.Short(), "proto", ss.proto)
	ss.done = make(chan struct{})
	ss.wake = make(chan struct{}, 1)
	ss.space = make(chan struct{}, 1)
	ss.writerDone = make(chan struct{})
	ss.intros = make(map[uint64]*pendingIntro)
	ss.incomingFrom = make(map[netip.Prefix]int)
	ss.stopCtx = context.AfterFunc(ctx, func() {
		ss.closeWith(&ProtocolError{Code: codeShutdown, Reason: "server shutting down"})
	})

	fr := newFrameReader(ss.rw, s.cfg.MaxFrameSize)
	err := ss.readRegister(fr)
	if err == nil && !s.lim.allowRegister(ss.src, ss.peer) {
		ss.log.Debug("registration over its rate limit", "source", ss.src)
		err = &ProtocolError{Code: codeRateLimited, Reason: "too many registrations from this address or peer ID"}
	}
	if err == nil {
		err = s.register(ss)
	}
	if err == nil {
		ss.lastFrame = time.Now()
	}
	ss.serve(fr, err)
}

// serve reads the session's frames (unless err, the registration's
// failure, ends it first) until the session ends, or until its reader
// parks (tcppark.go): then it returns, and a goroutine that the
// connection's next bytes (or the idle timeout) start serves it again.
func (ss *session) serve(fr *frameReader, err error) {
	for {
		if err == nil {
			err = ss.readLoop(fr)
		}
		if !errors.Is(err, errReaderIdle) {
			break
		}
		if ss.parkReader(fr) {
			return
		}
		ss.parkRaw, err = nil, nil // could not park: this goroutine reads on
	}
	ss.end(err)
}

// end ends the session's reading with err and waits for its writer.
func (ss *session) end(err error) {
	s := ss.srv
	defer ss.stopCtx()
	var pe *ProtocolError
	switch {
	case errors.Is(err, errParked):
		// The writer sends PARKED and closes the connection; the
		// registration stays, parked, until the node comes back or its
		// keepalives stop (park.go).
		ss.closeWith(nil)
		<-ss.writerDone
		ss.shed()
		return
	case errors.As(err, &pe):
		if errors.Is(pe, ErrProtocol) {
			s.nProtoErr.Add(1)
			ss.log.Info("closing connection: protocol error", "code", pe.Code, "reason", pe.Reason)
		}
		ss.closeWith(pe)
	case errors.Is(err, os.ErrDeadlineExceeded):
		ss.log.Debug("closing silent connection")
		ss.closeWith(nil)
	default:
		ss.log.Debug("connection ended", "err", err)
		ss.closeWith(nil)
	}
	<-ss.writerDone
	s.unregister(ss)
}

// closeWith starts closing the session; the writer sends an ERROR frame
// for pe (if not nil) and closes the transport. Only the first call counts.
func (ss *session) closeWith(pe *ProtocolError) {
	ss.closeOnce.Do(func() {
		ss.final = pe
		close(ss.done)
		// A write blocked on a peer that reads nothing would hold the
		// session's end (and a stopping server) for its deadline,
		// IdleTimeout: give it a second more at most (a healthy peer's
		// frame goes out whole, and the ERROR after it), unless what is
		// queued must go out (drain: PARKED). finish then tries the
		// ERROR for a second.
		ss.qmu.Lock()
		if dl := time.Now().Add(closeWriteGrace); !ss.inWrite.IsZero() && ss.inWrite.After(dl) && !ss.drain {
			ss.setWriteDeadline(dl)
		}
		ss.qmu.Unlock()
		ss.kick()
	})
	ss.wakeParkedReader()
}

// trySend queues a frame that may be dropped (an introduction, which
// others send): it reports false, and leaves the peer connected, when the
// queue is full.
func (ss *session) trySend(t msgType, body any) bool {
	b, err := appendFrame(nil, t, body)
	if err != nil {
		ss.log.Warn("cannot encode frame", "type", t.String(), "err", err)
		return false
	}
	return ss.enqueue(b, true)
}

// fleetList is the fleet's server list for REGISTERED, noting its
// version as sent.
func (ss *session) fleetList() []string {
	ss.fleetVer = ss.srv.fleetVer.Load()
	return ss.srv.fleetServers()
}

// send queues a frame. A peer that does not read fast enough to keep the
// queue short is disconnected.
func (ss *session) send(t msgType, body any) {
	b, err := appendFrame(nil, t, body)
	if err != nil {
		ss.log.Warn("cannot encode frame", "type", t.String(), "err", err)
		return
	}
	ss.enqueue(b, false)
}

func (ss *session) readRegister(fr *frameReader) error {
	ss.setReadDeadline(time.Now().Add(ss.srv.cfg.HandshakeTimeout))
	t, body, err := fr.next()
	if err != nil {
		return err
	}
	if t != typeRegister {
		return &ProtocolError{Code: codeUnexpected, Reason: fmt.Sprintf("first frame is %s, want REGISTER", t)}
	}
	var rb registerBody
	if err := decodeBody(t, body, &rb); err != nil {
		return err
	}
	ss.resume = rb.Resume
	return nil
}

func (ss *session) readLoop(fr *frameReader) error {
	s := ss.srv
	for {
		if !ss.awaitSpace() {
			return nil
		}
		// Silent for IdleTimeout: the session ends. A reader that may park
		// waits TCPPark for a frame to begin, then parks.
		silent := ss.lastFrame.Add(s.cfg.IdleTimeout)
		dl := silent
		if p := time.Now().Add(s.cfg.TCPPark); ss.parkRaw != nil && fr.empty() && p.Before(dl) {
			dl = p
		}
		ss.setReadDeadline(dl)
		t, body, err := fr.next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(silent) {
				if fr.empty() {
					return errReaderIdle
				}
				continue // inside a frame: wait for its rest until silent
			}
			return err
		}
		ss.lastFrame = time.Now()
		switch t {
		case typePing:
			var p pingBody
			if err := decodeBody(t, body, &p); err != nil {
				return err
			}
			if v := s.fleetVer.Load(); v != ss.fleetVer {
				ss.fleetVer = v
				p.Servers, p.Fleet = s.fleetServers(), true
			}
			ss.send(typePong, p)
		case typePong:
		case typeConnect:
			var cb connectBody
			if err := decodeBody(t, body, &cb); err != nil {
				return err
			}
			s.connect(ss, cb)
		case typeAnswer:
			var ab answerBody
			if err := decodeBody(t, body, &ab); err != nil {
				return err
			}
			s.answer(ss, ab)
		case typeReject:
			var rb rejectBody
			if err := decodeBody(t, body, &rb); err != nil {
				return err
			}
			if len(rb.Reason) > 256 {
				rb.Reason = rb.Reason[:256]
			}
			s.finishIntro(rb.ID, ss, resultBody{Error: codeRejected, Reason: rb.Reason})
		case typeVolunteer:
			var vb volunteerBody
			if err := decodeBody(t, body, &vb); err != nil {
				return err
			}
			s.volunteer(ss, vb)
		case typeFlight:
			var fb flightBody
			if err := decodeBody(t, body, &fb); err != nil {
				return err
			}
			s.relayFlight(ss, fb)
		case typeCode:
			var cb codeBody
			if err := decodeBody(t, body, &cb); err != nil {
				return err
			}
			ss.send(typeCodeResult, s.codes.handle(ss, s.lim, cb))
		case typePark:
			if err := s.park(ss); err != nil {
				return err
			}
		case typeError:
			var eb errorBody
			decodeBody(t, body, &eb)
			ss.log.Debug("client sent ERROR", "code", eb.Code, "reason", eb.Reason)
			return errClientError
		default:
			return &ProtocolError{Code: codeUnexpected, Reason: t.String() + " is not sent by clients"}
		}
	}
}

// unregister removes a closed session and fails the introductions it was
// part of.
func (s *Server) unregister(ss *session) {
	s.dropVolunteer(ss)
	var orphans []*pendingIntro
	s.mu.Lock()
	if s.peers[ss.peer] == ss {
		delete(s.peers, ss.peer)
		s.seen[ss.peer] = time.Now()
		s.pruneSeenLocked()
		ss.log.Debug("unregistered")
		if r := s.cfg.Registry; r != nil {
			r.Unregister(ss.peer)
		}
	}
	reason := "peer disconnected before answering"
	if cur := s.peers[ss.peer]; cur != nil && cur != ss {
		reason = ReasonReregistered
	}
	for id, pi := range ss.intros {
		delete(s.intros, id)
		delete(pi.to.intros, id)
		if pi.from != nil {
			delete(pi.from.intros, id)
			pi.from.pending--
		}
		pi.to.dropIncoming(pi.src)
		pi.timer.Stop()
		if pi.from != ss {
			orphans = append(orphans, pi)
		}
	}
	s.mu.Unlock()
	for _, pi := range orphans {
		if pi.remote != nil {
			pi.remote(FleetResult{Code: codePeerOffline, Reason: reason})
			continue
		}
		s.countIntro(codePeerOffline)
		pi.from.send(typeResult, resultBody{ID: pi.reqID, Error: codePeerOffline, Reason: reason})
	}
}

// pruneSeenLocked bounds the memory of offline peers.
func (s *Server) pruneSeenLocked() {
	limit := 4 * s.cfg.MaxPeers
	if len(s.seen) <= limit {
		return
	}
	now := time.Now()
	for id, t := range s.seen {
		if now.Sub(t) > s.cfg.RememberOffline && s.peers[id] == nil {
			delete(s.seen, id)
		}
	}
	for id := range s.seen { // still too many: forget arbitrary offline peers
		if len(s.seen) <= limit*3/4 {
			break
		}
		if s.peers[id] == nil {
			delete(s.seen, id)
		}
	}
}

// checkInfo returns why an offer or answer is unacceptable, or "".
func (s *Server) checkInfo(pi *PeerInfo) string {
	if len(pi.Candidates) > s.cfg.MaxCandidates {
		return fmt.Sprintf("%d candidates, limit %d", len(pi.Candidates), s.cfg.MaxCandidates)
	}
	if len(pi.PunchKey) > maxPunchKey {
		return fmt.Sprintf("punch key is %d bytes, limit %d", len(pi.PunchKey), maxPunchKey)
	}
	for _, c := range pi.Candidates {
		if !c.Addr.IsValid() || c.Addr.Port() == 0 || len(c.Kind) > 16 {
			return fmt.Sprintf("bad candidate %v %q", c.Addr, c.Kind)
		}
	}
	return ""
}

// withReflexive appends obs as a reflexive candidate unless it is invalid
// or already listed.
func withReflexive(cands []Candidate, obs netip.AddrPort) []Candidate {
	if !obs.IsValid() {
		return cands
	}
	for _, c := range cands {
		if c.Addr == obs && c.Kind == Reflexive {
			return cands
		}
	}
	return append(cands[:len(cands):len(cands)], Candidate{Addr: obs, Kind: Reflexive})
}

// withTCPReflexive drops any tcp-srflx candidate the peer sent (only the
// server says what it saw) and appends obs as one unless it is invalid
// (a peer registered over UDP).
func withTCPReflexive(cands []Candidate, obs netip.AddrPort) []Candidate {
	out := make([]Candidate, 0, len(cands)+1)
	for _, c := range cands {
		if c.Kind != TCPReflexive {
			out = append(out, c)
		}
	}
	if obs.IsValid() {
		out = append(out, Candidate{Addr: netip.AddrPortFrom(obs.Addr().Unmap(), obs.Port()), Kind: TCPReflexive})
	}
	return out
}

func (s *Server) connect(ss *session, cb connectBody) {
	fail := func(code, reason string) {
		s.countIntro(code)
		ss.send(typeResult, resultBody{ID: cb.ID, Error: code, Reason: reason})
	}
	if why := s.checkInfo(&cb.Offer); why != "" {
		fail(codeBadRequest, "offer: "+why)
		return
	}
	if !s.lim.allowIntro(ss.src, ss.peer) {
		fail(codeRateLimited, "too many introductions from this address or peer ID")
		return
	}
	s.mu.Lock()
	target := s.peers[cb.Target]
	if target == nil && s.cfg.Registry != nil {
		s.mu.Unlock()
		s.connectRemote(ss, cb)
		return
	}
	if target == nil {
		t, seen := s.seen[cb.Target]
		s.mu.Unlock()
		if seen && time.Since(t) < s.cfg.RememberOffline {
			fail(codePeerOffline, "")
		} else {
			fail(codeUnknownPeer, "")
		}
		return
	}
	s.mu.Unlock()
	// Volunteers only for an introduction that can happen: each one
	// handed out counts as load on it.
	var forDialler, forTarget []Candidate
	if cb.Offer.WantSupernodes {
		forDialler, forTarget = s.pickSupernodes(ss.peer, cb.Target)
	}
	s.mu.Lock()
	if s.peers[cb.Target] != target {
		s.mu.Unlock()
		fail(codePeerOffline, "")
		return
	}
	if n := ss.pending; n >= s.cfg.MaxPendingIntros {
		s.mu.Unlock()
		fail(codeBusy, fmt.Sprintf("%d introductions already pending", n))
		return
	}
	if n := target.incoming; n >= s.cfg.MaxIncomingIntros {
		// Read under the lock: finishIntro changes it.
		s.mu.Unlock()
		s.nIntrosRefused.Add(1)
		fail(codeBusy, fmt.Sprintf("the peer has %d introductions waiting", n))
		return
	}
	if n, share := target.incomingFrom[ss.src], s.lim.incomingShare(); share >= 0 && n >= share {
		s.mu.Unlock()
		s.nIntrosRefused.Add(1)
		fail(codeBusy, fmt.Sprintf("the peer has %d introductions waiting from your address", n))
		return
	}
	s.nextIntro++
	pi := &pendingIntro{id: s.nextIntro, reqID: cb.ID, from: ss, to: target, src: ss.src}
	pi.supernodes = forDialler
	s.intros[pi.id] = pi
	ss.intros[pi.id] = pi
	target.intros[pi.id] = pi
	ss.pending++
	target.incoming++
	target.incomingFrom[ss.src]++
	pi.timer = time.AfterFunc(s.cfg.IntroTimeout, func() {
		s.finishIntro(pi.id, nil, resultBody{Error: codeTimeout, Reason: fmt.Sprintf("no answer within %v", s.cfg.IntroTimeout)})
	})
	s.mu.Unlock()

	offer := cb.Offer
	offer.Peer = ss.peer
	offer.Observed = ss.observed()
	offer.Candidates = append(withTCPReflexive(withReflexive(fromClient(offer.Candidates), ss.observed()), ss.tcpObserved), forTarget...)
	ss.log.Debug("introducing", "target", cb.Target.Short(), "intro", pi.id)
	// Open before the INTRO is queued: the target may answer its
	// flight at once.
	s.openFlight(ss, target, cb.ID, pi.id)
	if !target.trySend(typeIntro, introBody{ID: pi.id, Offer: offer}) {
		s.nIntrosRefused.Add(1)
		s.finishIntro(pi.id, nil, resultBody{Error: codeBusy, Reason: "the peer's queue is full"})
		return
	}
	s.nIntros.Add(1)
}

func (s *Server) answer(ss *session, ab answerBody) {
	if why := s.checkInfo(&ab.Answer); why != "" {
		s.finishIntro(ab.ID, ss, resultBody{Error: codeBadRequest, Reason: "peer's answer: " + why})
		return
	}
	ans := ab.Answer
	ans.Peer = ss.peer
	ans.Observed = ss.observed()
	if s.cfg.DisableFlights {
		// No flight went through: the dialler must not count on one.
		ans.Flight = false
	}
	ans.Candidates = withTCPReflexive(withReflexive(fromClient(ans.Candidates), ss.observed()), ss.tcpObserved)
	s.finishIntro(ab.ID, ss, resultBody{Answer: &ans})
}

// finishIntro completes introduction id with res, sent to the dialler.
// by is the target answering (nil for the timeout); an answer for an
// introduction that is over or not addressed to by is ignored.
func (s *Server) finishIntro(id uint64, by *session, res resultBody) {
	s.mu.Lock()
	pi := s.intros[id]
	if pi == nil || by != nil && pi.to != by {
		s.mu.Unlock()
		if by != nil {
			by.log.Debug("answer for an introduction that is over", "intro", id)
		}
		return
	}
	delete(s.intros, id)
	delete(pi.to.intros, id)
	if pi.from != nil {
		delete(pi.from.intros, id)
		pi.from.pending--
	}
	pi.to.dropIncoming(pi.src)
	pi.timer.Stop()
	s.mu.Unlock()
	if pi.remote != nil {
		pi.remote(FleetResult{Answer: res.Answer, Code: res.Error, Reason: res.Reason})
		return
	}
	res.ID = pi.reqID
	s.countIntro(res.Error)
	res.Answer = withAnswerCandidates(res.Answer, pi.supernodes)
	pi.from.send(typeResult, res)
}

// dropIncoming counts out an introduction to ss from src. The caller holds
// srv.mu.
func (ss *session) dropIncoming(src netip.Prefix) {
	ss.incoming--
	if ss.incomingFrom[src]--; ss.incomingFrom[src] <= 0 {
		delete(ss.incomingFrom, src)
	}
}
