package transfer

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkLoopback moves one file between two nodes on loopback, with the
// transfer package (hashing, verifying, renaming) and as a plain copy on a
// stream of the same session (file to stream to file), interleaved, to
// show what the package costs over the stream itself. No root needed:
//
//	go test -run '^$' -bench BenchmarkLoopback -benchtime 3x ./transfer/
func BenchmarkLoopback(b *testing.B) {
	size := int64(envInt("REACH_BENCH_MB", 256)) << 20
	dir := b.TempDir()
	src := filepath.Join(dir, "f.bin")
	if err := writeRandomFile(src, size); err != nil {
		b.Fatal(err)
	}
	o, err := Prepare(context.Background(), []string{src}, PrepareConfig{})
	if err != nil {
		b.Fatal(err)
	}
	p := newPair(b)
	s := NewSender(SenderConfig{})
	s.Add(o)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan struct{})
	go func() { defer close(served); s.Serve(ctx, p.a) }()
	defer func() { cancel(); <-served }()
	for len(p.a.Sessions()) == 0 { // the accepting side tracks it a moment later
		time.Sleep(time.Millisecond)
	}
	back := p.a.Sessions()[0] // a -> b, for the plain copy
	out := filepath.Join(dir, "out")
	raw := func() {
		go func() {
			st, err := back.OpenStream(ctx)
			if err != nil {
				return
			}
			f, _ := os.Open(src)
			io.CopyBuffer(st, f, make([]byte, ioBuffer))
			f.Close()
			st.CloseWrite()
			io.Copy(io.Discard, st)
			st.Close()
		}()
		st, err := p.b.Accept(ctx)
		if err != nil {
			b.Fatal(err)
		}
		f, _ := os.Create(filepath.Join(out, "raw.bin"))
		n, err := io.CopyBuffer(f, st, make([]byte, ioBuffer))
		f.Close()
		st.Close()
		if err != nil || n != size {
			b.Fatalf("raw: %d bytes, %v", n, err)
		}
	}
	viaTransfer := func() {
		if _, err := ReceiveSession(ctx, p.sess, o.ID, ReceiveConfig{Dir: out}); err != nil {
			b.Fatal(err)
		}
	}
	var tRaw, tTransfer time.Duration
	timed := func(f func(), total *time.Duration) {
		start := time.Now()
		f()
		*total += time.Since(start)
	}
	b.SetBytes(size)
	b.ResetTimer()
	for i := range b.N {
		os.RemoveAll(out)
		os.MkdirAll(out, 0o755)
		if i%2 == 0 {
			timed(raw, &tRaw)
			timed(viaTransfer, &tTransfer)
		} else {
			timed(viaTransfer, &tTransfer)
			timed(raw, &tRaw)
		}
	}
	b.StopTimer()
	mb := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mb(tRaw), "raw-MB/s")
	b.ReportMetric(mb(tTransfer), "transfer-MB/s")
	b.ReportMetric(float64(tRaw)/float64(tTransfer), "transfer/raw")
}
