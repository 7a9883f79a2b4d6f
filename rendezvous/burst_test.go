package rendezvous

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// TestConnectBurst: a client that asks for many introductions at once
// (200 Connects to a peer that is not registered, more than the server's
// send queue holds) gets an answer to each, a named error, and stays
// registered: answers to a client's own requests hold back its next
// requests rather than closing it as a slow reader.
func TestConnectBurst(t *testing.T) {
	for _, name := range []string{"quic", "tcp"} {
		t.Run(name, func(t *testing.T) {
			rs := startTestServer(t, ServerConfig{Logger: testLogger(t, "srv")})
			var opts []clientOpt
			if name == "tcp" {
				opts = append(opts, forceTCP)
			}
			c := startClient(t, "A", mustKey(t), []ServerAddr{rs.ServerAddr()}, newTransport(t), opts...)
			ghost := mustKey(t).ID()
			ctx := testCtx(t, 20*time.Second)
			var wg sync.WaitGroup
			errs := make(chan error, 200)
			for range 200 {
				wg.Go(func() {
					_, err := c.Connect(ctx, ghost, PeerInfo{})
					errs <- err
				})
			}
			wg.Wait()
			close(errs)
			counts := map[string]int{}
			for err := range errs {
				switch {
				case errors.Is(err, ErrUnknownPeer):
					counts["unknown peer"]++
				case errors.Is(err, ErrBusy): // ErrRateLimited too
					counts["busy"]++
				default:
					counts[errString(err)]++
				}
			}
			t.Logf("answers: %v", counts)
			if counts["unknown peer"] == 0 || counts["unknown peer"]+counts["busy"] != 200 {
				t.Errorf("answers %v, want unknown peer or busy (a limit) for each of 200", counts)
			}
			// Still registered: the same connection answers a Connect.
			if _, err := c.Connect(testCtx(t, 5*time.Second), ghost, PeerInfo{}); !errors.Is(err, ErrUnknownPeer) && !errors.Is(err, ErrBusy) {
				t.Errorf("after the burst: %v", err)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}
