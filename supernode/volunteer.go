package supernode

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// Name is the strategy's name in the ladder.
const Name = "supernode"

// CodeVolunteerGone is the QUIC application error code with which a node
// closes the sessions that ran through a volunteer that vanished.
const CodeVolunteerGone = 0x5e

// Named errors. Test with errors.Is.
var (
	// ErrVolunteerGone: the volunteer that carried a session vanished (its
	// link went silent or closed); the session was closed. Streams of such
	// a session fail with it. It is a *quic.ApplicationError so that
	// errors.Is matches what the session's streams return.
	ErrVolunteerGone error = &quic.ApplicationError{ErrorCode: CodeVolunteerGone, ErrorMessage: "supernode: volunteer gone"}
	// ErrNoVolunteer: the introduction carried no volunteer (the server has
	// none, or none for this pair).
	ErrNoVolunteer = errors.New("supernode: no volunteer offered")
	// ErrVolunteerFull: the volunteer is at a limit (sessions, links); it
	// wraps the relay's ErrRelayFull.
	ErrVolunteerFull = errors.New("supernode: volunteer at its limit")
	// ErrNotAllowed: a peer not on the volunteer's allow-list tried to
	// link (a peer without a valid token from one of its servers gets
	// relay.ErrBadToken or relay.ErrTokenExpired). On the wire the
	// dialler sees relay.ErrBadToken.
	ErrNotAllowed = errors.New("supernode: peer not served by this volunteer")
)

// Config makes a node volunteer as a supernode. The zero value does not
// volunteer; with Enable, every other zero value is usable.
type Config struct {
	// Enable offers the node as a supernode to its rendezvous servers. It
	// is admitted only if a server can reach it from outside (an open host,
	// a full-cone NAT, a port forward). Zero: it does not volunteer.
	Enable bool
	// MaxSessions is how many pairs of peers it forwards for at once; a
	// pair beyond it is refused (the dialler's race moves on at once).
	// Of them, one peer may send to at most max(2, n/2) peers, and the
	// peers of one source IP hold at most max(4, n) relay sessions (half
	// the table: a pair is two) over at most 2n+2 links (half of its
	// 4n+4). Zero: 8.
	MaxSessions int
	// SessionRate is the bytes per second one peer may send through it
	// (with one session per peer, the bandwidth of a session in each
	// direction); the excess is dropped and QUIC slows down. Zero: no
	// limit.
	SessionRate int
	// TotalRate is the bytes per second it forwards for everyone
	// together. Zero: no limit.
	TotalRate int
	// Allow, if not empty, are the only peers it serves (both peers of a
	// pair must be on it). Empty: any peer its servers introduce (holding
	// a token from one of them).
	Allow []identity.PeerID
}

func (c Config) maxSessions() int {
	if c.MaxSessions <= 0 {
		return 8
	}
	return c.MaxSessions
}

// Volunteer is a node's supernode side: a relay server for the links peers
// open to the node's socket, and the servers' verdicts on the offer. Its
// methods are safe for concurrent use.
type Volunteer struct {
	cfg   Config
	srv   *relay.Server
	log   *slog.Logger
	allow map[identity.PeerID]bool

	mu       sync.Mutex
	verdicts map[rendezvous.ServerAddr]rendezvous.VolunteerStatus
	secrets  [][]byte      // of admissions, newest first
	changed  chan struct{} // closed and replaced on every verdict
}

// maxSecrets is how many admissions' secrets a volunteer keeps (tokens of
// a server it failed over from stay valid until they expire).
const maxSecrets = 8

// NewVolunteer makes the volunteer side of a node from cfg.
func NewVolunteer(cfg Config, log *slog.Logger) *Volunteer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v := &Volunteer{cfg: cfg, log: log, verdicts: map[rendezvous.ServerAddr]rendezvous.VolunteerStatus{}, changed: make(chan struct{})}
	if len(cfg.Allow) > 0 {
		v.allow = map[identity.PeerID]bool{}
		for _, id := range cfg.Allow {
			v.allow[id] = true
		}
	}
	n := cfg.maxSessions()
	noLimit := func(r int) int { // Config's zero is no limit; the relay's is its default
		if r <= 0 {
			return -1
		}
		return r
	}
	v.srv = relay.NewServer(relay.ServerConfig{
		// A pair of peers is two relay sessions (one per direction) and
		// two links; listeners also link to the other volunteers of an
		// introduction for a while, hence the room in MaxClients.
		MaxSessions: 2 * n,
		MaxClients:  4*n + 4,
		// Fairness: one peer may send to at most max(2, n/2) peers
		// through it, and the peers of one source IP (or IPv6 /64) hold
		// at most max(4, n) sessions, half the table: one source cannot
		// take it all (TestVolunteerFairness).
		MaxSessionsPerPeer: max(2, n/2),
		MaxSessionsPerIP:   max(4, n),
		// Half the links, so that one source cannot take every slot
		// (the relay's default, 64, is above the whole table).
		MaxLinksPerIP: 2*n + 2,
		PeerRate:      noLimit(cfg.SessionRate),
		TotalRate:     noLimit(cfg.TotalRate),
		Authorize:     v.authorize,
		// A token comes with an introduction only: a session outlives it,
		// a link without sessions ends at its expiry, and two links whose
		// tokens expired open no new session between them.
		KeepSessionsPastExpiry: true,
		// Links keep their QUIC connection: its short idle timeout
		// (LinkIdleTimeout) is how both ends notice the other vanish.
		QUICLinks: true,
		Logger:    log,
	})
	return v
}

// Relay returns the relay server that forwards for the peers: hand it the
// QUIC connections that negotiated relay.ALPN on the node's listener.
func (v *Volunteer) Relay() *relay.Server { return v.srv }

// Offer is what the node tells its servers (rendezvous.ClientConfig.Volunteer).
func (v *Volunteer) Offer() *rendezvous.VolunteerOffer {
	return &rendezvous.VolunteerOffer{MaxSessions: v.cfg.maxSessions(), Allow: v.cfg.Allow}
}

// Verdict records a server's verdict (rendezvous.ClientConfig.OnVolunteer).
func (v *Volunteer) Verdict(st rendezvous.VolunteerStatus) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.verdicts[st.Server] = st
	if st.Admitted && len(st.Secret) > 0 {
		// A new slice, never an in-place insert: authorize reads the old
		// one after it let go of the lock.
		v.secrets = append([][]byte{st.Secret}, v.secrets[:min(len(v.secrets), maxSecrets-1)]...)
	}
	close(v.changed)
	v.changed = make(chan struct{})
}

// authorize is the relay server's check of a linking peer; it returns
// the token's expiry (zero for a peer on the allow-list).
func (v *Volunteer) authorize(peer identity.PeerID, token string) (time.Time, error) {
	if v.allow != nil {
		if v.allow[peer] {
			return time.Time{}, nil
		}
		return time.Time{}, ErrNotAllowed
	}
	v.mu.Lock()
	secrets := v.secrets
	v.mu.Unlock()
	expired := false
	for _, s := range secrets {
		switch err := rendezvous.CheckSupernodeToken(s, peer, token, time.Now()); {
		case err == nil:
			return rendezvous.SupernodeTokenExpiry(token), nil
		case errors.Is(err, rendezvous.ErrSupernodeTokenExpired):
			expired = true
		}
	}
	if expired {
		return time.Time{}, relay.ErrTokenExpired
	}
	return time.Time{}, relay.ErrBadToken
}

// Wait returns the verdict of server (any server if zero) once there is
// one, or ctx's error.
func (v *Volunteer) Wait(ctx context.Context, server rendezvous.ServerAddr) (rendezvous.VolunteerStatus, error) {
	for {
		v.mu.Lock()
		ch := v.changed
		for sa, st := range v.verdicts {
			if server.IsZero() || sa == server {
				v.mu.Unlock()
				return st, nil
			}
		}
		v.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return rendezvous.VolunteerStatus{}, ctx.Err()
		}
	}
}

// Status is what a node does as a supernode and with supernodes.
type Status struct {
	// Volunteering: the node offers itself (Config.Enable).
	Volunteering bool
	// Admitted: its current server admitted it; Observed is the address
	// diallers are given. Err is that server's refusal otherwise (a
	// *rendezvous.VolunteerError), nil while it has not answered.
	Admitted bool
	Observed netip.AddrPort
	Err      error
	// Peers are the peers linked to it now (whom it serves for) and what
	// it forwarded for each; Sessions the pairs it serves now; Bytes and
	// Drops its totals since start.
	Peers    []relay.PeerStats
	Sessions int
	Bytes    uint64
	Drops    uint64
	// Using are the volunteers this node is linked to as a user.
	Using []identity.PeerID
}

// Status reports the volunteer side; server is the node's current server.
func (v *Volunteer) Status(server rendezvous.ServerAddr) Status {
	st := Status{Volunteering: true}
	v.mu.Lock()
	if vs, ok := v.verdicts[server]; ok {
		st.Admitted, st.Observed, st.Err = vs.Admitted, vs.Observed, vs.Err
	}
	v.mu.Unlock()
	rs := v.srv.Stats()
	st.Peers = v.srv.Peers()
	st.Sessions = (rs.Sessions + 1) / 2
	st.Bytes, st.Drops = rs.Bytes, rs.Drops
	return st
}
