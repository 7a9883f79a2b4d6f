package e2e_test

import (
	"context"
	"crypto/sha256"
	"hash"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reachp2p/reach"
)

// pacedTransfer is one stream of size pseudo-random bytes, sent at
// moveRate so that it is still running through every path change a test
// makes, and hashed at both ends.
type pacedTransfer struct {
	size     int64
	received atomic.Int64
	got      chan []byte // the receiver's SHA-256 (nil if it failed)
	sent     chan error
	want     hash.Hash
}

// receiveOn starts taking the next stream n accepts and hashing it.
func receiveOn(t *testing.T, ctx context.Context, n *reach.Node, size int64) *pacedTransfer {
	x := &pacedTransfer{size: size, got: make(chan []byte, 1), sent: make(chan error, 1), want: sha256.New()}
	go func() {
		st, err := n.Accept(ctx)
		if err != nil {
			t.Errorf("accept: %v", err)
			x.got <- nil
			return
		}
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(h, counter{&x.received}), st); err != nil {
			t.Errorf("receiving: %v after %d bytes", err, x.received.Load())
		}
		x.got <- h.Sum(nil)
	}()
	return x
}

// send writes the bytes on c (64 KiB writes, paced), then half-closes.
func (x *pacedTransfer) send(c *reach.Stream, seed byte) {
	go func() {
		data := rand.NewChaCha8([32]byte{seed})
		buf := make([]byte, 64<<10)
		start := time.Now()
		for off := int64(0); off < x.size; off += int64(len(buf)) {
			if ahead := time.Duration(float64(off)/moveRate*float64(time.Second)) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
			data.Read(buf)
			x.want.Write(buf)
			if _, err := c.Write(buf); err != nil {
				x.sent <- err
				return
			}
		}
		x.sent <- c.CloseWrite()
	}()
}

// check waits for both ends and fails unless every byte arrived intact.
func (x *pacedTransfer) check(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := <-x.sent; err != nil {
		t.Fatalf("sending: %v after %d bytes received", err, x.received.Load())
	}
	select {
	case h := <-x.got:
		if string(h) != string(x.want.Sum(nil)) {
			t.Fatalf("SHA-256 differs (%d of %d bytes received)", x.received.Load(), x.size)
		}
	case <-ctx.Done():
		t.Fatalf("stream did not finish: %d of %d bytes", x.received.Load(), x.size)
	}
}

// movedTo waits up to d for a PathMoved event to strategy.
func movedTo(t *testing.T, ev *events, x *pacedTransfer, d time.Duration, strategy string) reach.PathEvent {
	t.Helper()
	start := time.Now()
	for {
		e := ev.wait(t, reach.PathMoved, d-time.Since(start))
		if e.Strategy == strategy {
			t.Logf("moved to %s (%v) %v after the change, %d MiB received", e.Strategy, e.Path, time.Since(start).Round(time.Millisecond), x.received.Load()>>20)
			return e
		}
	}
}
