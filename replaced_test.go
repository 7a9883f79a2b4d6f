package reach_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
)

// TestAcceptReplaced: a second node with the same key takes the
// registration; the first one's Accept fails with reach.ErrReplaced at
// once instead of waiting unaware, and the second is the one reached.
func TestAcceptReplaced(t *testing.T) {
	rs := rbServer(t)
	key := rbKey(t)
	node := func(name string) *reach.Node {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n, err := reach.New(ctx, reach.Config{Key: key, Servers: []string{rs.ConnectString()}, ListenAddr: rbLoopback,
			Logger: natlab.TestLogger(t).With("n", name)})
		if err != nil {
			t.Fatalf("node %s: %v", name, err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	first := node("first")
	accepted := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := first.Accept(ctx)
		accepted <- err
	}()
	node("second")
	select {
	case err := <-accepted:
		if !errors.Is(err, reach.ErrReplaced) {
			t.Fatalf("first node's Accept: %v, want ErrReplaced", err)
		}
		t.Logf("first node's Accept: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the first node's Accept still waits 10 s after it was replaced")
	}
}
