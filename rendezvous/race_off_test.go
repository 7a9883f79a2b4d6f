//go:build !race

package rendezvous

// raceEnabled: under the race detector allocation counts are not the
// program's (sync.Pool drops a quarter of what it is given, for one),
// so the tests that count allocations skip that part.
const raceEnabled = false
