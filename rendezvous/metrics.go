package rendezvous

import (
	"sync"
	"sync/atomic"
)

// What the server counts by label, beside Stats, for its metrics
// (rendezvous/rendezvousmetrics). Kept apart from Stats so that the
// counting is a line at each place an outcome is decided.

// IntroAnswered is the outcome of an introduction the target answered
// (Breakdown.Introductions); the other outcomes are the error codes the
// dialler gets: rejected, timeout, unknown_peer, peer_offline, busy,
// rate_limited, bad_request, registry_unavailable, not_woken.
const IntroAnswered = "answered"

// IntroOutcomes lists every outcome Breakdown.Introductions counts, in a
// fixed order (the metrics export each, at zero until it happens).
var IntroOutcomes = []string{IntroAnswered, codeRejected, codeTimeout, codeUnknownPeer, codePeerOffline,
	codeBusy, codeRateLimited, codeBadRequest, codeRegistryUnavailable, codeNotWoken}

// Transports lists the transports Breakdown.Peers counts registrations
// by: QUIC over UDP, and TLS over TCP (directly or in a WebSocket).
var Transports = []string{"udp", "tcp"}

// Breakdown is what the server counts by label.
type Breakdown struct {
	// Peers are the peers registered now, by transport (Transports).
	Peers map[string]int
	// Introductions are the introductions asked for since start, by
	// outcome (IntroOutcomes), each counted once it is decided.
	Introductions map[string]uint64
	// RegistrationsNew are the successful registrations of a peer that
	// was not registered (Stats.Registrations less those that replaced
	// an older connection, counted apart so the count never goes back).
	RegistrationsNew uint64
	// RegistrationsFull are registrations refused because the server was
	// at ServerConfig.MaxPeers.
	RegistrationsFull uint64
}

// outcomeCounts are the counters behind Breakdown.
type outcomeCounts struct {
	mu      sync.Mutex
	intros  map[string]uint64
	regNew  atomic.Uint64
	regFull atomic.Uint64
}

// countIntro counts an introduction that ended with code ("" or
// IntroAnswered: answered).
func (s *Server) countIntro(code string) {
	if code == "" {
		code = IntroAnswered
	}
	s.outcomes.mu.Lock()
	if s.outcomes.intros == nil {
		s.outcomes.intros = make(map[string]uint64)
	}
	s.outcomes.intros[code]++
	s.outcomes.mu.Unlock()
}

// Breakdown returns a snapshot of the server's counters by label; every
// transport and outcome is present, at zero until it happens.
func (s *Server) Breakdown() Breakdown {
	b := Breakdown{Peers: make(map[string]int, len(Transports)), Introductions: make(map[string]uint64, len(IntroOutcomes))}
	for _, t := range Transports {
		b.Peers[t] = 0
	}
	s.mu.Lock()
	for _, ss := range s.peers {
		b.Peers[ss.proto]++
	}
	s.mu.Unlock()
	for _, o := range IntroOutcomes {
		b.Introductions[o] = 0
	}
	s.outcomes.mu.Lock()
	for o, n := range s.outcomes.intros {
		b.Introductions[o] = n
	}
	s.outcomes.mu.Unlock()
	b.RegistrationsNew = s.outcomes.regNew.Load()
	b.RegistrationsFull = s.outcomes.regFull.Load()
	return b
}
