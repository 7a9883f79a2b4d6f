package rendezvous

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestTCPParkFlood: 300 TCP registrations (real clients, TCP only) whose
// readers park and wake under pings and introductions at once, 100 of
// them dialling others in a loop; the server stops in the middle. It
// stops within a bound, every introduction that was asked before it
// stopped was answered or failed with a named error, and no goroutine is
// left once the clients are closed.
func TestTCPParkFlood(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("readers park on Linux only (epoll)")
	}
	n, diallers := 300, 100
	if testing.Short() {
		n, diallers = 60, 20
	}
	ignore := goleak.IgnoreCurrent()
	rs := startTestServer(t, ServerConfig{
		IdleTimeout: 6 * time.Second, TCPPark: 10 * time.Millisecond, IntroTimeout: 3 * time.Second,
		Limits: LimitConfig{Disable: true},
	})
	servers := []ServerAddr{rs.ServerAddr()}
	clients := make([]*Client, n)
	var start sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range clients {
		start.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			clients[i] = startClient(t, "c", mustKey(t), servers, nil, forceTCP)
		})
	}
	start.Wait()
	if t.Failed() {
		return
	}
	var answerers sync.WaitGroup
	for _, c := range clients {
		answerers.Go(func() {
			for in := range c.Incoming() {
				in.Accept(PeerInfo{})
			}
		})
	}
	waitFor(t, "most readers to park", func() bool { return rs.Stats().TCPReadersParked >= n*3/4 })

	var (
		stopping   atomic.Int64 // when the server began to stop (UnixNano); 0: not yet
		mu         sync.Mutex
		answered   int
		failed     = map[string]int{}
		unnamed    []error
		waitingReg int // ctx's error after the server began to stop: the request waited for a registration
	)
	named := []error{ErrPeerOffline, ErrTimeout, ErrBusy, ErrServerLost, ErrClosed, ErrReplaced, ErrRejected, ErrUnknownPeer}
	ctx, cancel := context.WithCancel(context.Background())
	var dial sync.WaitGroup
	for i := range diallers {
		dial.Go(func() {
			for ctx.Err() == nil && stopping.Load() == 0 {
				target := clients[rand.IntN(n)].cfg.Key.ID()
				_, err := clients[i].Connect(ctx, target, PeerInfo{})
				mu.Lock()
				switch {
				case err == nil:
					answered++
				case errors.Is(err, context.Canceled) && stopping.Load() != 0:
					waitingReg++
				default:
					ok := false
					for _, e := range named {
						if errors.Is(err, e) {
							failed[e.Error()]++
							ok = true
							break
						}
					}
					if !ok {
						unnamed = append(unnamed, err)
					}
				}
				mu.Unlock()
			}
		})
	}
	maxParked := 0
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		maxParked = max(maxParked, rs.Stats().TCPReadersParked)
	}
	mu.Lock()
	before := answered
	mu.Unlock()
	stopping.Store(time.Now().UnixNano())
	t0 := time.Now()
	rs.Close()
	took := time.Since(t0)
	// Requests that went out before the stop end with it; those that
	// wait for a registration end with ctx.
	time.AfterFunc(2*time.Second, cancel)
	dial.Wait()
	cancel()
	for _, c := range clients {
		c.Close()
	}
	answerers.Wait()
	t.Logf("%d registrations, %d dialling: %d introductions answered (%d before the stop), failed %v, %d waited for a registration after it; at most %d readers parked; the server stopped in %v",
		n, diallers, answered, before, failed, waitingReg, maxParked, took)
	if took > 3*time.Second {
		t.Errorf("the server took %v to stop", took)
	}
	if len(unnamed) > 0 {
		t.Errorf("%d introductions failed without a named error, e.g. %v", len(unnamed), unnamed[0])
	}
	if before < diallers {
		t.Errorf("only %d introductions answered before the stop", before)
	}
	if st := rs.Stats(); st.TCPReadersParked != 0 {
		t.Errorf("%d readers parked after the stop", st.TCPReadersParked)
	}
	goleak.VerifyNone(t, ignore)
}
