package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Introductions across the servers of a fleet (docs/architecture.md,
// "Fleet"): the dialler's server asks the Registry for the target's home
// server and hands it the offer; the home server delivers it as it does a
// local one and hands back the result.

// registryLookupTimeout bounds the registry lookup of a cross-server dial,
// so that a dial fails within a second when Redis is unreachable.
const registryLookupTimeout = 800 * time.Millisecond

// connectRemote introduces ss to cb.Target, which is not registered here,
// through the fleet's registry. It returns at once; the RESULT follows.
func (s *Server) connectRemote(ss *session, cb connectBody) {
	fail := func(code, reason string) {
		s.countIntro(code)
		ss.send(typeResult, resultBody{ID: cb.ID, Error: code, Reason: reason})
	}
	s.mu.Lock()
	parent := s.fleetCtx
	if n := ss.pending; n >= s.cfg.MaxPendingIntros {
		s.mu.Unlock()
		fail(codeBusy, fmt.Sprintf("%d introductions already pending", n))
		return
	}
	ss.pending++
	s.mu.Unlock()
	offer := cb.Offer
	offer.Peer = ss.peer
	offer.Observed = ss.observed()
	offer.Candidates = s.vouchRelay(withReflexive(fromClient(offer.Candidates), ss.observed()))
	in := FleetIntro{Target: cb.Target, Offer: offer, Source: ss.src}
	s.fleetWG.Go(func() {
		defer func() {
			s.mu.Lock()
			ss.pending--
			s.mu.Unlock()
		}()
		res, forDialler := s.introduceRemote(parent, ss, in)
		s.countIntro(res.Code)
		if res.Answer != nil {
			a := *withAnswerCandidates(res.Answer, forDialler)
			a.Flight = false // no flight crossed servers
			res.Answer = &a
		}
		ss.send(typeResult, resultBody{ID: cb.ID, Answer: res.Answer, Error: res.Code, Reason: res.Reason})
	})
}

// introduceRemote runs one cross-server introduction for ss, bounded by
// parent (Serve's context) and the session's life.
//
// Volunteers of this server, if the dialler wants some, once the target's
// home server is known: the target's go in the offer, the dialler's are
// returned for its answer. Without any here, the target's server hands
// out its own (Introduce).
func (s *Server) introduceRemote(parent context.Context, ss *session, in FleetIntro) (FleetResult, []Candidate) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ss.done:
			cancel()
		case <-stop:
		}
	}()
	reg := s.cfg.Registry
	lctx, lcancel := context.WithTimeout(ctx, registryLookupTimeout)
	home, err := reg.Lookup(lctx, in.Target)
	lcancel()
	if err != nil {
		return s.fleetFailure(ss, in, err), nil
	}
	if home == s.instance {
		// Registered here by the registry's word, not in memory: a
		// registration that outlived its session.
		return FleetResult{Code: codePeerOffline}, nil
	}
	var forDialler []Candidate
	if in.Offer.WantSupernodes {
		var forTarget []Candidate
		forDialler, forTarget = s.pickSupernodes(ss.peer, in.Target)
		in.Offer.Candidates = append(in.Offer.Candidates[:len(in.Offer.Candidates):len(in.Offer.Candidates)], forTarget...)
	}
	ictx, icancel := context.WithTimeout(ctx, s.cfg.IntroTimeout+time.Second)
	defer icancel()
	s.nFleetSent.Add(1)
	ss.log.Debug("introducing through the fleet", "target", in.Target.Short(), "home", home)
	res, err := reg.Introduce(ictx, home, in)
	if err != nil {
		return s.fleetFailure(ss, in, err), nil
	}
	return res, forDialler
}

// fleetFailure turns a Registry error into the RESULT the dialler gets.
func (s *Server) fleetFailure(ss *session, in FleetIntro, err error) FleetResult {
	switch {
	case errors.Is(err, ErrUnknownPeer):
		return FleetResult{Code: codeUnknownPeer}
	case errors.Is(err, ErrPeerOffline):
		return FleetResult{Code: codePeerOffline, Reason: "its server is gone"}
	case errors.Is(err, ErrBusy):
		return FleetResult{Code: codeBusy, Reason: "too many introductions between servers in flight"}
	case errors.Is(err, ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return FleetResult{Code: codeTimeout, Reason: "no answer from the peer's server"}
	}
	s.nRegistryErrors.Add(1)
	ss.log.Warn("fleet registry unavailable", "target", in.Target.Short(), "err", err)
	return FleetResult{Code: codeRegistryUnavailable, Reason: strings.TrimPrefix(err.Error(), ErrRegistryUnavailable.Error()+": ")}
}

// Introduce implements FleetHandler: it delivers an introduction from a
// dialler on another server to its target here, with the limits a local
// dialler meets.
func (s *Server) Introduce(in FleetIntro, reply func(FleetResult)) {
	if why := s.checkInfo(&in.Offer); why != "" {
		reply(FleetResult{Code: codeBadRequest, Reason: "offer: " + why})
		return
	}
	// The offer comes from the dialler's server, which dropped the
	// Supernode candidates the dialler wrote and added its volunteers.
	// Without any, this server's volunteers serve the pair: the target's
	// go in the offer, the dialler's in the answer.
	offer := in.Offer
	if offer.WantSupernodes && !slices.ContainsFunc(offer.Candidates, func(c Candidate) bool { return c.Kind == Supernode }) {
		s.mu.Lock()
		here := s.peers[in.Target] != nil
		s.mu.Unlock()
		if here {
			forDialler, forTarget := s.pickSupernodes(offer.Peer, in.Target)
			offer.Candidates = append(offer.Candidates[:len(offer.Candidates):len(offer.Candidates)], forTarget...)
			if len(forDialler) > 0 {
				answer := reply
				reply = func(res FleetResult) {
					res.Answer = withAnswerCandidates(res.Answer, forDialler)
					answer(res)
				}
			}
		}
	}
	s.mu.Lock()
	target := s.peers[in.Target]
	if target == nil {
		s.mu.Unlock()
		reply(FleetResult{Code: codePeerOffline})
		return
	}
	if n := target.incoming; n >= s.cfg.MaxIncomingIntros {
		s.mu.Unlock()
		s.nIntrosRefused.Add(1)
		reply(FleetResult{Code: codeBusy, Reason: fmt.Sprintf("the peer has %d introductions waiting", n)})
		return
	}
	if n, share := target.incomingFrom[in.Source], s.lim.incomingShare(); share >= 0 && n >= share {
		s.mu.Unlock()
		s.nIntrosRefused.Add(1)
		reply(FleetResult{Code: codeBusy, Reason: fmt.Sprintf("the peer has %d introductions waiting from your address", n)})
		return
	}
	s.nextIntro++
	pi := &pendingIntro{id: s.nextIntro, to: target, src: in.Source, remote: reply}
	s.intros[pi.id] = pi
	target.intros[pi.id] = pi
	target.incoming++
	target.incomingFrom[in.Source]++
	pi.timer = time.AfterFunc(s.cfg.IntroTimeout, func() {
		s.finishIntro(pi.id, nil, resultBody{Error: codeTimeout, Reason: fmt.Sprintf("no answer within %v", s.cfg.IntroTimeout)})
	})
	s.mu.Unlock()
	if !target.trySend(typeIntro, introBody{ID: pi.id, Offer: offer}) {
		s.nIntrosRefused.Add(1)
		s.finishIntro(pi.id, nil, resultBody{Error: codeBusy, Reason: "the peer's queue is full"})
		return
	}
	s.nFleetServed.Add(1)
	s.nIntros.Add(1)
}
