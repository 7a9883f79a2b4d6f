package relay

import (
	"context"
	"errors"
	"sync"
	"time"
)

// helloGate serializes the HELLOs of one race of link transports. The
// relay keeps one link per peer ID, the newest: when two transports of a
// race both said HELLO, the second replaced the first at the relay (ERROR
// replaced) while the client may have kept the first and closed the
// second, leaving the node with no link at all (and, since a replaced
// link does not reconnect, for good). Through the gate a transport says
// HELLO only while no other one's HELLO is waiting for its answer, and
// not at all once one was welcomed.
//
// When the race's first transport is UDP (first is set), a later one that
// is ready first waits up to grace for it to take its turn or end (so it
// says HELLO after the first's): a node whose UDP works but lost a packet
// of the QUIC handshake (its retransmission comes about when the TCP
// attempt starts) links over UDP as designed, not over TCP for as long as
// the link lasts.
type helloGate struct {
	turn chan struct{} // holds a token while a HELLO waits for its answer
	won  bool          // guarded by turn

	first     chan struct{} // closed when the first transport holds the turn for its HELLO, or ended; nil: no wait
	firstOnce sync.Once
	grace     time.Duration
}

func newHelloGate() *helloGate { return &helloGate{turn: make(chan struct{}, 1)} }

// waitFirst makes later transports wait up to grace for the first.
func (g *helloGate) waitFirst(grace time.Duration) {
	g.first, g.grace = make(chan struct{}), grace
}

// firstDone says the first transport holds the turn for its HELLO, or
// ended.
func (g *helloGate) firstDone() {
	if g != nil && g.first != nil {
		g.firstOnce.Do(func() { close(g.first) })
	}
}

// errRaceLost ends a link attempt whose race another transport won
// before it said HELLO.
var errRaceLost = errors.New("relay: another transport linked first")

// hello runs say (a link's HELLO and its answer) in its turn: it fails
// with errRaceLost if another link of the race was welcomed. first: the
// link is the race's first transport. A nil gate runs say at once.
func (g *helloGate) hello(ctx context.Context, first bool, say func() error) error {
	if g == nil {
		return say()
	}
	if !first && g.first != nil {
		t := time.NewTimer(g.grace)
		select {
		case <-g.first:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Stop()
	}
	select {
	case g.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-g.turn }()
	if first {
		// Only now, with the turn held: a later transport let through
		// before would race the first for the turn and might say its
		// HELLO ahead of it.
		g.firstDone()
	}
	if g.won {
		return errRaceLost
	}
	err := say()
	if err == nil {
		g.won = true
	}
	return err
}
