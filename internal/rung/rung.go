// Package rung defines a rung of reach's connectivity ladder: the Rung
// interface each rung's folder implements (everything a rung does for its
// node: what it adds to offers, what it does when the node is introduced,
// how it connects, its cleanup), the Host a node lends its rungs, Race,
// which runs one dial's ladder Happy-Eyeballs style and returns the first
// session that works, and Plan, the per-dial policy applied before it.
//
// The ladder is an explicit table (package internal/ladder); rungs never
// register themselves.
package rung

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/stream"
)

// Attempt is what a rung needs to connect to one peer. Rungs must not
// modify it; Race shares one Attempt between all of them.
type Attempt struct {
	// Key is this node's key, proved in every handshake.
	Key *identity.Key
	// Peer is the peer being dialled; sessions must prove its key.
	Peer identity.PeerID
	// Socket is the node's one UDP socket (QUIC transport, STUN, punching).
	Socket *sock.Socket
	// Local is what this side told the peer in the introduction (its
	// candidates, the punch key); Remote is what the peer answered.
	Local, Remote candidate.PeerInfo
	// Session configures the sessions strategies make.
	Session stream.Config
	// Logger receives debug logs. Nil discards them.
	Logger *slog.Logger
	// Result, if set, is told what each rung Race started came to: err
	// nil for a session (the winner's, or a loser's that Race closes),
	// cancelled when the race or its ctx ended before the rung did (it
	// lost). It must not block. The node counts it (Node.Metrics).
	Result func(strategy string, err error, cancelled bool)
}

func (a *Attempt) logger() *slog.Logger {
	if a == nil || a.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return a.Logger
}

// Entry is one rung of a dial's ladder.
type Entry struct {
	Rung Rung
	// HeadStart is how long Race lets this rung run before it starts
	// the next entry. The next entry starts earlier if this one fails
	// (earlier entries may still be running). Zero starts the next entry
	// at once.
	// The last entry's HeadStart is unused.
	HeadStart time.Duration
	// Forwards marks a rung whose path goes through a third party (the
	// hosted relay, TURN, a supernode): it joins the race after the
	// forwarding delay (see Plan), and the node keeps looking for a
	// better path while a session runs on it.
	Forwards bool
}

// Named errors. Test with errors.Is.
var (
	// ErrEmptyLadder: Race was given no strategies.
	ErrEmptyLadder = errors.New("strategy: empty ladder")
	// ErrNoSession: a strategy returned neither a session nor an error.
	ErrNoSession = errors.New("strategy: strategy returned no session and no error")
)

// Error is one strategy's failure.
type Error struct {
	Strategy string
	Err      error
}

func (e *Error) Error() string { return e.Strategy + ": " + e.Err.Error() }

// Unwrap returns the strategy's error.
func (e *Error) Unwrap() error { return e.Err }

// RaceError is returned by Race when every strategy failed. It unwraps to
// each strategy's *Error, so errors.Is(err, identity.ErrWrongPeer) reports
// whether any strategy reached an impostor.
type RaceError struct {
	// Errs holds one entry per strategy that was started, in ladder order.
	Errs []*Error
}

func (e *RaceError) Error() string {
	var b strings.Builder
	b.WriteString("strategy: all strategies failed")
	for i, err := range e.Errs {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

// Unwrap returns the strategies' errors.
func (e *RaceError) Unwrap() []error {
	errs := make([]error, len(e.Errs))
	for i, err := range e.Errs {
		errs[i] = err
	}
	return errs
}

// Race runs the ladder and returns the first session made, the name of the
// strategy that made it (also recorded with Session.SetStrategy), or an
// error.
//
// Like net.Dialer's Happy Eyeballs, entries start in order: entry i+1
// starts when entry i has run for its HeadStart, or at once when entry i
// fails. The first success wins and the other strategies
// are cancelled; Race returns only after all of them have returned, closing
// any session a loser made anyway, so nothing it started outlives it.
//
// When every strategy fails the error is a *RaceError. When ctx ends first
// the error wraps ctx.Err() (and the *RaceError of the strategies that had
// failed, if any).
func Race(ctx context.Context, a *Attempt, ladder []Entry) (*stream.Session, string, error) {
	log := a.logger()
	cands := make([]contender[*stream.Session], len(ladder))
	for i, e := range ladder {
		st := e.Rung
		name := st.Name()
		cands[i] = contender[*stream.Session]{
			name:      name,
			headStart: e.HeadStart,
			run: func(ctx context.Context) (*stream.Session, error) {
				log.Debug("strategy: start", "strategy", name, "peer", a.Peer.Short())
				s, err := st.Connect(ctx, a)
				switch {
				case err != nil && s != nil:
					s.Close() // contract violation; do not leak it
					s = nil
				case err == nil && s == nil:
					err = ErrNoSession
				}
				if err != nil {
					log.Debug("strategy: failed", "strategy", name, "err", err)
				}
				if a.Result != nil {
					a.Result(name, err, err != nil && ctx.Err() != nil)
				}
				return s, err
			},
		}
	}
	s, winner, err := raceCore(ctx, cands, log)
	if err != nil {
		return nil, "", err
	}
	s.SetStrategy(winner)
	for _, e := range ladder {
		if w, ok := e.Rung.(Winner); ok && e.Rung.Name() == winner {
			w.Won(a, s)
		}
	}
	log.Debug("strategy: won", "strategy", winner, "peer", a.Peer.Short(), "remote", s.RemoteAddr())
	return s, winner, nil
}

// Winner is a forwarding rung that puts its own path back under the peer
// when its session wins the race. Forwarding rungs that race for one peer
// share the peer's virtual address, and the last to start set its
// forwarded path; the loser's handshake may have travelled the winner's
// path, and without Won the winner's session would run on the loser's.
type Winner interface {
	Won(a *Attempt, s *stream.Session)
}

// contender is one entry of the generic race.
type contender[T io.Closer] struct {
	name      string
	headStart time.Duration
	run       func(ctx context.Context) (T, error)
}
