package relay

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestByteQueue: bytes come out in order and intact whatever the sizes of
// the writes and reads, across chunk edges; a drained queue holds no
// chunk; reset drops everything.
func TestByteQueue(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var q byteQueue
	var in, out []byte
	sizes := []int{0, 1, 7, queueChunk - 1, queueChunk, queueChunk + 1, 3 * queueChunk, 16 << 10}
	for round := range 2000 {
		if rng.IntN(2) == 0 {
			p := make([]byte, sizes[rng.IntN(len(sizes))])
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			q.write(p)
			in = append(in, p...)
		} else {
			b := make([]byte, sizes[rng.IntN(len(sizes))])
			n := q.read(b)
			if want := min(len(b), len(in)-len(out)); n != want {
				t.Fatalf("round %d: read %d, want %d", round, n, want)
			}
			out = append(out, b[:n]...)
		}
		if q.Len() != len(in)-len(out) {
			t.Fatalf("round %d: Len %d, want %d", round, q.Len(), len(in)-len(out))
		}
		if q.Len() == 0 && len(q.chunks) != 0 {
			t.Fatalf("round %d: a drained queue holds %d chunks", round, len(q.chunks))
		}
		if max := (q.Len()+queueChunk-1)/queueChunk + 1; len(q.chunks) > max {
			t.Fatalf("round %d: %d bytes in %d chunks", round, q.Len(), len(q.chunks))
		}
	}
	rest := make([]byte, q.Len())
	out = append(out, rest[:q.read(rest)]...)
	if !bytes.Equal(in, out) {
		t.Fatalf("%d bytes in, %d out: not the same bytes", len(in), len(out))
	}
	q.write(make([]byte, 100))
	q.reset()
	if q.Len() != 0 || len(q.chunks) != 0 || q.read(make([]byte, 10)) != 0 {
		t.Fatal("reset left bytes")
	}
}

// BenchmarkByteQueue: a bulk transfer's pattern, 16 KB records in and
// 32 KB reads out, with the reader one record behind: no allocation.
func BenchmarkByteQueue(b *testing.B) {
	var q byteQueue
	rec := make([]byte, 16<<10)
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	q.write(rec)
	for range b.N {
		q.write(rec)
		q.read(buf[:len(rec)])
	}
}
