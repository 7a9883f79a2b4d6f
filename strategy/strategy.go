// Package strategy defines how reach tries to reach a peer: the Strategy
// interface that each rung of the connectivity ladder implements (direct,
// upnp, holepunch, supernode, relay), and Race, which runs a ladder
// Happy-Eyeballs style and returns the first session that works.
//
// The ladder is always an explicit []Entry built by the caller; strategies
// never register themselves.
package strategy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// Attempt is what a strategy needs to connect to one peer. Strategies must
// not modify it; Race shares one Attempt between all of them.
type Attempt struct {
	// Key is this node's key, proved in every handshake.
	Key *identity.Key
	// Peer is the peer being dialled; sessions must prove its key.
	Peer identity.PeerID
	// Socket is the node's one UDP socket (QUIC transport, STUN, punching).
	Socket *sock.Socket
	// Local is what this side told the peer in the introduction (its
	// candidates, the punch key); Remote is what the peer answered.
	Local, Remote rendezvous.PeerInfo
	// Session configures the sessions strategies make.
	Session stream.Config
	// Logger receives debug logs. Nil discards them.
	Logger *slog.Logger
}

func (a *Attempt) logger() *slog.Logger {
	if a == nil || a.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return a.Logger
}

// Strategy is one way to reach a peer.
//
// Connect tries to make a session with a.Peer. It must return promptly once
// ctx is done (with an error wrapping ctx.Err() if it gave up because of
// it), and must close everything it opened unless it returns a session:
// on error the session is nil, and on success the caller owns the session.
// Connect must be safe to call concurrently with other strategies' Connect
// on the same Attempt.
type Strategy interface {
	// Name is a short lowercase name for logs, metrics and
	// Session.Strategy, e.g. "direct".
	Name() string
	Connect(ctx context.Context, a *Attempt) (*stream.Session, error)
}

// Entry is one rung of a ladder.
type Entry struct {
	Strategy Strategy
	// HeadStart is how long Race lets this strategy run before it starts
	// the next entry. The next entry starts earlier if this one fails
	// (earlier entries may still be running). Zero starts the next entry
	// at once.
	// The last entry's HeadStart is unused.
	HeadStart time.Duration
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
	cands := make([]candidate[*stream.Session], len(ladder))
	for i, e := range ladder {
		st := e.Strategy
		name := st.Name()
		cands[i] = candidate[*stream.Session]{
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
				return s, err
			},
		}
	}
	s, winner, err := raceCore(ctx, cands, log)
	if err != nil {
		return nil, "", err
	}
	s.SetStrategy(winner)
	log.Debug("strategy: won", "strategy", winner, "peer", a.Peer.Short(), "remote", s.RemoteAddr())
	return s, winner, nil
}

// candidate is one entry of the generic race.
type candidate[T io.Closer] struct {
	name      string
	headStart time.Duration
	run       func(ctx context.Context) (T, error)
}
