package reach_test

import (
	"context"
	"crypto/rand"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
)

// TestIdlePathStays: a direct session (with the relay there to fall back
// to) that carried a transfer and then sits idle stays on its direct
// path: silence between keepalives is not a dead path, and neither is a
// receiver's last acknowledgements going unanswered. (It fell back and
// came back every 3 s before.)
func TestIdlePathStays(t *testing.T) {
	if testing.Short() {
		t.Skip("idles for 8 s")
	}
	server := closeServer(t)
	var mu sync.Mutex
	var events []reach.PathEvent
	node := func(name string) *reach.Node {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n, err := reach.New(ctx, reach.Config{Servers: []string{server}, ListenAddr: rbLoopback,
			Logger: natlab.TestLogger(t).With("n", name),
			OnPathEvent: func(e reach.PathEvent) {
				mu.Lock()
				events = append(events, e)
				mu.Unlock()
			}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Abort() })
		return n
	}
	lis, dia := node("lis"), node("dial")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan int64, 1)
	go func() {
		c, err := lis.Accept(ctx)
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	c, err := dia.Dial(ctx, lis.ID())
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Session().Strategy(); s != reach.StrategyDirect {
		t.Fatalf("strategy %q, want direct", s)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if n := <-got; n != int64(len(data)) {
		t.Fatalf("the listener got %d bytes, want %d", n, len(data))
	}
	time.Sleep(8 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	for _, e := range events {
		t.Errorf("path event while idle: %s strategy=%q err=%v", e.Kind, e.Strategy, e.Err)
	}
	if s := c.Session().Strategy(); s != reach.StrategyDirect || !c.Session().RemoteAddr().IsValid() {
		t.Errorf("after 8 s idle: strategy %q, path %v; want direct", s, c.Session().RemoteAddr())
	}
}
