package relay

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/reachp2p/reach/identity"
)

// The server's limits per source and per peer, recipient consent and the
// sweep that keeps their bookkeeping bounded (issue 15; the table is in
// docs/security.md, Relay).

// ipState is what the server keeps per source: an IPv4 address or an
// IPv6 /64 (ipKey). Its counts are guarded by Server.mu.
type ipState struct {
	lim      *rate.Limiter          // ConnRate; nil: unlimited
	links    int                    // peers linked from it now
	sessions int                    // sessions its peers send on now
	seen     time.Time              // last link attempt
	peers    map[*peerLink]struct{} // its links now
	net      *netState              // its network (fair.go)
	netKey   netip.Prefix
}

// ipKey is the source a link is counted against: its IPv4 address, or
// the /64 of its IPv6 address (one host or one customer's network).
func ipKey(a netip.Addr) netip.Prefix {
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, err := a.Prefix(64)
	if err != nil {
		return netip.PrefixFrom(a, a.BitLen())
	}
	return p
}

// ipIdle is how long the state of a source without links is kept (its
// ConnRate bucket).
const ipIdle = time.Minute

// maxIPs bounds the sources remembered: every source with a link, plus
// this many without (an IPv6 host has many /64s to open links from).
func (s *Server) maxIPs() int { return s.cfg.MaxClients + 4096 }

// source returns the state of key, making it if there is room. s.mu is
// held.
func (s *Server) source(key netip.Prefix, now time.Time) *ipState {
	st := s.ips[key]
	if st == nil {
		if len(s.ips) >= s.maxIPs() && !s.evictIdleSource() {
			return nil
		}
		st = &ipState{peers: make(map[*peerLink]struct{})}
		s.attachNet(key, st)
		if s.cfg.ConnRate > 0 {
			st.lim = rate.NewLimiter(rate.Limit(s.cfg.ConnRate), s.cfg.ConnBurst)
		}
		s.ips[key] = st
	}
	st.seen = now
	return st
}

// evictIdleSource forgets one source that has no links (map order: an
// arbitrary one); false if every source has links. s.mu is held.
func (s *Server) evictIdleSource() bool {
	for k, st := range s.ips {
		if st.links == 0 && st.sessions == 0 {
			s.forgetSource(k, st)
			return true
		}
	}
	return false
}

// allowConn applies the per-source connection rate.
func (s *Server) allowConn(p *peerLink) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.source(p.ipk, time.Now())
	return st != nil && (st.lim == nil || st.lim.Allow())
}

// register adds p to the linked peers, within MaxClients and
// MaxLinksPerIP; it returns the link p replaces (nil for none), or the
// reason it was refused.
func (s *Server) register(p *peerLink) (old *peerLink, refused rejectReason, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	table := s.peers
	if p.streamsOnly {
		if s.streamLinks == nil {
			s.streamLinks = make(map[identity.PeerID]*peerLink)
		}
		table = s.streamLinks
	}
	old = table[p.id]
	if old == nil && len(s.peers)+len(s.streamLinks) >= s.cfg.MaxClients {
		return nil, rejectFull, false
	}
	st := s.source(p.ipk, time.Now())
	if st == nil {
		return nil, rejectIPLinks, false
	}
	// A peer linking again from the same source replaces its old link,
	// which leaves: it does not count against the cap.
	if s.cfg.MaxLinksPerIP > 0 && st.links >= s.cfg.MaxLinksPerIP && (old == nil || old.ipst != st) {
		return nil, rejectIPLinks, false
	}
	st.links++
	st.peers[p] = struct{}{}
	p.ipst = st
	table[p.id] = p
	if p.data.token != 0 {
		s.data[p.data.token] = p
	}
	return old, 0, true
}

// openSession opens the session src → dst within MaxSessionsPerPeer,
// MaxSessionsPerIP and MaxSessions (or renews it if it is open); it
// returns the reason it was refused. In a full table it first ends a
// session of the biggest holder, if src's source or network holds less
// than it (evictLocked), in the same step: the table never loses a
// slot to an eviction whose session did not open.
func (s *Server) openSession(src *peerLink, dst identity.PeerID, now time.Time) (dropReason, bool) {
	src.omu.Lock()
	defer src.omu.Unlock()
	if src.gone {
		return dropNoPeer, false
	}
	if _, ok := src.out[dst]; ok {
		src.out[dst] = now
		return 0, true
	}
	if s.cfg.MaxSessionsPerPeer > 0 && len(src.out) >= s.cfg.MaxSessionsPerPeer {
		return dropPeerSessions, false
	}
	s.mu.Lock()
	st := src.ipst
	switch {
	case st != nil && s.cfg.MaxSessionsPerIP > 0 && st.sessions >= s.cfg.MaxSessionsPerIP:
		s.mu.Unlock()
		return dropIPSessions, false
	case s.sessions >= s.cfg.MaxSessions && !s.evictLocked(st, now):
		s.mu.Unlock()
		return dropSessionLimit, false
	}
	s.sessions++
	if st != nil {
		st.addSessions(1)
	}
	s.mu.Unlock()
	if src.out == nil {
		src.out = make(map[identity.PeerID]time.Time)
	}
	src.out[dst] = now
	return 0, true
}

// allow handles an ALLOW frame from p: an empty one asks for consent
// (p receives only from peers it allowed from now on, and the sessions
// to it that opened before it asked are checked too), one with a peer key
// allows that peer. False: a malformed frame.
func (s *Server) allow(p *peerLink, body []byte) bool {
	switch len(body) {
	case 0:
		s.enableConsent(p, time.Now())
	case identityLen:
		p.permit(identity.PeerID(body), time.Now())
	default:
		return false
	}
	return true
}

// Consent asked for late. A link asks for consent one round trip after its
// WELCOME; a stranger's packet in that window opens a session to it, which
// would never be checked again. So the sessions to a link opened in its
// first consentGrace (before it asked) are remembered, at most maxEarly,
// and checked when it asks; beyond maxEarly, every packet to it is.
const (
	consentGrace = 10 * time.Second
	maxEarly     = 64
)

// enableConsent turns consent on for p and ends the sessions to it that
// opened before, from peers it has not allowed.
func (s *Server) enableConsent(p *peerLink, now time.Time) {
	p.omu.Lock()
	p.consent = true
	early := p.early
	p.early = nil
	p.omu.Unlock()
	for _, src := range early {
		if !p.consents(src.id, now) {
			s.closeSession(src, p.id)
		}
	}
}

// earlyOpen records a session src opened to p before p asked for consent;
// it reports false when p asked meanwhile and has not allowed src.
func (p *peerLink) earlyOpen(src *peerLink, now time.Time) bool {
	p.omu.Lock()
	defer p.omu.Unlock()
	if p.consent {
		if _, ok := p.out[src.id]; ok {
			return true
		}
		t, ok := p.allowed[src.id]
		return ok && now.Sub(t) < PermissionLifetime
	}
	if now.Sub(p.linkedAt) > consentGrace {
		p.early = nil // an older client: it never asks
		return true
	}
	if len(p.early) >= maxEarly {
		p.strict.Store(true)
		return true
	}
	p.early = append(p.early, src)
	return true
}

// closeSession ends the session src → dst, if open; false if it was not.
func (s *Server) closeSession(src *peerLink, dst identity.PeerID) bool {
	src.omu.Lock()
	_, open := src.out[dst]
	delete(src.out, dst)
	st := src.ipst
	src.omu.Unlock()
	if !open {
		return false
	}
	s.mu.Lock()
	s.sessions--
	if st != nil {
		st.addSessions(-1)
	}
	s.mu.Unlock()
	return true
}

// consents reports whether p receives packets from peer: it did not ask
// for consent (an older client, or one without ClientConfig.Consent), it
// allowed peer (an ALLOW, or a packet it sent to peer, within
// PermissionLifetime), or it has a session to peer itself.
func (p *peerLink) consents(peer identity.PeerID, now time.Time) bool {
	p.omu.Lock()
	defer p.omu.Unlock()
	if !p.consent {
		return true
	}
	if _, ok := p.out[peer]; ok {
		return true
	}
	t, ok := p.allowed[peer]
	return ok && now.Sub(t) < PermissionLifetime
}

// permit records p's consent to receive from peer (for
// PermissionLifetime); false if p holds maxPermissions already.
func (p *peerLink) permit(peer identity.PeerID, now time.Time) bool {
	p.omu.Lock()
	defer p.omu.Unlock()
	if p.gone {
		return false
	}
	if _, ok := p.allowed[peer]; !ok && len(p.allowed) >= maxPermissions {
		return false
	}
	if p.allowed == nil {
		p.allowed = make(map[identity.PeerID]time.Time)
	}
	p.allowed[peer] = now
	return true
}

// tokenExpiry is the expiry of a token that CheckToken accepted.
func tokenExpiry(token string) time.Time {
	exp, _, _ := strings.Cut(token, ":")
	sec, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || sec <= 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}

// expireAt ends p's link at its token's expiry with ERROR token_expired;
// with KeepSessionsPastExpiry, only if it has no session then (else it
// is marked expired, and the sweep ends it once it has none).
func (s *Server) expireAt(p *peerLink, at time.Time) {
	p.expiry = time.AfterFunc(time.Until(at), func() {
		if s.cfg.KeepSessionsPastExpiry {
			p.omu.Lock()
			p.expired.Store(true)
			n := len(p.out)
			p.omu.Unlock()
			if n > 0 {
				s.log.Debug("relay: token expired on a live link; kept for its sessions", "peer", p.id.Short(), "sessions", n)
				return
			}
		}
		s.endExpired(p)
	})
}

// endExpired ends p's link because its token expired.
func (s *Server) endExpired(p *peerLink) {
	s.m.expired.Add(1)
	s.log.Debug("relay: token expired on a live link", "peer", p.id.Short())
	p.fail(codeTokenExpired, "relay token expired")
}

// sweep ends idle sessions, forgets expired permissions and old NOTICE
// state, and the state of sources without links.
func (s *Server) sweep(ctx context.Context) {
	t := time.NewTicker(max(min(s.cfg.SessionIdle/4, s.cfg.IdleTimeout/3), time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.sweepOnce(now)
		}
	}
}

func (s *Server) sweepOnce(now time.Time) {
	s.mu.RLock()
	peers := make([]*peerLink, 0, len(s.peers))
	for _, p := range s.peers {
		peers = append(peers, p)
	}
	s.mu.RUnlock()
	type ended struct {
		st *ipState
		n  int
	}
	var ends []ended
	var silent, lapsed, parked []*peerLink
	for _, p := range peers {
		if p.tls != nil && s.watch.expire(p.tls, now.Add(-s.cfg.IdleTimeout)) {
			parked = append(parked, p) // parked, and nothing came for IdleTimeout
		}
		if p.data.detached.Load() {
			// A detached link has no QUIC idle timeout: it ends when
			// nothing came from it (its pings) for IdleTimeout.
			if p.data.seen.Swap(false) || p.data.lastSeen.IsZero() {
				p.data.lastSeen = now
			} else if now.Sub(p.data.lastSeen) > s.cfg.IdleTimeout {
				silent = append(silent, p)
			}
		}
		n := 0
		p.omu.Lock()
		for d, last := range p.out {
			if now.Sub(last) > s.cfg.SessionIdle {
				delete(p.out, d)
				n++
			}
		}
		for d, last := range p.notices {
			if now.Sub(last) > time.Minute {
				delete(p.notices, d)
			}
		}
		for d, t := range p.allowed {
			if now.Sub(t) >= PermissionLifetime {
				delete(p.allowed, d)
			}
		}
		if p.expired.Load() && len(p.out) == 0 && !p.gone {
			lapsed = append(lapsed, p) // its token expired, its last session ended
		}
		p.omu.Unlock()
		if n > 0 {
			ends = append(ends, ended{p.ipst, n})
		}
	}
	s.mu.Lock()
	for _, e := range ends {
		s.sessions -= e.n
		if e.st != nil {
			e.st.addSessions(-e.n)
		}
	}
	for k, st := range s.ips {
		if st.links == 0 && st.sessions == 0 && now.Sub(st.seen) > ipIdle {
			s.forgetSource(k, st)
		}
	}
	s.mu.Unlock()
	for _, p := range lapsed {
		s.endExpired(p)
	}
	for _, p := range silent {
		s.log.Debug("relay: detached link silent; ended", "peer", p.id.Short())
		s.unregister(p)
	}
	for _, p := range parked {
		s.log.Debug("relay: parked tls link silent; ended", "peer", p.id.Short())
		s.endTLS(p) // unregistered before its connection closes
	}
}

// detachedLinks returns the links that are detached now.
func (s *Server) detachedLinks() []*peerLink {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*peerLink
	for _, p := range s.peers {
		if p.data.detached.Load() {
			out = append(out, p)
		}
	}
	return out
}
