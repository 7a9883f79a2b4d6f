package e2e_test

import (
	"slices"
	"testing"
	"time"

	"github.com/reachp2p/reach/stream"
)

// pairedBytes is what one transfer of a paired iteration moves.
const pairedBytes = 64 << 20

// pairedPath is a session that benchPairedPaths measures; the one named
// "direct" is the reference the others are divided by.
type pairedPath struct {
	name string
	sess *stream.Session
	got  <-chan copyResult // what the receiving end read
}

// benchPairedPaths moves pairedBytes over every path once per iteration,
// the order rotating between iterations so that no path always follows
// another, and reports per path the median of its per-iteration MB/s and
// the median of its per-iteration ratio to the direct path's MB/s.
// Interleaving puts each ratio's two transfers within seconds of each
// other, so a neighbour's load or the machine's drift weighs on both.
func benchPairedPaths(b *testing.B, paths []pairedPath) {
	ref := slices.IndexFunc(paths, func(p pairedPath) bool { return p.name == "direct" })
	if ref < 0 {
		b.Fatal("paired: no direct path")
	}
	rates := make([][]float64, len(paths))
	for i := range b.N {
		for k := range paths {
			j := (i + k) % len(paths)
			start := time.Now()
			copyN(b, paths[j].sess, paths[j].got, pairedBytes)
			rates[j] = append(rates[j], pairedBytes/1e6/time.Since(start).Seconds())
		}
	}
	for j, p := range paths {
		b.ReportMetric(median(rates[j]), p.name+"-MB/s")
		if j == ref {
			continue
		}
		ratios := make([]float64, b.N)
		for i := range b.N {
			ratios[i] = rates[j][i] / rates[ref][i]
		}
		b.ReportMetric(median(ratios), p.name+"/direct")
		b.Logf("%s/direct per iteration: %.2f", p.name, ratios)
	}
}
