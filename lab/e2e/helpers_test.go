package e2e_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// checkEcho dials from one node to another (which runs reachlab.Echo),
// round trips size bytes within ctx and fails the test if that does not
// work. It returns the session.
func checkEcho(t testing.TB, ctx context.Context, from, to *reach.Node, size int) *reach.Session {
	t.Helper()
	sess, err := reachlab.CheckEcho(t, ctx, from, to, size)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// dialEcho is checkEcho for tests that compare dial times: it also
// returns how long the dial (without the transfer) took.
func dialEcho(t testing.TB, ctx context.Context, from, to *reach.Node, size int) (*reach.Session, time.Duration) {
	t.Helper()
	sess, el, err := reachlab.Dial(ctx, from, to)
	if err != nil {
		t.Fatal(err)
	}
	if err := reachlab.RoundTrip(ctx, sess, size); err != nil {
		t.Fatalf("over %s: %v", sess.Strategy(), err)
	}
	return sess, el
}

// sessionsTo counts n's sessions to peer.
func sessionsTo(n *reach.Node, peer identity.PeerID) int {
	k := 0
	for _, s := range n.Sessions() {
		if s.RemotePeer() == peer {
			k++
		}
	}
	return k
}

// closeAndWaitGone closes sess and waits (5s at most) until none of nodes
// has a session left with another of them, so that the next dial starts
// afresh instead of reusing it.
func closeAndWaitGone(t *testing.T, sess *reach.Session, nodes ...*reach.Node) {
	t.Helper()
	sess.CloseWithError(0, "done")
	// Only the sessions among these nodes count: a node may also be in
	// another (parallel) subtest's sessions.
	among := map[identity.PeerID]bool{}
	for _, n := range nodes {
		among[n.ID()] = true
	}
	reachlab.MustWaitFor(t, 5*time.Second, "every session closed", func() bool {
		open := 0
		for _, n := range nodes {
			for _, s := range n.Sessions() {
				if among[s.RemotePeer()] {
					open++
				}
			}
		}
		return open == 0
	})
}

// quietLogger writes warnings and errors to the benchmark's log: a
// benchmark prints its whole log, and the nodes' debug lines would bury
// the figures.
func quietLogger(b *testing.B) *slog.Logger { return natlab.TestLoggerLevel(b, slog.LevelWarn) }

// events collects a node's path events.
type events struct{ ch chan reach.PathEvent }

func newEvents() *events { return &events{ch: make(chan reach.PathEvent, 64)} }

// add is the nodes' OnPathEvent; it never blocks the node (an event
// beyond the 64 buffered is dropped).
func (e *events) add(ev reach.PathEvent) {
	select {
	case e.ch <- ev:
	default:
	}
}

// wait returns the first event of kind within d.
func (e *events) wait(t *testing.T, kind reach.PathEventKind, d time.Duration) reach.PathEvent {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev := <-e.ch:
			t.Logf("path event %s strategy=%q err=%v", ev.Kind, ev.Strategy, ev.Err)
			if ev.Kind == kind {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event within %v", kind, d)
		}
	}
}

// logTap is a logger that writes to t.Log and keeps a copy to search.
type logTap struct {
	t   testing.TB
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logTap) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(p)
	l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// lines returns the logged lines containing every one of subs.
func (l *logTap) lines(subs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, line := range strings.Split(l.buf.String(), "\n") {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

func newLogTap(t testing.TB, name string) (*logTap, *slog.Logger) {
	tap := &logTap{t: t}
	return tap, slog.New(slog.NewTextHandler(tap, &slog.HandlerOptions{Level: slog.LevelDebug})).With("host", name)
}

// cutter returns cut and mend: a firewall rule on a's router that drops
// what comes from b's router (the direct path between the two sites),
// and its removal.
func cutter(t *testing.T, ctx context.Context, a, b *natlab.Site) (cut, mend func()) {
	cut = func() {
		t.Helper()
		if err := a.Router.Block(ctx, b.Router.WAN()); err != nil {
			t.Fatal(err)
		}
	}
	mend = func() {
		t.Helper()
		if err := a.Router.Unblock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return cut, mend
}
