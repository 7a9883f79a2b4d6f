package reachlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach"
)

// Echo accepts every stream n is offered, until the test ends or n
// closes, and writes back what it reads; at the reader's EOF it closes its
// write side, so the dialler's read ends too. Errors on the echo side are
// logged, not failed: tests that break a path on purpose cause them, and
// the dialler's check (RoundTrip) is what says whether the bytes came back
// intact. When the test ends Echo closes the streams still open and waits
// for its goroutines. Call it once per node, and not on a node whose
// streams the test accepts itself.
func Echo(t testing.TB, n *reach.Node) {
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		open   = map[*reach.Stream]bool{}
		closed bool
	)
	wg.Go(func() {
		for {
			c, err := n.Accept(ctx)
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			open[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(open, c)
					mu.Unlock()
					c.Close()
				}()
				k, err := io.Copy(c, c)
				if err == nil {
					err = c.CloseWrite()
				}
				if err != nil {
					t.Logf("echo on %s: after %d bytes: %v", n.ID().Short(), k, err)
				}
			})
		}
	})
	t.Cleanup(func() {
		cancel()
		mu.Lock()
		closed = true
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// Dial dials a session from one node to another and says how long that
// took.
func Dial(ctx context.Context, from, to *reach.Node) (*reach.Session, time.Duration, error) {
	start := time.Now()
	sess, err := from.DialSession(ctx, to.ID())
	el := time.Since(start)
	if err != nil {
		return nil, el, fmt.Errorf("dial %s -> %s: %w", from.ID().Short(), to.ID().Short(), err)
	}
	return sess, el, nil
}

// CheckEcho dials from one node to another, which runs Echo, and round
// trips size random bytes on a new stream (RoundTrip). It returns the
// session, so that the caller can check which strategy won; the session
// is also returned when only the round trip failed.
func CheckEcho(t testing.TB, ctx context.Context, from, to *reach.Node, size int) (*reach.Session, error) {
	t.Helper()
	sess, el, err := Dial(ctx, from, to)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := RoundTrip(ctx, sess, size); err != nil {
		return sess, fmt.Errorf("over %s: %w", sess.Strategy(), err)
	}
	tr := time.Since(start)
	t.Logf("%s -> %s: %s after %v; %s each way in %v (%.0f Mbit/s)", from.ID().Short(), to.ID().Short(), sess.Strategy(),
		el.Round(time.Millisecond), sizeText(size), tr.Round(time.Millisecond), float64(size)*8/tr.Seconds()/1e6)
	return sess, nil
}

// RoundTrip opens a stream on sess, writes size random bytes and closes
// its write side while it reads the peer's echo, and checks that exactly
// those bytes came back (their SHA-256). ctx bounds it all.
func RoundTrip(ctx context.Context, sess *reach.Session, size int) error {
	c, err := sess.OpenStream(ctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		c.Close() // unblocks the writer
		<-werr
		return fmt.Errorf("reading the echo after %d of %d bytes: %w", n, size, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	want := sha256.Sum256(data)
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo: got %d of %d bytes, SHA-256 matches: %v", n, size, bytes.Equal(h.Sum(nil), want[:]))
	}
	return nil
}

func sizeText(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
