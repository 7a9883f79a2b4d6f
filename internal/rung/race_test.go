package rung

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/stream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fakeConn is a closable result for raceCore tests.
type fakeConn struct {
	name   string
	closed atomic.Bool
}

func (c *fakeConn) Close() error { c.closed.Store(true); return nil }

// fake is a scripted candidate: after delay it succeeds (err == nil) or
// fails; if stubborn, it ignores cancellation and finishes anyway.
type fake struct {
	name      string
	delay     time.Duration
	err       error
	stubborn  bool
	started   atomic.Int64 // UnixNano of the start, 0 if never started
	cancelled atomic.Bool
	conn      *fakeConn
}

func (f *fake) candidate(headStart time.Duration) contender[*fakeConn] {
	f.conn = &fakeConn{name: f.name}
	return contender[*fakeConn]{
		name:      f.name,
		headStart: headStart,
		run: func(ctx context.Context) (*fakeConn, error) {
			f.started.Store(time.Now().UnixNano())
			t := time.NewTimer(f.delay)
			defer t.Stop()
			if f.stubborn {
				<-t.C
			} else {
				select {
				case <-t.C:
				case <-ctx.Done():
					f.cancelled.Store(true)
					return nil, fmt.Errorf("%s: %w", f.name, ctx.Err())
				}
			}
			if f.err != nil {
				return nil, f.err
			}
			return f.conn, nil
		},
	}
}

func (f *fake) startedAfter(t0 time.Time) time.Duration {
	ns := f.started.Load()
	if ns == 0 {
		return -1
	}
	return time.Unix(0, ns).Sub(t0)
}

func race(t *testing.T, ctx context.Context, cands ...contender[*fakeConn]) (*fakeConn, string, error) {
	t.Helper()
	if ctx == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
	}
	return raceCore(ctx, cands, testLogger(t))
}

func TestPreferredWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// a finishes within its head start: b never starts.
		a := &fake{name: "a", delay: 20 * time.Millisecond}
		b := &fake{name: "b"}
		c, name, err := race(t, nil, a.candidate(time.Second), b.candidate(0))
		if err != nil || name != "a" || c != a.conn {
			t.Fatalf("race = %v %q %v, want a", c, name, err)
		}
		if b.started.Load() != 0 {
			t.Error("b started although a won within its head start")
		}
		if a.conn.closed.Load() {
			t.Error("winner closed")
		}

		// Both running, both would succeed: the first to finish (a) wins and
		// b is cancelled.
		a = &fake{name: "a", delay: 50 * time.Millisecond}
		b = &fake{name: "b", delay: 300 * time.Millisecond}
		_, name, err = race(t, nil, a.candidate(10*time.Millisecond), b.candidate(0))
		if err != nil || name != "a" {
			t.Fatalf("race = %q %v, want a", name, err)
		}
		if b.started.Load() == 0 || !b.cancelled.Load() {
			t.Errorf("b started=%v cancelled=%v, want both", b.started.Load() != 0, b.cancelled.Load())
		}
	})
}

func TestHeadStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// a hangs: b starts after a's head start, not before, and wins.
		a := &fake{name: "a", delay: time.Hour}
		b := &fake{name: "b", delay: 10 * time.Millisecond}
		t0 := time.Now()
		_, name, err := race(t, nil, a.candidate(150*time.Millisecond), b.candidate(0))
		if err != nil || name != "b" {
			t.Fatalf("race = %q %v, want b", name, err)
		}
		if d := b.startedAfter(t0); d != 150*time.Millisecond {
			t.Errorf("b started after %v, want a's head start, 150ms", d)
		}
		if !a.cancelled.Load() {
			t.Error("a not cancelled")
		}
	})
}

func TestFastFailureStartsNext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := &fake{name: "a", delay: 10 * time.Millisecond, err: errors.New("no route")}
		b := &fake{name: "b", delay: 10 * time.Millisecond, err: errors.New("refused")}
		c := &fake{name: "c", delay: 10 * time.Millisecond}
		t0 := time.Now()
		_, name, err := race(t, nil, a.candidate(5*time.Second), b.candidate(5*time.Second), c.candidate(0))
		if err != nil || name != "c" {
			t.Fatalf("race = %q %v, want c", name, err)
		}
		if d := c.startedAfter(t0); d != 20*time.Millisecond {
			t.Errorf("c started after %v, want at once after a and b failed (20ms)", d)
		}
	})
}

func TestLateLoserClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Both start at once; a wins; b ignores the cancellation and still
		// returns a connection, which the race must close.
		a := &fake{name: "a", delay: 10 * time.Millisecond}
		b := &fake{name: "b", delay: 100 * time.Millisecond, stubborn: true}
		c, name, err := race(t, nil, a.candidate(0), b.candidate(0))
		if err != nil || name != "a" || c.closed.Load() {
			t.Fatalf("race = %q %v (closed %v), want open a", name, err, c.closed.Load())
		}
		if !b.conn.closed.Load() {
			t.Fatal("late loser's connection not closed")
		}
	})
}

func TestAllFail(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errA := errors.New("a broke")
		a := &fake{name: "a", err: errA}
		b := &fake{name: "b", err: fmt.Errorf("dial: %w", &identity.WrongPeerError{})}
		c := &fake{name: "c", delay: 20 * time.Millisecond, err: errors.New("c broke")}
		_, _, err := race(t, nil, a.candidate(time.Second), b.candidate(time.Second), c.candidate(0))
		var re *RaceError
		if !errors.As(err, &re) {
			t.Fatalf("err = %v, want *RaceError", err)
		}
		if len(re.Errs) != 3 || re.Errs[0].Strategy != "a" || re.Errs[1].Strategy != "b" || re.Errs[2].Strategy != "c" {
			t.Fatalf("errs = %v", re.Errs)
		}
		if !errors.Is(err, errA) || !errors.Is(err, identity.ErrWrongPeer) {
			t.Fatalf("errors.Is lost a strategy's error: %v", err)
		}
		var se *Error
		if !errors.As(err, &se) || se.Strategy != "a" {
			t.Fatalf("errors.As *Error = %v", se)
		}
		t.Log(err)
	})
}

func TestContextCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := &fake{name: "a", delay: time.Hour}
		b := &fake{name: "b", delay: time.Hour}
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		t0 := time.Now()
		_, _, err := race(t, ctx, a.candidate(10*time.Millisecond), b.candidate(0))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if d := time.Since(t0); d != 50*time.Millisecond {
			t.Fatalf("returned after %v, want at the cancellation (50ms)", d)
		}
		if !a.cancelled.Load() || !b.cancelled.Load() {
			t.Fatal("strategies not cancelled")
		}

		// A cancelled context with nothing started yet still stops the ladder.
		c := &fake{name: "c", delay: 10 * time.Millisecond, err: errors.New("x")}
		d := &fake{name: "d"}
		ctx, cancel = context.WithCancel(context.Background())
		cancel()
		_, _, err = race(t, ctx, c.candidate(time.Second), d.candidate(0))
		if !errors.Is(err, context.Canceled) || d.started.Load() != 0 {
			t.Fatalf("err = %v, d started %v", err, d.started.Load() != 0)
		}
	})
}

func TestEmptyLadder(t *testing.T) {
	if _, _, err := Race(context.Background(), &Attempt{}, nil); !errors.Is(err, ErrEmptyLadder) {
		t.Fatalf("err = %v", err)
	}
}

// loopbackStrategy dials a real QUIC session to a listener on loopback.
type loopbackStrategy struct {
	Base
	name  string
	addr  netip.AddrPort
	delay time.Duration
	fail  error
	nilOK bool // return (nil, nil): a broken strategy
}

func (s *loopbackStrategy) Name() string { return s.name }

func (s *loopbackStrategy) Connect(ctx context.Context, a *Attempt) (*stream.Session, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if s.fail != nil {
		return nil, s.fail
	}
	if s.nilOK {
		return nil, nil
	}
	return stream.Dial(ctx, a.Socket.Transport(), s.addr, a.Key, a.Peer, a.Session)
}

func TestRaceSessions(t *testing.T) {
	srv, err := sock.Listen(sock.Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := sock.Listen(sock.Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	sk, ck := mustKey(t), mustKey(t)
	ln, err := stream.Listen(srv.Transport(), sk, stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan *stream.Session, 4)
	go func() {
		for {
			s, err := ln.Accept(ctx)
			if err != nil {
				close(accepted)
				return
			}
			accepted <- s
		}
	}()
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srv.Port())
	a := &Attempt{Key: ck, Peer: sk.ID(), Socket: cli, Logger: testLogger(t)}

	fails := &winnerStrategy{loopbackStrategy: loopbackStrategy{name: "fails", fail: errors.New("nope")}}
	works := &winnerStrategy{loopbackStrategy: loopbackStrategy{name: "works", addr: addr}}
	s, name, err := Race(ctx, a, []Entry{
		{Rung: &loopbackStrategy{name: "broken", nilOK: true}, HeadStart: time.Second},
		{Rung: fails, HeadStart: time.Second},
		{Rung: works},
	})
	if err != nil || name != "works" {
		t.Fatalf("Race = %q %v", name, err)
	}
	// Only the winner is told it won (a forwarding rung then puts its
	// path back under the peer), with its session.
	if works.won.Load() != s || fails.won.Load() != nil {
		t.Fatalf("Won: winner told %v (want its session), loser told %v", works.won.Load(), fails.won.Load())
	}
	if s.Strategy() != "works" || s.RemotePeer() != sk.ID() {
		t.Fatalf("session strategy %q peer %v", s.Strategy(), s.RemotePeer())
	}
	// The listener hands over a session once the client's last
	// handshake flight arrived: close ours only after that, or a session
	// closed during the server's half of the handshake is never accepted.
	first := <-accepted
	if first == nil {
		t.Fatal("listener stopped")
	}
	s.Close()
	first.Close()

	// Two real sessions: the loser's is closed by the race.
	late := &stubborn{loopbackStrategy: loopbackStrategy{name: "second", addr: addr}}
	s, name, err = Race(ctx, a, []Entry{
		{Rung: &loopbackStrategy{name: "first", addr: addr}},
		{Rung: late},
	})
	if err != nil || name != "first" {
		t.Fatalf("Race = %q %v", name, err)
	}
	defer s.Close()
	if late.got == nil {
		t.Fatal("the late strategy made no session")
	}
	select {
	case <-late.got.Done():
	case <-time.After(time.Second):
		t.Fatal("the loser's late session was not closed")
	}
	select {
	case <-s.Done():
		t.Fatal("winner closed")
	default:
	}

	// Wrong key everywhere: errors.Is sees it through the RaceError.
	a.Peer = ck.ID()
	_, _, err = Race(ctx, a, []Entry{{Rung: &loopbackStrategy{name: "direct", addr: addr}}})
	if !errors.Is(err, identity.ErrWrongPeer) {
		t.Fatalf("err = %v, want ErrWrongPeer", err)
	}
	cancel()
}

// winnerStrategy records the session Race tells it won with (Winner).
type winnerStrategy struct {
	loopbackStrategy
	won atomic.Pointer[stream.Session]
}

func (w *winnerStrategy) Won(_ *Attempt, s *stream.Session) { w.won.Store(s) }

// stubborn waits until the race cancels it (another rung won), then
// dials anyway with a context that ignores the cancellation, so it always
// finishes last, whatever the machine's load. It records the session it
// returns.
type stubborn struct {
	loopbackStrategy
	got *stream.Session
}

func (s *stubborn) Connect(ctx context.Context, a *Attempt) (*stream.Session, error) {
	<-ctx.Done()
	sess, err := s.loopbackStrategy.Connect(context.WithoutCancel(ctx), a)
	s.got = sess
	return sess, err
}

func mustKey(t *testing.T) *identity.Key {
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
