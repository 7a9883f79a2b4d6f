package supernode

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// HeadStart is how long the supernode rung runs alone before TURN or the
// hosted relay joins (at once if it fails: a volunteer at its limit
// refuses at once).
const HeadStart = time.Second

// EventLost is the path event of a session whose volunteer vanished and
// that no other forwarded path could take (Host.Rescue): the node closed
// it with ErrVolunteerGone (the event's Err), so its streams fail with
// that error instead of hanging.
const EventLost rung.EventKind = "supernode-lost"

// introducedLinkTimeout bounds the listening side's link to a volunteer
// after an introduction.
const introducedLinkTimeout = 10 * time.Second

// Rung is the supernode rung. It volunteers the node (with Config.Enable:
// the node's listener serves relay links and the node offers itself to its
// servers) and uses volunteers: the dialler asks the server for them and
// dials the peer through the first that works; the listener links to the
// volunteers its introduction names.
type Rung struct {
	rung.Base
	h    *rung.Host
	cfg  Config
	vol  *Volunteer // nil unless cfg.Enable
	pool *Pool      // nil without servers
}

// NewRung makes the rung for the node h.
func NewRung(h *rung.Host, cfg Config) *Rung {
	r := &Rung{h: h, cfg: cfg}
	if cfg.Enable {
		r.vol = NewVolunteer(cfg, h.Logger.With("supernode", "volunteer"))
	}
	return r
}

// Name implements rung.Rung.
func (*Rung) Name() string { return Name }

// Handlers implements rung.Rung: a volunteer serves relay links on the
// node's listener.
func (r *Rung) Handlers() map[string]func(*quic.Conn) {
	if r.vol == nil {
		return nil
	}
	rs := r.vol.Relay()
	return map[string]func(*quic.Conn){
		relay.ALPN: func(qc *quic.Conn) { r.h.Go(func() { rs.ServeQUIC(r.h.Context, qc) }) },
	}
}

// Signalling implements rung.Rung: a volunteer offers itself after each
// registration and records the verdicts.
func (r *Rung) Signalling(cfg *rendezvous.ClientConfig) {
	if r.vol == nil {
		return
	}
	cfg.Volunteer = r.vol.Offer()
	cfg.OnVolunteer = r.vol.Verdict
}

// Start implements rung.Rung: it sets up the node's links to volunteers
// (none is opened until a dial or an introduction needs one).
func (r *Rung) Start(context.Context) error {
	if r.vol != nil {
		// Links to the volunteer may carry data packets on the node's
		// socket (relay.Server.ServeDatagrams), until the node closes.
		context.AfterFunc(r.h.Context, r.vol.Relay().ServeDatagrams(r.h.Socket.Paths()))
	}
	if !r.h.Signalling {
		return nil
	}
	p, err := NewPool(PoolConfig{
		Key: r.h.Key, Socket: r.h.Socket.Transport(), Session: r.h.Session, Logger: r.h.Logger,
		OnSession: func(sess *stream.Session) {
			r.h.Logger.Debug("session accepted", "peer", sess.RemotePeer().Short(), "strategy", Name)
			if !r.h.Accepted(sess) {
				sess.CloseWithError(0, "node closed")
			}
		},
		Rescue: func(peer identity.PeerID, key netip.AddrPort) bool {
			return r.h.Rescue != nil && r.h.Rescue(peer, key, Name, ErrVolunteerGone)
		},
		OnLost: func(_ identity.PeerID, sess *stream.Session) {
			r.h.Event(rung.Event{Peer: sess.RemotePeer(), Kind: EventLost, Strategy: Name,
				Session: sess, Err: ErrVolunteerGone})
		},
	})
	if err != nil {
		return err
	}
	p.paths = r.h.Socket.Paths()
	r.pool = p
	return nil
}

// Close implements rung.Rung: it ends the links to volunteers (the
// volunteer's own links end with the node).
func (r *Rung) Close() {
	if r.pool != nil {
		r.pool.Close()
	}
}

// usable reports whether this node can use volunteers: links to them are
// QUIC, so its UDP must work.
func (r *Rung) usable() bool { return r.pool != nil && r.h.Observed().IsValid() }

// Offer implements rung.Rung: it asks the server for volunteers.
func (r *Rung) Offer(_ context.Context, offer *candidate.PeerInfo) func() {
	offer.WantSupernodes = r.usable()
	return nil
}

// Introduced implements rung.Rung: it links the listening side to the
// volunteers the offer names (the dialler will come through one of them).
func (r *Rung) Introduced(offer candidate.PeerInfo) {
	cands := offer.Volunteers()
	if len(cands) == 0 || !r.usable() {
		return
	}
	for _, c := range cands {
		r.h.Go(func() {
			ctx, cancel := context.WithTimeout(r.h.Context, introducedLinkTimeout)
			defer cancel()
			if err := r.pool.Link(ctx, c, offer.Peer); err != nil && r.h.Context.Err() == nil {
				r.h.Logger.Debug("supernode: cannot link for an introduced peer", "peer", offer.Peer.Short(), "volunteer", c.Peer.Short(), "err", err)
			}
		})
	}
}

// Plan implements rung.Rung: the rung sits out a dial whose answer offers
// no volunteer or whose peer has no UDP (it registered over TCP): a rung
// that fails at once would start the next forwarding rung early.
func (r *Rung) Plan(a *rung.Attempt, headStart time.Duration) (time.Duration, bool) {
	return headStart, a.Remote.HasUDP() && len(a.Remote.Volunteers()) > 0
}

// Connect implements rung.Rung: it links to the volunteers the server
// offered, in order, and dials QUIC end to end to the peer through the
// first one that works, with the relay's own code. A volunteer at its
// limit, gone, or refusing moves it on to the next at once. Errors:
// ErrNoVolunteer, or each volunteer's joined (ErrVolunteerFull,
// ErrVolunteerGone, the relay's link errors, the handshake's).
func (r *Rung) Connect(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	cands := a.Remote.Volunteers()
	if len(cands) == 0 || r.pool == nil {
		return nil, ErrNoVolunteer
	}
	var errs []error
	for _, c := range cands {
		sess, err := r.pool.dial(ctx, c, a)
		if err == nil {
			return sess, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// Won implements rung.Winner: the peer's forwarded path is the volunteer
// that carried the winning session again (a forwarding rung that raced
// it, the relay, may have set its own path for the peer meanwhile, and
// the session would then run through the relay).
func (r *Rung) Won(a *rung.Attempt, s *stream.Session) {
	if r.pool != nil {
		r.pool.won(a, s)
	}
}

// Status reports the node's supernode side: whether it volunteers and is
// admitted by its current server, whom it forwards for and how much, and
// the volunteers it uses itself.
func (r *Rung) Status() Status {
	var st Status
	if r.vol != nil {
		st = r.vol.Status(r.h.Server())
	}
	if r.pool != nil {
		st.Using = r.pool.Using()
	}
	return st
}

// Wait waits for the current server's verdict on the node's volunteer
// offer: the admission, or a *rendezvous.VolunteerError (errors.Is
// rendezvous.ErrNotAdmitted). Without Config.Enable (or servers) it
// returns rendezvous.ErrNotAdmitted at once.
func (r *Rung) Wait(ctx context.Context) (rendezvous.VolunteerStatus, error) {
	if r.vol == nil || !r.h.Signalling {
		return rendezvous.VolunteerStatus{}, rendezvous.ErrNotAdmitted
	}
	st, err := r.vol.Wait(ctx, rendezvous.ServerAddr{})
	if err != nil {
		return st, err
	}
	return st, st.Err
}
