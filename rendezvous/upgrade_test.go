package rendezvous

import (
	"context"
	"testing"
	"time"
)

// TestAbandonedUpgradeReplaces (issue 15, the registration race): a
// client on TCP gives up on its QUIC attempt (its dial timed out on a
// loaded machine), but the attempt's REGISTER reached the server, which
// read it late and replaced the TCP registration with it. That was the
// client's own doing: it registers again and stays dialable, where it
// used to stay offline ("another connection registered this peer ID";
// seen in TestLimitsFloodHonestServed under -race). A replacement with no
// abandoned attempt before it still leaves the client offline.
func TestAbandonedUpgradeReplaces(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	sa := rs.ServerAddr()
	b := startClient(t, "b", mustKey(t), []ServerAddr{sa}, newTransport(t), forceTCP)
	for _, abandoned := range []bool{true, false} {
		ka := mustKey(t)
		a := startClient(t, "a", ka, []ServerAddr{sa}, newTransport(t), forceTCP)
		answerAll(t, a)
		if abandoned {
			a.mu.Lock()
			tcp := a.conn
			a.mu.Unlock()
			// What the dial does when the QUIC attempt fails after the TCP
			// registration.
			a.finishUpgrade(tcp, dialResult{err: context.DeadlineExceeded})
		}
		// The late REGISTER, on a QUIC connection the client closed.
		if err := rawRegister(testCtx(t, 5*time.Second), t, newTransport(t), ka, sa); err != nil {
			t.Fatal(err)
		}
		if !abandoned {
			select {
			case <-a.Replaced():
			case <-time.After(5 * time.Second):
				t.Fatal("replaced without an abandoned attempt: the client did not stay offline")
			}
			continue
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
