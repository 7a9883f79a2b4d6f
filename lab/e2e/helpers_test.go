package e2e_test

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/stream"
)

func rbCheckDial(t *testing.T, from, to *reach.Node) *stream.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := reachlab.CheckEcho(t, ctx, from, to, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

func rbSessionsTo(n *reach.Node, peer identity.PeerID) int {
	k := 0
	for _, s := range n.Sessions() {
		if s.RemotePeer() == peer {
			k++
		}
	}
	return k
}

func rbWait(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
