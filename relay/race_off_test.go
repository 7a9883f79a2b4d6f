//go:build !race

package relay_test

// raceEnabled: the race detector slows tests down; floods are smaller.
const raceEnabled = false
