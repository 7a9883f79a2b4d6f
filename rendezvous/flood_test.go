package rendezvous

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// TestIntroFloodKeepsTarget: 20 fresh identities send 16 introductions
// each to one peer at once (issue 15: with a 64-frame send queue the
// server used to disconnect the *target* as a slow reader). Now the
// flood's excess is refused (ErrBusy from the server, or ErrRejected from
// the target's client when its own queue is full), the target stays on
// its registration, and an honest peer is introduced to it afterwards.
func TestIntroFloodKeepsTarget(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	servers := []ServerAddr{rs.ServerAddr()}
	kt := mustKey(t)
	target := startClient(t, "target", kt, servers, newTransport(t))
	answerAll(t, target)
	before := rs.Stats()

	var hostile []*Client
	for range 20 {
		hostile = append(hostile, startClient(t, "hostile", mustKey(t), servers, newTransport(t)))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	answered, busy, rejected, other := 0, 0, 0, 0
	for _, h := range hostile {
		for range 16 {
			wg.Go(func() {
				_, err := h.Connect(testCtx(t, 10*time.Second), kt.ID(), PeerInfo{})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					answered++
				case errors.Is(err, ErrBusy):
					busy++
				case errors.Is(err, ErrRejected):
					rejected++ // the target's own client: its queue of introductions is full
				default:
					other++
					t.Logf("flood introduction: %v", err)
				}
			})
		}
	}
	wg.Wait()
	t.Logf("flood of 320: %d answered, %d refused by the server (busy), %d by the target, %d other", answered, busy, rejected, other)
	if other > 0 {
		t.Errorf("%d introductions failed with something other than ErrBusy or ErrRejected", other)
	}
	st := rs.Stats()
	if st.Replaced != before.Replaced || target.Current().IsZero() {
		t.Fatalf("target lost its registration (replaced %d -> %d, current %v)", before.Replaced, st.Replaced, target.Current())
	}
	if st.IntrosRefused != uint64(busy) {
		t.Errorf("server counted %d refused, diallers saw %d", st.IntrosRefused, busy)
	}
	honest := startClient(t, "honest", mustKey(t), servers, newTransport(t))
	if _, err := honest.Connect(testCtx(t, 5*time.Second), kt.ID(), PeerInfo{}); err != nil {
		t.Fatalf("honest introduction after the flood: %v", err)
	}
}
