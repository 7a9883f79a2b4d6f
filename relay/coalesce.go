package relay

import (
	"errors"
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
	room chan struct{} // closed when buf was taken or err set; nil: no one waits
	buf  []byte
	err  error
}

func newCoalescer(write func([]byte) error) *coalescer {
	return &coalescer{write: write, wake: make(chan struct{}, 1)}
}

// freeLocked wakes those waiting for room; c.mu is held.
func (c *coalescer) freeLocked() {
	if c.room != nil {
		close(c.room)
		c.room = nil
	}
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
		c.freeLocked()
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
	c.freeLocked()
	c.mu.Unlock()
}

// sendFrame queues a whole frame; it blocks while maxCoalesce bytes wait.
func (c *coalescer) sendFrame(frame []byte) error {
	return c.appendWith(func(b []byte) []byte { return append(b, frame...) })
}

// appendWith queues what add appends to the write buffer; it blocks while
// maxCoalesce bytes wait.
func (c *coalescer) appendWith(add func([]byte) []byte) error {
	return c.appendWithin(add, nil, nil)
}

// errNoRoom: stop or stop2 of appendWithin ended its wait.
var errNoRoom = errors.New("relay: waiting for the link's write buffer stopped")

// appendWithin is appendWith, whose wait for room ends with errNoRoom when
// stop or stop2 is closed (a nil one never is).
func (c *coalescer) appendWithin(add func([]byte) []byte, stop, stop2 <-chan struct{}) error {
	c.mu.Lock()
	for c.err == nil && len(c.buf) >= maxCoalesce {
		if c.room == nil {
			c.room = make(chan struct{})
		}
		room := c.room
		c.mu.Unlock()
		select {
		case <-room:
		case <-stop:
			return errNoRoom
		case <-stop2:
			return errNoRoom
		}
		c.mu.Lock()
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
func (c *coalescer) trySendFrame(frame []byte) { c.tryAppend(frame) }

// tryAppend queues a frame unless maxCoalesce bytes wait or the link
// ended; false if it did not.
func (c *coalescer) tryAppend(frame []byte) bool {
	c.mu.Lock()
	if c.err != nil || len(c.buf) >= maxCoalesce {
		c.mu.Unlock()
		return false
	}
	c.buf = append(c.buf, frame...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return true
}
