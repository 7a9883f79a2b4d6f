package relay

import (
	"net/netip"
	"time"

	"github.com/reachp2p/reach/identity"
)

// A fair session table (issue 15). The per-source cap (MaxSessionsPerIP)
// keeps one address from taking the whole table, but MaxSessions/
// MaxSessionsPerIP sources together still fill it (10 with the defaults),
// and an honest pair that comes later would be refused. So, when the table
// is full, a session from a small holder takes the place of one of the
// biggest holder's: max-min fairness, in two tiers.
//
// The upper tier is the network: an IPv4 /24 or an IPv6 /48, the stand-in
// for an autonomous system (there is no ASN database in a relay). Sources
// of one network count together, so an attacker who holds many addresses
// in one network is one holder, not many. The lower tier is the source
// (ipKey): within one network, the biggest source gives way first, so an
// honest host in an attacker's /24 is served too. Networks are not capped
// outright: a hard cap per /24 would let one hostile host deny the relay
// to its neighbours (a university, a carrier's NAT pool); here they lose
// nothing while the table has room.

// netState is what the server keeps per network (netKey): its sessions
// and how many sources it has. Guarded by Server.mu.
type netState struct {
	sessions int
	sources  int
	big      *ipState // its source with the most sessions, at the last refresh
}

// netKey is the network a source counts in: the /24 of an IPv4 address,
// the /48 of an IPv6 one.
func netKey(src netip.Prefix) netip.Prefix {
	bits := 48
	if src.Addr().Is4() {
		bits = 24
	}
	p, err := src.Addr().Prefix(bits)
	if err != nil {
		return src
	}
	return p
}

// dstTime is a session's destination and its last packet.
type dstTime struct {
	d identity.PeerID
	t time.Time
}

// bigEvery is how often, at most, the server finds its biggest holders
// again (a walk over the sources): a flood of session attempts at a full
// table costs a lookup each, not a walk each.
const bigEvery = 100 * time.Millisecond

// attachNet counts the new source st in its network. s.mu is held.
func (s *Server) attachNet(key netip.Prefix, st *ipState) {
	nk := netKey(key)
	n := s.nets[nk]
	if n == nil {
		n = &netState{}
		s.nets[nk] = n
	}
	n.sources++
	st.net, st.netKey = n, nk
}

// forgetSource drops the state of a source without links or sessions.
// s.mu is held.
func (s *Server) forgetSource(key netip.Prefix, st *ipState) {
	delete(s.ips, key)
	if n := st.net; n != nil {
		if n.big == st {
			n.big = nil
		}
		if n.sources--; n.sources <= 0 {
			delete(s.nets, st.netKey)
			if s.bigNet == n {
				s.bigNet = nil
			}
		}
	}
}

// addSessions counts n more (or fewer) sessions for st and its network.
// s.mu is held.
func (st *ipState) addSessions(n int) {
	st.sessions += n
	if st.net != nil {
		st.net.sessions += n
	}
}

// refreshBig finds the biggest network and each network's biggest
// source, unless it did within bigEvery. s.mu is held.
func (s *Server) refreshBig(now time.Time) {
	if now.Sub(s.bigAt) < bigEvery {
		return
	}
	s.bigAt = now
	for _, n := range s.nets {
		n.big = nil
	}
	s.bigNet = nil
	for _, st := range s.ips {
		n := st.net
		if n == nil || st.sessions == 0 {
			continue
		}
		if n.big == nil || st.sessions > n.big.sessions {
			n.big = st
		}
		if s.bigNet == nil || n.sessions > s.bigNet.sessions {
			s.bigNet = n
		}
	}
}

// victim returns the source that should give up a session so that st
// may open one, or nil if st has its fair share already: the biggest
// source of the biggest network, when st's network holds at least two
// sessions fewer; else the biggest source of st's own network, when st
// holds at least two fewer than it. (A margin of two: one source never
// takes a session from another only to give it back.) s.mu is held.
func (s *Server) victim(st *ipState, now time.Time) *ipState {
	if st == nil || st.net == nil {
		return nil
	}
	s.refreshBig(now)
	if n := s.bigNet; n != nil && n != st.net && st.net.sessions+1 < n.sessions && n.big != nil && n.big.sessions > 0 {
		return n.big
	}
	if v := st.net.big; v != nil && v != st && st.sessions+1 < v.sessions {
		return v
	}
	return nil
}

// evictLocked ends one session of the biggest holder (victim) to make
// room for one of st's in a full table: the least recently used session
// of the victim's link with the most. False: st has its fair share
// already, or nothing could be ended now. s.mu is held, and the omu of
// the link that opens the session: another link's is only tried
// (TryLock), never waited for, as the lock order is omu before mu; a
// link busy at that moment is passed over.
func (s *Server) evictLocked(st *ipState, now time.Time) bool {
	v := s.victim(st, now)
	if v == nil {
		return false
	}
	var from *peerLink
	most := 0
	for p := range v.peers {
		if !p.omu.TryLock() {
			continue
		}
		if n := len(p.out); n > most {
			from, most = p, n
		}
		p.omu.Unlock()
	}
	if from == nil || !from.omu.TryLock() {
		return false
	}
	var oldest dstTime
	for d, t := range from.out {
		if oldest.t.IsZero() || t.Before(oldest.t) {
			oldest = dstTime{d, t}
		}
	}
	if oldest.t.IsZero() {
		from.omu.Unlock()
		return false
	}
	delete(from.out, oldest.d)
	from.omu.Unlock()
	s.sessions--
	v.addSessions(-1)
	s.m.evicted.Add(1)
	// The victim's next packet on it tries to open it again, and is
	// refused (it holds its share): it gets a NOTICE session_limit then.
	return true
}
