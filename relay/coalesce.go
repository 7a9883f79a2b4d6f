package relay

import (
	"sync"

	"github.com/reachp2p/reach/identity"
)

// coalescer queues the packet frames of a byte-stream link and writes
// them from one goroutine, as many per write as have queued meanwhile
// (up to maxCoalesce bytes): one TLS record and one syscall for many
// packets instead of one each.
type coalescer struct {
	write func([]byte) error
	wake  chan struct{}

	mu   sync.Mutex
	room *sync.Cond // signalled when buf was taken or err set
	buf  []byte
	err  error
}

func newCoalescer(write func([]byte) error) *coalescer {
	c := &coalescer{write: write, wake: make(chan struct{}, 1)}
	c.room = sync.NewCond(&c.mu)
	return c
}

// send queues a packet frame; it blocks while maxCoalesce bytes wait.
func (c *coalescer) send(peer identity.PeerID, pkt []byte) error {
	return c.appendWith(func(b []byte) []byte { return appendFrame(b, framePacket, peer[:], pkt) })
}

// run writes what is queued until l ends or a write fails (which ends l).
func (c *coalescer) run(l *link) {
	var out []byte
	for {
		select {
		case <-c.wake:
		case <-l.done:
			c.stop(l.err)
			return
		}
		c.mu.Lock()
		out, c.buf = c.buf, out[:0]
		c.room.Broadcast()
		c.mu.Unlock()
		if len(out) == 0 {
			continue
		}
		if err := c.write(out); err != nil {
			c.stop(err)
			l.fail(err)
			return
		}
		if cap(out) > 4*maxCoalesce {
			out = nil // after a large frame (cannot happen) or burst
		}
	}
}

func (c *coalescer) stop(err error) {
	if err == nil {
		err = ErrClosed
	}
	c.mu.Lock()
	c.err = err
	c.buf = nil
	c.room.Broadcast()
	c.mu.Unlock()
}

// sendFrame queues a whole frame; it blocks while maxCoalesce bytes wait.
func (c *coalescer) sendFrame(frame []byte) error {
	return c.appendWith(func(b []byte) []byte { return append(b, frame...) })
}

// appendWith queues what add appends to the write buffer; it blocks while
// maxCoalesce bytes wait.
func (c *coalescer) appendWith(add func([]byte) []byte) error {
	c.mu.Lock()
	for c.err == nil && len(c.buf) >= maxCoalesce {
		c.room.Wait()
	}
	if err := c.err; err != nil {
		c.mu.Unlock()
		return err
	}
	c.buf = add(c.buf)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

// trySendFrame queues a frame unless maxCoalesce bytes wait (then it is
// dropped).
func (c *coalescer) trySendFrame(frame []byte) {
	c.mu.Lock()
	if c.err != nil || len(c.buf) >= maxCoalesce {
		c.mu.Unlock()
		return
	}
	c.buf = append(c.buf, frame...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}
