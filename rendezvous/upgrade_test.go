package rendezvous

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestAbandonedUpgradeReplaces (issue 15, the registration race): a
// client on TCP gives up on its QUIC attempt (its dial timed out on a
// loaded machine), but the attempt's REGISTER reached the server, which
// read it late and replaced the TCP registration with it. That was the
// client's own doing: it registers again and stays dialable, and an
// introduction it had asked for on the replaced registration is asked
// again on the new one and answered. It used to stay offline ("another
// connection registered this peer ID"; seen in TestLimitsFloodHonestServed
// under -race). A replacement with no abandoned attempt before it still
// leaves the client offline.
func TestAbandonedUpgradeReplaces(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	sa := rs.ServerAddr()
	b := startClient(t, "b", mustKey(t), []ServerAddr{sa}, newTransport(t), forceTCP)
	for _, abandoned := range []bool{true, false} {
		ka := mustKey(t)
		a := startClient(t, "a", ka, []ServerAddr{sa}, newTransport(t), forceTCP)
		answerAll(t, a)
		if !abandoned {
			if err := rawRegister(testCtx(t, 5*time.Second), t, newTransport(t), ka, sa); err != nil {
				t.Fatal(err)
			}
			select {
			case <-a.Replaced():
			case <-time.After(5 * time.Second):
				t.Fatal("replaced without an abandoned attempt: the client did not stay offline")
			}
			continue
		}
		// c holds the first introduction until a's registration is
		// replaced; it answers the next.
		c := startClient(t, "c", mustKey(t), []ServerAddr{sa}, newTransport(t), forceTCP)
		first, hold := make(chan struct{}), make(chan struct{})
		var release sync.Once
		var wg sync.WaitGroup
		wg.Go(func() {
			n := 0
			for in := range c.Incoming() {
				if n++; n == 1 {
					close(first)
					<-hold
				}
				in.Accept(PeerInfo{})
			}
		})
		t.Cleanup(func() { release.Do(func() { close(hold) }); c.Close(); wg.Wait() })
		a.mu.Lock()
		tcp := a.conn
		a.mu.Unlock()
		// What the dial does when the QUIC attempt fails after the TCP
		// registration.
		a.finishUpgrade(tcp, dialResult{err: context.DeadlineExceeded})
		res := make(chan error, 1)
		go func() {
			_, err := a.Connect(testCtx(t, 10*time.Second), c.cfg.Key.ID(), PeerInfo{})
			res <- err
		}()
		select {
		case <-first:
		case <-time.After(5 * time.Second):
			t.Fatal("c got no introduction from a")
		}
		// The late REGISTER, on a QUIC connection the client closed. (a
		// registering again may replace it before it is done.)
		if err := rawRegister(testCtx(t, 5*time.Second), t, newTransport(t), ka, sa); err != nil && !errors.Is(err, ErrReplaced) {
			t.Fatal(err)
		}
		release.Do(func() { close(hold) })
		select {
		case err := <-res:
			if err != nil {
				t.Errorf("introduction asked on the replaced registration: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the introduction asked on the replaced registration did not end")
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := b.Connect(testCtx(t, 2*time.Second), ka.ID(), PeerInfo{})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the client is not dialable after its abandoned attempt replaced it: %v", err)
			}
			time.Sleep(300 * time.Millisecond) // within b's introduction rate
		}
	}
}
