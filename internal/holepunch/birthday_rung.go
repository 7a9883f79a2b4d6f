package holepunch

import (
	"context"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// birthdayPrimeTime is what the probe side adds to its wait for the wide
// side's primers: opening 256 sockets and sending one packet from each.
const birthdayPrimeTime = 50 * time.Millisecond

// birthdayAcceptTimeout bounds how long a wide listener's winning socket
// waits for the dialler's QUIC handshake.
const birthdayAcceptTimeout = 5 * time.Second

// self is what the node knows of its own NAT, as a PeerInfo.
func (r *Rung) self() candidate.PeerInfo {
	var p candidate.PeerInfo
	if r.h.Self != nil {
		p.Mapping, p.Ports = r.h.Self()
	}
	return p
}

// birthdayListener does the listening side's part of the birthday mode
// for an introduction whose attempt at runs; own and dialler are the
// two sides' round-trip times to the server. It reports whether the part
// runs (the probes started, or the helper sockets are primed): the answer
// says so (BirthdayRuns).
func (r *Rung) birthdayListener(offer candidate.PeerInfo, at *Attempt, own, dialler time.Duration) bool {
	peer := r.birthdayTarget(offer)
	if !peer.IsValid() || offer.Move {
		// A move looks for a path the node's socket can take over
		// (holepunch.Validate), which a birthday pair on a helper socket
		// is not: the dialler does not run its part.
		return false
	}
	switch birthdayRole(r.self(), offer) {
	case birthdayProbe:
		n := r.birthdayProbes()
		if n == 0 {
			return false
		}
		release, err := r.acquireBirthday()
		if err != nil {
			r.h.Logger.Debug("birthday: not probing", "peer", offer.Peer.Short(), "err", err)
			return false
		}
		// The dialler primes its mappings when our answer reaches it:
		// about half of each side's round trip to the server from now.
		// (Not the attempt's hold, twice that plus slack: a probe too
		// early is only a probe wasted, not state on the dialler's
		// router that moves its mappings, since none of its mappings
		// towards us exists yet.)
		wait := min((own+dialler)/2, maxHold) + birthdayPrimeTime
		at.Probe(peer.Addr(), n, BirthdayProbeInterval, wait, &r.bstats.packets, release)
		return true
	case birthdayWide:
		r.mu.Lock()
		old := r.bdayListener[offer.Peer]
		r.mu.Unlock()
		if old != nil {
			// The same dialler again (a re-dial): its earlier race is
			// over for it, whatever its window says.
			old.Close()
		}
		w, err := r.startWide(r.h.Context, offer.Attempt, offer.PunchKey, RoleListener, peer)
		if err == nil && w != nil {
			r.mu.Lock()
			r.bdayListener[offer.Peer] = w
			r.mu.Unlock()
			r.h.Go(func() {
				<-w.Over()
				r.mu.Lock()
				if r.bdayListener[offer.Peer] == w {
					delete(r.bdayListener, offer.Peer)
				}
				r.mu.Unlock()
			})
		}
		if err != nil || w == nil {
			r.h.Logger.Debug("birthday: no wide side", "peer", offer.Peer.Short(), "err", err)
			return false
		}
		r.h.Go(func() {
			var win wideWin
			select {
			case win = <-w.Won():
				w.Close() // the others, and the node's slot
			case <-w.Over():
				w.Close() // (and a winner that came at the same time)
				return
			}
			r.serveWinner(offer, win)
		})
		return true
	}
	return false
}

// BirthdayRuns reports whether this node, introduced by the dialler of
// attempt, runs its part of the birthday mode: its answer says so
// (candidate.PeerInfo.Birthday), and only then does the dialler's
// Patience hold the forwarding rungs back.
func (r *Rung) BirthdayRuns(attempt uint64) bool {
	at := r.m.Lookup(attempt)
	return at != nil && at.p.Role == RoleListener && at.birthday.Load()
}

// serveWinner runs a QUIC listener on a wide listener's winning socket
// for the dialler's session and hands the session to the node; socket and
// transport close with the session.
func (r *Rung) serveWinner(offer candidate.PeerInfo, win wideWin) {
	tr := &quic.Transport{Conn: win.conn}
	closeAll := func() {
		tr.Close()
		r.closeWinner(win.conn)
	}
	ln, err := stream.Listen(tr, r.h.Key, r.h.Session)
	if err != nil {
		closeAll()
		return
	}
	ctx, cancel := context.WithTimeout(r.h.Context, birthdayAcceptTimeout)
	sess, err := ln.Accept(ctx)
	cancel()
	if err != nil || sess.RemotePeer() != offer.Peer {
		if sess != nil {
			sess.CloseWithError(0, "not the introduced peer")
		}
		r.h.Logger.Debug("birthday: no session on the winning socket", "peer", offer.Peer.Short(), "err", err)
		ln.Close()
		closeAll()
		return
	}
	sess.SetStrategy(Name)
	sess.SetStrategyDetail(birthdayDetail(birthdayWide, win.k, 0, win.peer))
	r.h.Logger.Debug("birthday: session on the winning socket", "peer", offer.Peer.Short(), "addr", win.peer)
	if !r.h.Accepted(sess) {
		sess.CloseWithError(0, "node closed")
	}
	select {
	case <-sess.Done():
	case <-r.h.Context.Done():
		sess.CloseWithError(0, "node closed")
	}
	ln.Close()
	closeAll()
}

// birthdayDialer starts the dialling side's part of the birthday mode for
// the attempt at of dial a. The wide side's race is returned (nil: none;
// the caller closes it); the probe side probes at once (the listener
// primed before its answer).
func (r *Rung) birthdayDialer(ctx context.Context, a *rung.Attempt, at *Attempt) *wideRace {
	peer := r.birthdayTarget(a.Remote)
	if !peer.IsValid() {
		return nil
	}
	switch birthdayRole(a.Local, a.Remote) {
	case birthdayProbe:
		n := r.birthdayProbes()
		if n == 0 {
			return nil
		}
		release, err := r.acquireBirthday()
		if err != nil {
			a.Logger.Debug("birthday: not probing", "peer", a.Peer.Short(), "err", err)
			return nil
		}
		at.Probe(peer.Addr(), n, BirthdayProbeInterval, 0, &r.bstats.packets, release)
	case birthdayWide:
		w, err := r.startWide(ctx, a.Local.Attempt, a.Local.PunchKey, RoleDialer, peer)
		if err != nil {
			a.Logger.Debug("birthday: no wide side", "peer", a.Peer.Short(), "err", err)
			return nil
		}
		return w
	}
	return nil
}

// dialWinner dials the peer's session from a wide dialler's winning
// socket, on a transport of its own that closes with the session (or at
// once, when the dial fails).
func (r *Rung) dialWinner(ctx context.Context, a *rung.Attempt, win wideWin) (*stream.Session, error) {
	tr := &quic.Transport{Conn: win.conn}
	closeAll := func() {
		tr.Close()
		r.closeWinner(win.conn)
	}
	sess, err := stream.Dial(ctx, tr, win.peer, a.Key, a.Peer, a.Session)
	if err != nil {
		closeAll()
		return nil, err
	}
	sess.SetStrategyDetail(birthdayDetail(birthdayWide, win.k, 0, win.peer))
	r.h.Go(func() {
		select {
		case <-sess.Done():
		case <-r.h.Context.Done():
			sess.CloseWithError(0, "node closed")
		}
		closeAll()
	})
	return sess, nil
}

// birthdaySlack is what Patience adds for the probe side's timers and the
// winner's QUIC handshake beyond its round trip.
const birthdaySlack = 150 * time.Millisecond

// Patience asks the forwarding rungs to wait for the birthday mode when it
// runs for dial a (rung.Patient): the probe side starts about one
// introduction after the dial (a listener's answer, or the dialler's
// primers), sends its probes BirthdayProbeInterval apart, and a hit needs
// a round trip for its pong and one for the QUIC handshake on the winning
// pair; intro stands in for the peers' round trip. Without the wait the
// relay joins at the adaptive delay (400 ms on a short path) when only
// about half the probes are out, and a dial that the probes would have
// made direct stays relayed (the node does not move a relayed session
// onto a late hit). 0: the mode does not run for a (the peer's answer
// does not say it runs its part, candidate.PeerInfo.Birthday), or this
// node's slot is taken by another attempt.
func (r *Rung) Patience(a *rung.Attempt, intro time.Duration) time.Duration {
	if !a.Remote.Birthday {
		// The peer does not run its part (its mode is off, its slot is
		// taken, it skipped the punch, or it predates the field): no
		// probe will cross, and the relay need not wait.
		return 0
	}
	if a.Local.Move || a.Remote.Move || !r.birthdayTarget(a.Remote).IsValid() || len(r.bday) == cap(r.bday) {
		return 0
	}
	var probes int
	switch birthdayRole(a.Local, a.Remote) {
	case birthdayProbe:
		probes = r.birthdayProbes()
	case birthdayWide:
		if r.birthdaySockets() > 0 {
			// The peer's own limit is not in its answer: the default.
			probes = DefaultBirthdayProbes
		}
	}
	if probes == 0 {
		return 0
	}
	return 3*intro + birthdayPrimeTime + time.Duration(probes)*BirthdayProbeInterval + birthdaySlack
}
