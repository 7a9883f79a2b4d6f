package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach"
)

// The first byte of each soak stream the dialler opens says which way
// its data goes.
const (
	soakUp   = 'u' // the dialler sends, the listener checks
	soakDown = 'd' // the listener sends, the dialler checks
)

// soakChunk is the size of each paced write, and of the reads.
const soakChunk = 16 << 10

// soakFlow is one direction of a pair: a stream carrying the pair's
// pseudo-random pattern for that direction, checked as it arrives.
type soakFlow struct {
	sent     atomic.Int64 // bytes the sender's writes took
	received atomic.Int64 // bytes the receiver read (intact or not)
	corrupt  atomic.Int64 // bytes read that differ from the pattern
	mu       sync.Mutex
	errs     []error // the sender's and receiver's errors
	done     chan struct{}
}

func (f *soakFlow) fail(err error) {
	if err == nil {
		return
	}
	f.mu.Lock()
	f.errs = append(f.errs, err)
	f.mu.Unlock()
}

// soakPair is two nodes, the dialler a and the listener b, moving data
// both ways on one relayed session, continuously, until stop.
type soakPair struct {
	index    int
	a, b     *reach.Node
	strategy string
	setupErr error       // why run failed; nil once the pair moves data
	flows    [2]soakFlow // soakUp (a to b), soakDown (b to a)
	wg       sync.WaitGroup
}

func newSoakPair(i int, a, b *reach.Node) *soakPair {
	p := &soakPair{index: i, a: a, b: b}
	for d := range p.flows {
		p.flows[d].done = make(chan struct{})
	}
	return p
}

// seed is the pattern of a pair's direction.
func (p *soakPair) seed(dir int) [32]byte {
	return [32]byte{byte(p.index), byte(p.index >> 8), byte(p.index >> 16), byte(dir)}
}

// serve accepts the listener's two streams: the upload is checked, the
// download paced at rate until stop. kill closes the streams still open
// (the end of the drain).
func (p *soakPair) serve(stop, kill context.Context, rate int) {
	p.wg.Go(func() {
		for range 2 {
			c, err := p.b.Accept(kill)
			if err != nil {
				return
			}
			p.wg.Go(func() {
				defer c.Close()
				defer context.AfterFunc(kill, func() { c.Close() })()
				var kind [1]byte
				if _, err := io.ReadFull(c, kind[:]); err != nil {
					p.flows[0].fail(fmt.Errorf("listener: reading a stream's kind: %w", err))
					return
				}
				switch kind[0] {
				case soakUp:
					p.check(c, 0)
				case soakDown:
					f := &p.flows[1]
					f.fail(sendPaced(stop, c, p.seed(1), rate, &f.sent))
				}
			})
		}
	})
}

// run dials the session, checks that it is relayed, opens the two
// streams and moves data until stop (the sender's last write is
// followed by its half-close) and the drain ends (kill).
func (p *soakPair) run(ctx, stop, kill context.Context, rate int) error {
	sess, err := p.a.DialSession(ctx, p.b.ID())
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	if p.strategy = sess.Strategy(); p.strategy != reach.StrategyRelay {
		return fmt.Errorf("session over %q, want %q", p.strategy, reach.StrategyRelay)
	}
	open := func(kind byte) (*reach.Stream, error) {
		c, err := sess.OpenStream(ctx)
		if err != nil {
			return nil, fmt.Errorf("open stream: %w", err)
		}
		if _, err := c.Write([]byte{kind}); err != nil {
			c.Close()
			return nil, fmt.Errorf("stream kind: %w", err)
		}
		return c, nil
	}
	up, err := open(soakUp)
	if err != nil {
		return err
	}
	down, err := open(soakDown)
	if err != nil {
		up.Close()
		return err
	}
	if err := down.CloseWrite(); err != nil {
		up.Close()
		down.Close()
		return err
	}
	p.wg.Go(func() {
		defer up.Close()
		defer context.AfterFunc(kill, func() { up.Close() })()
		f := &p.flows[0]
		f.fail(sendPaced(stop, up, p.seed(0), rate, &f.sent))
		select { // the listener's check: Close discards what it would send back
		case <-f.done:
		case <-kill.Done():
		}
	})
	p.wg.Go(func() {
		defer down.Close()
		defer context.AfterFunc(kill, func() { down.Close() })()
		p.check(down, 1)
	})
	return nil
}

// check reads c to its end, comparing every byte with the direction's
// pattern.
func (p *soakPair) check(c *reach.Stream, dir int) {
	f := &p.flows[dir]
	defer close(f.done)
	want := rand.NewChaCha8(p.seed(dir))
	buf, exp := make([]byte, soakChunk), make([]byte, soakChunk)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			want.Read(exp[:n])
			bad := 0
			for i := range n {
				if buf[i] != exp[i] {
					bad++
				}
			}
			f.corrupt.Add(int64(bad))
			f.received.Add(int64(n))
		}
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			f.fail(fmt.Errorf("reading after %d bytes: %w", f.received.Load(), err))
			return
		}
	}
}

// sendPaced writes the pattern seeded seed on c at rate bytes per second
// (soakChunk at a time) until stop, then closes its write side. sent
// counts the bytes c's writes took.
func sendPaced(stop context.Context, c *reach.Stream, seed [32]byte, rate int, sent *atomic.Int64) error {
	src := rand.NewChaCha8(seed)
	buf := make([]byte, soakChunk)
	start := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		due := start.Add(time.Duration(float64(sent.Load()) / float64(rate) * float64(time.Second)))
		t.Reset(time.Until(due))
		select {
		case <-stop.Done():
			if err := c.CloseWrite(); err != nil {
				return fmt.Errorf("half-close after %d bytes: %w", sent.Load(), err)
			}
			return nil
		case <-t.C:
		}
		src.Read(buf)
		n, err := c.Write(buf)
		sent.Add(int64(n))
		if err != nil {
			return fmt.Errorf("writing after %d bytes: %w", sent.Load(), err)
		}
	}
}

// soakTotals adds up the pairs' flows.
type soakTotals struct {
	sent, received, corrupt, lost int64
	failed                        []string
}

func totals(pairs []*soakPair) soakTotals {
	var t soakTotals
	for _, p := range pairs {
		for d := range p.flows {
			f := &p.flows[d]
			s, r, c := f.sent.Load(), f.received.Load(), f.corrupt.Load()
			t.sent += s
			t.received += r
			t.corrupt += c
			t.lost += max(s-r, 0)
			f.mu.Lock()
			for _, err := range f.errs {
				t.failed = append(t.failed, fmt.Sprintf("pair %d %s: %v", p.index, []string{"a->b", "b->a"}[d], err))
			}
			f.mu.Unlock()
			if r == 0 {
				t.failed = append(t.failed, fmt.Sprintf("pair %d %s: no data moved", p.index, []string{"a->b", "b->a"}[d]))
			}
		}
	}
	return t
}
