package reachlab

import (
	"testing"
	"time"
)

// pollEvery is how often WaitFor checks its condition: well below the
// timings the lab tests assert, cheap for the conditions they poll.
const pollEvery = 10 * time.Millisecond

// WaitFor checks cond every 10 ms until it holds or d has passed, and
// reports whether it held. It is for state that changes without an event
// to wait on (a node's status, a server's list, a daemon's log).
func WaitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// MustWaitFor is WaitFor that fails the test, naming what, when cond
// does not hold within d.
func MustWaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !WaitFor(d, cond) {
		t.Fatalf("%s: not within %v", what, d)
	}
}
