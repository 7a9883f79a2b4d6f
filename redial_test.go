package reach_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
)

// TestRedialSameKey: four processes in turn (here, nodes) with the same
// key each dial the same listener, each closing before the next starts:
// every dial succeeds at once and echoes (the second took 10 s and failed
// before: the listener put the new node's checks on the old session's
// path).
func TestRedialSameKey(t *testing.T) {
	server := closeServer(t)
	key, _ := reach.GenerateKey()
	mk := func(name string, k *reach.Key) *reach.Node {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n, err := reach.New(ctx, reach.Config{Servers: []string{server}, ListenAddr: rbLoopback, Key: k,
			Logger: natlab.TestLogger(t).With("n", name)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Abort() })
		return n
	}
	lis := mk("lis", nil)
	go func() {
		for {
			c, err := lis.Accept(context.Background())
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	for i := range 4 {
		d := mk("dial", key)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		start := time.Now()
		c, err := d.Dial(ctx, lis.ID())
		cancel()
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		t.Logf("dial %d: %s in %v", i, c.Session().Strategy(), time.Since(start))
		c.Write([]byte("hi"))
		buf := make([]byte, 2)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
			t.Fatalf("dial %d: echo %q, %v", i, buf, err)
		}
		c.Close()
		d.Close()
	}
}
