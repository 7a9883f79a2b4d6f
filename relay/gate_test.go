package relay

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestGateFirstSaysHelloFirst: in a race whose first transport is UDP, a
// later transport already waiting at the gate when UDP reaches its HELLO
// does not slip in ahead of it: UDP's HELLO goes first and is welcomed,
// the later one loses the race. (The gate once opened for the later
// transport as UDP reached its HELLO, before UDP took its turn, and the
// two then raced for it.)
func TestGateFirstSaysHelloFirst(t *testing.T) {
	ctx := context.Background()
	for i := range 2000 {
		g := newHelloGate()
		g.waitFirst(10 * time.Second)
		var mu sync.Mutex
		var order []string
		say := func(name string) func() error {
			return func() error {
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
				return nil
			}
		}
		var wg sync.WaitGroup
		wg.Add(1)
		var tlsErr error
		go func() {
			defer wg.Done()
			tlsErr = g.hello(ctx, false, say("tls"))
		}()
		time.Sleep(20 * time.Microsecond) // the later transport waits at the gate
		if err := g.hello(ctx, true, say("udp")); err != nil {
			t.Fatalf("run %d: udp: %v", i, err)
		}
		wg.Wait()
		if len(order) != 1 || order[0] != "udp" || tlsErr != errRaceLost {
			t.Fatalf("run %d: HELLOs said %v, the later transport's %v; want udp's alone, the later errRaceLost", i, order, tlsErr)
		}
	}
}
