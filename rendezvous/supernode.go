package rendezvous

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

// The server's side of supernodes: nodes with open ports volunteer
// (VOLUNTEER), the server dials each one back from a socket of its own
// before it admits it (VOLUNTEERED), re-checks it now and then, and hands
// diallers that ask (PeerInfo.WantSupernodes) a short list of volunteers,
// best first, as Supernode candidates with tokens. See docs/protocol.md,
// "Supernodes".

// VolunteerALPN is the ALPN of the server's dial-back: the relay's
// (relay.ALPN), which a volunteer serves on its node socket. The dial-back
// is a QUIC handshake in which the volunteer proves its key.
const VolunteerALPN = "reach-relay/1"

// SupernodeConfig configures a server's registry of volunteers. Every zero
// value is usable.
type SupernodeConfig struct {
	// Disable turns the registry off: volunteers are told "disabled" and
	// diallers get none. Zero: on (when the server serves UDP).
	Disable bool
	// DialBackAddr is the local address of the UDP socket the server dials
	// volunteers back from. It must not be the server's UDP port: the
	// volunteer's registration opened its NAT towards that one, so a
	// dial-back from it would pass a NAT that filters by port. A second IP
	// address of the host also catches NATs that filter by address only
	// (restricted cone); with one address those pass the dial-back.
	// Zero: the UDP listener's IP, a random port.
	DialBackAddr netip.AddrPort
	// DialBackTimeout bounds one dial-back (a QUIC handshake). Zero: 3s.
	DialBackTimeout time.Duration
	// Recheck is how often an admitted volunteer is dialled back again; one
	// that does not answer is dropped and told so. Zero: 60s.
	Recheck time.Duration
	// PerIntro is how many volunteers an introduction carries. Zero: 2.
	PerIntro int
	// TokenTTL is how long a token handed out with a volunteer lets its
	// holder open a link to it. Zero: 5 min.
	TokenTTL time.Duration
	// MaxDeclared caps the capacity (pairs at once) the server believes a
	// volunteer declares: the ranking prefers the least loaded for its
	// capacity, and a self-reported capacity of millions would win every
	// introduction. Zero: 64.
	MaxDeclared int
}

// maxAllow is the longest allow-list a VOLUNTEER may carry.
const maxAllow = 128

// Volunteer codes of VOLUNTEERED frames.
const (
	codeUnreachable = "unreachable" // the dial-back failed
	codeNoUDP       = "no_udp"      // registered over TCP: nothing to dial back
	codeDisabled    = "disabled"    // the server admits no supernodes
)

type (
	volunteerBody struct {
		Leave       bool              `json:"leave,omitempty"`
		MaxSessions int               `json:"max_sessions,omitempty"`
		Allow       []identity.PeerID `json:"allow,omitempty"`
	}
	volunteeredBody struct {
		Admitted bool           `json:"admitted"`
		Observed netip.AddrPort `json:"observed,omitzero"`
		Secret   []byte         `json:"secret,omitempty"`
		Error    string         `json:"error,omitempty"`
		Reason   string         `json:"reason,omitempty"`
	}
)

// snRegistry is the server's volunteers. Maps are guarded by Server.mu.
type snRegistry struct {
	cfg SupernodeConfig
	tr  *quic.Transport // dial-back socket; nil: no UDP or disabled
	udp *net.UDPConn
	ctx context.Context
	wg  sync.WaitGroup

	vols     map[identity.PeerID]*volunteer
	checking map[*session]bool
}

type volunteer struct {
	ss          *session
	addr        netip.AddrPort
	secret      []byte
	maxSessions int
	allow       map[identity.PeerID]bool // nil: anyone registered here
	since       time.Time
	handed      []time.Time // introductions it was offered in, last minute
}

// startSupernodes opens the dial-back socket (start calls it inside the
// caller's network namespace, like the other sockets).
func (s *Server) startSupernodes(ctx context.Context, udp *net.UDPConn) {
	c := s.cfg.Supernodes
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defD(&c.DialBackTimeout, 3*time.Second)
	defD(&c.Recheck, time.Minute)
	defD(&c.TokenTTL, 5*time.Minute)
	if c.MaxDeclared <= 0 {
		c.MaxDeclared = 64
	}
	if c.PerIntro <= 0 {
		c.PerIntro = 2
	}
	reg := &snRegistry{cfg: c, ctx: ctx, vols: map[identity.PeerID]*volunteer{}, checking: map[*session]bool{}}
	s.sn = reg
	if c.Disable || udp == nil {
		return
	}
	la := c.DialBackAddr
	if !la.IsValid() {
		la = netip.AddrPortFrom(addrPortOf(udp.LocalAddr()).Addr(), 0)
	}
	network := "udp"
	if la.Addr().Is4() {
		network = "udp4"
	}
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(la))
	if err != nil {
		s.log.Warn("rendezvous: no dial-back socket; supernodes are not admitted", "addr", la, "err", err)
		return
	}
	reg.udp, reg.tr = conn, &quic.Transport{Conn: conn}
}

// stopSupernodes waits for the dial-backs and closes their socket.
func (s *Server) stopSupernodes() {
	if s.sn == nil {
		return
	}
	s.sn.wg.Wait()
	if s.sn.tr != nil {
		s.sn.tr.Close()
		s.sn.udp.Close()
	}
}

// volunteer handles a VOLUNTEER frame.
func (s *Server) volunteer(ss *session, vb volunteerBody) {
	reg := s.sn
	if vb.Leave {
		s.dropVolunteer(ss)
		return
	}
	refuse := func(code, reason string) {
		ss.send(typeVolunteered, volunteeredBody{Error: code, Reason: reason})
	}
	obs := ss.observed()
	switch {
	case reg == nil || reg.tr == nil:
		refuse(codeDisabled, "this server admits no supernodes")
		return
	case ss.proto != "udp" || !obs.IsValid():
		refuse(codeNoUDP, "registered over TCP: there is no UDP address to dial back")
		return
	case len(vb.Allow) > maxAllow:
		refuse(codeBadRequest, fmt.Sprintf("allow-list of %d peers, limit %d", len(vb.Allow), maxAllow))
		return
	}
	s.mu.Lock()
	if reg.checking[ss] {
		s.mu.Unlock()
		return
	}
	reg.checking[ss] = true
	s.mu.Unlock()
	reg.wg.Go(func() {
		err := s.dialBack(ss.peer, obs)
		s.mu.Lock()
		delete(reg.checking, ss)
		if err != nil || s.peers[ss.peer] != ss {
			s.mu.Unlock()
			if err != nil {
				ss.log.Info("supernode refused: dial-back failed", "addr", obs, "err", err)
				refuse(codeUnreachable, fmt.Sprintf("the server could not reach %v from outside: %v", obs, err))
			}
			return
		}
		v := &volunteer{ss: ss, addr: obs, secret: make([]byte, 32), maxSessions: min(max(vb.MaxSessions, 1), reg.cfg.MaxDeclared), since: time.Now()}
		rand.Read(v.secret)
		if len(vb.Allow) > 0 {
			v.allow = make(map[identity.PeerID]bool, len(vb.Allow))
			for _, id := range vb.Allow {
				v.allow[id] = true
			}
		}
		reg.vols[ss.peer] = v
		s.mu.Unlock()
		ss.log.Info("supernode admitted", "addr", obs, "max_sessions", v.maxSessions, "allow", len(vb.Allow))
		ss.send(typeVolunteered, volunteeredBody{Admitted: true, Observed: obs, Secret: v.secret})
		reg.wg.Go(func() { s.recheck(v) })
	})
}

// recheck dials v back every Recheck until it leaves, is replaced or
// stops answering (then it is dropped and told).
func (s *Server) recheck(v *volunteer) {
	reg := s.sn
	t := time.NewTicker(reg.cfg.Recheck)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-v.ss.done:
			return
		case <-reg.ctx.Done():
			return
		}
		s.mu.Lock()
		current := reg.vols[v.ss.peer] == v
		s.mu.Unlock()
		if !current {
			return
		}
		if err := s.dialBack(v.ss.peer, v.addr); err != nil {
			s.mu.Lock()
			if reg.vols[v.ss.peer] == v {
				delete(reg.vols, v.ss.peer)
			}
			s.mu.Unlock()
			v.ss.log.Info("supernode dropped: stopped answering the dial-back", "addr", v.addr, "err", err)
			v.ss.send(typeVolunteered, volunteeredBody{Error: codeUnreachable, Reason: fmt.Sprintf("stopped answering the dial-back at %v: %v", v.addr, err)})
			return
		}
	}
}

// dialBack proves that peer is reachable at addr from outside: a QUIC
// handshake from the dial-back socket, in which it proves its key.
func (s *Server) dialBack(peer identity.PeerID, addr netip.AddrPort) error {
	reg := s.sn
	tlsCfg, pin, err := identity.ClientTLSConfig(s.key, peer, VolunteerALPN)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(reg.ctx, reg.cfg.DialBackTimeout)
	defer cancel()
	qc, err := reg.tr.Dial(ctx, net.UDPAddrFromAddrPort(addr), tlsCfg, &quic.Config{
		HandshakeIdleTimeout:  reg.cfg.DialBackTimeout,
		EnableDatagrams:       true,
		MaxIncomingStreams:    -1,
		MaxIncomingUniStreams: -1,
	})
	if err != nil {
		if perr := pin.Err(); perr != nil {
			return perr
		}
		if ctx.Err() != nil {
			return fmt.Errorf("no answer within %v", reg.cfg.DialBackTimeout)
		}
		return err
	}
	qc.CloseWithError(0, "dial-back done")
	return nil
}

// dropVolunteer forgets ss's volunteer (it left or disconnected).
func (s *Server) dropVolunteer(ss *session) {
	if s.sn == nil {
		return
	}
	s.mu.Lock()
	if v := s.sn.vols[ss.peer]; v != nil && v.ss == ss {
		delete(s.sn.vols, ss.peer)
		ss.log.Info("supernode left")
	}
	s.mu.Unlock()
}

// pickSupernodes chooses the volunteers for an introduction of from to
// to, best first (the least offered per allowed session in the last
// minute, then the longest admitted), and returns the candidates for each
// side, with its tokens.
func (s *Server) pickSupernodes(from, to identity.PeerID) (forFrom, forTo []Candidate) {
	reg := s.sn
	if reg == nil {
		return nil, nil
	}
	now := time.Now()
	s.mu.Lock()
	var vs []*volunteer
	for id, v := range reg.vols {
		if id == from || id == to || v.allow != nil && (!v.allow[from] || !v.allow[to]) {
			continue
		}
		i := 0
		for i < len(v.handed) && now.Sub(v.handed[i]) > time.Minute {
			i++
		}
		v.handed = v.handed[i:]
		vs = append(vs, v)
	}
	slices.SortFunc(vs, func(a, b *volunteer) int {
		la, lb := float64(len(a.handed))/float64(a.maxSessions), float64(len(b.handed))/float64(b.maxSessions)
		if c := cmp.Compare(la, lb); c != 0 {
			return c
		}
		return a.since.Compare(b.since)
	})
	vs = vs[:min(len(vs), reg.cfg.PerIntro)]
	for _, v := range vs {
		v.handed = append(v.handed, now)
	}
	s.mu.Unlock()
	exp := now.Add(reg.cfg.TokenTTL)
	for _, v := range vs {
		forFrom = append(forFrom, Candidate{Addr: v.addr, Kind: Supernode, Peer: v.ss.peer, Token: NewSupernodeToken(v.secret, from, exp)})
		forTo = append(forTo, Candidate{Addr: v.addr, Kind: Supernode, Peer: v.ss.peer, Token: NewSupernodeToken(v.secret, to, exp)})
	}
	return forFrom, forTo
}

// fromClient is a client's candidates without what only a server may
// write: Supernode candidates (only the server hands them out), and
// the key and TCP port of Relay candidates (only a server of a fleet
// names its relay with them, for the peer of another server to link to;
// vouchRelay), so a client cannot make its peer link to any address.
func fromClient(cands []Candidate) []Candidate {
	if !slices.ContainsFunc(cands, func(c Candidate) bool {
		return c.Kind == Supernode || c.Kind == Relay && (!c.Peer.IsZero() || c.TCPPort != 0)
	}) {
		return cands
	}
	out := slices.DeleteFunc(slices.Clone(cands), func(c Candidate) bool { return c.Kind == Supernode })
	for i := range out {
		if out[i].Kind == Relay {
			out[i].Peer, out[i].TCPPort = identity.PeerID{}, 0
		}
	}
	return out
}

// withAnswerCandidates returns a copy of the answer a with extra
// candidates (volunteers) added; a itself, shared with others, is left
// as it is. Nil stays nil.
func withAnswerCandidates(a *PeerInfo, extra []Candidate) *PeerInfo {
	if a == nil || len(extra) == 0 {
		return a
	}
	b := *a
	b.Candidates = append(b.Candidates[:len(b.Candidates):len(b.Candidates)], extra...)
	return &b
}

// vouchRelay replaces the dialler's Relay candidates (it relays through
// this server) with this server's own relay, named with the server's key,
// advertised address and TCP port: the peer it is handed to is registered
// with another server of the fleet and links to this relay for the
// session. Without a Relay candidate (the dialler cannot relay) or an
// advertised address, cands is returned unchanged.
func (s *Server) vouchRelay(cands []Candidate) []Candidate {
	if len(s.self) == 0 || !slices.ContainsFunc(cands, func(c Candidate) bool { return c.Kind == Relay }) {
		return cands
	}
	out := slices.DeleteFunc(slices.Clone(cands), func(c Candidate) bool { return c.Kind == Relay })
	for _, sa := range s.self {
		ip, err := netip.ParseAddr(sa.Host)
		if err != nil {
			continue
		}
		out = append(out, Candidate{Kind: Relay, Addr: netip.AddrPortFrom(ip.Unmap(), sa.Port), Peer: s.ID(), TCPPort: sa.TCPPort})
	}
	return out
}

// Volunteers lists the peers admitted as supernodes now.
func (s *Server) Volunteers() []identity.PeerID {
	if s.sn == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]identity.PeerID, 0, len(s.sn.vols))
	for id := range s.sn.vols {
		out = append(out, id)
	}
	return out
}

// Supernode tokens: what a server hands a peer with a volunteer, so that
// the volunteer serves exactly the peers registered with the servers that
// admitted it. Like relay tokens (TURN REST style) but under the secret
// the server gave that volunteer, in its own domain.

// ErrBadSupernodeToken: a supernode token is malformed or not made with
// the secret it was checked against.
var ErrBadSupernodeToken = errors.New("rendezvous: bad supernode token")

// ErrSupernodeTokenExpired: a supernode token's expiry has passed.
var ErrSupernodeTokenExpired = errors.New("rendezvous: supernode token expired")

// NewSupernodeToken makes the token that lets peer link to the volunteer
// whose secret it is, until expiry: "<expiry unix seconds>:<MAC>", MAC the
// unpadded base64url HMAC-SHA256 under secret of
// "reach-supernode|<peer ID>|<expiry>".
func NewSupernodeToken(secret []byte, peer identity.PeerID, expiry time.Time) string {
	exp := strconv.FormatInt(expiry.Unix(), 10)
	return exp + ":" + supernodeMAC(secret, peer, exp)
}

func supernodeMAC(secret []byte, peer identity.PeerID, exp string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("reach-supernode|" + peer.String() + "|" + exp))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// SupernodeTokenExpiry is the expiry a supernode token states (zero if
// it states none); it does not check the token.
func SupernodeTokenExpiry(token string) time.Time {
	exp, _, _ := strings.Cut(token, ":")
	sec, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || sec <= 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}

// CheckSupernodeToken checks token for peer under secret at now:
// nil, ErrBadSupernodeToken or ErrSupernodeTokenExpired.
func CheckSupernodeToken(secret []byte, peer identity.PeerID, token string, now time.Time) error {
	exp, mac, ok := strings.Cut(token, ":")
	sec, err := strconv.ParseInt(exp, 10, 64)
	if !ok || err != nil || sec <= 0 || !hmac.Equal([]byte(supernodeMAC(secret, peer, exp)), []byte(mac)) {
		return ErrBadSupernodeToken
	}
	if now.Unix() >= sec {
		return ErrSupernodeTokenExpired
	}
	return nil
}
