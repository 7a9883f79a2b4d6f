package relay

import (
	"context"
	"sync"
	"time"
)

// maxCoalesce is the most a byte-stream link's write loop writes at once.
const maxCoalesce = 64 << 10

// coalesceBufs recycles the write loops' coalescing buffers, so that an
// idle TLS link keeps none.
var coalesceBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxCoalesce+bufSize); return &b }}

// enqueue queues a message for p's link, and starts its writer if none
// runs; false if the queue is full.
func (p *peerLink) enqueue(buf []byte) bool { return p.enqueueWithin(buf, p.srv.cfg.SendQueue) }

// controlHeadroom is how many frames beyond SendQueue a link's queue takes
// for answers to its own control frames (PONG): packets that filled the
// queue do not make the relay drop the answer a node waits for (a new
// link's consent PONG), and a node that pings without reading still gets
// only this many more.
const controlHeadroom = 64

// enqueuePong queues the answer to a node's PING.
func (p *peerLink) enqueuePong(body []byte) {
	p.enqueueWithin(appendFrame(nil, framePong, body), p.srv.cfg.SendQueue+controlHeadroom)
}

// pong answers a node's PING: at once, from the caller (a read loop),
// if nothing is queued for the link and no writer runs (an idle link's
// keepalive: no writer goroutine started, to linger a second, for a
// 3-byte answer); else queued behind what is.
func (p *peerLink) pong(body []byte) {
	p.qmu.Lock()
	if p.writing || len(p.queue) > 0 || p.closed || p.writerCtx == nil {
		p.qmu.Unlock()
		p.enqueuePong(body)
		return
	}
	p.writing = true // frames queued meanwhile wait for this write
	p.qmu.Unlock()
	err := p.write(appendFrame(nil, framePong, body))
	p.qmu.Lock()
	p.writing = len(p.queue) > 0 && !p.closed
	start, ctx := p.writing, p.writerCtx
	p.qmu.Unlock()
	if start {
		go p.writeLoop(ctx)
	}
	if err != nil {
		p.fail(0, "")
	}
}

// enqueueWithin queues buf for p unless p holds limit frames already.
func (p *peerLink) enqueueWithin(buf []byte, limit int) bool {
	p.qmu.Lock()
	if p.closed || len(p.queue) >= limit {
		p.qmu.Unlock()
		return false
	}
	p.queue = append(p.queue, buf)
	start := !p.writing && p.writerCtx != nil
	if start {
		p.writing = true
	}
	p.qmu.Unlock()
	if start {
		go p.writeLoop(p.writerCtx)
		return true
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return true
}

// writerLinger is how long a link's writer waits for more to send before
// it ends: an idle link has no writer goroutine (and its stack) at all,
// a busy one does not start one per packet.
const writerLinger = time.Second

// writeLoop sends p's queued messages until nothing was queued for
// writerLinger, ctx ends or a write fails. enqueue starts it.
func (p *peerLink) writeLoop(ctx context.Context) {
	var batch [][]byte
	var linger *time.Timer
	defer func() {
		if linger != nil {
			linger.Stop()
		}
	}()
	for {
		p.qmu.Lock()
		// The queue and the batch trade places: while the writer runs
		// neither grows again (no allocation per packet under load).
		batch, p.queue = p.queue, batch[:0]
		if len(batch) == 0 {
			if p.closed {
				p.writing = false
				p.shrinkQueue()
				p.qmu.Unlock()
				return
			}
			p.qmu.Unlock()
			if linger == nil {
				linger = time.NewTimer(writerLinger)
			} else {
				linger.Reset(writerLinger)
			}
			select {
			case <-p.wake:
				continue
			case <-ctx.Done():
				return
			case <-linger.C:
			}
			p.qmu.Lock()
			if len(p.queue) == 0 {
				p.writing = false // the next enqueue starts a writer
				p.shrinkQueue()
				p.qmu.Unlock()
				return
			}
			p.qmu.Unlock()
			continue
		}
		p.qmu.Unlock()
		if p.writeBatch != nil {
			if err := p.writeBatch(batch); err != nil {
				p.fail(0, "")
				return
			}
		}
		for i, b := range batch {
			if p.writeBatch == nil {
				if err := p.write(b); err != nil {
					p.fail(0, "")
					return
				}
			}
			// Written (copied by SendDatagram or into a TLS record): a
			// pooled packet buffer can be used again.
			if n := p.dataLen(b); n > 0 {
				p.qStream.Add(-n)
				p.qData.Add(-1)
				p.srv.dataWritten(p, b)
				putStreamBuf(b)
			} else {
				putBuf(b)
			}
			batch[i] = nil
		}
	}
}

// shrinkQueue lets an idle link's queue go (the writer ends), so that an
// idle peer keeps no large slice. p.qmu is held.
func (p *peerLink) shrinkQueue() {
	if len(p.queue) == 0 && cap(p.queue) > 64 {
		p.queue = nil
	}
}

// startWriter lets enqueue start writers for p until ctx ends, and
// starts one for what was queued before.
func (p *peerLink) startWriter(ctx context.Context) {
	p.qmu.Lock()
	p.writerCtx = ctx
	start := !p.writing && len(p.queue) > 0
	p.writing = p.writing || start
	p.qmu.Unlock()
	if start {
		go p.writeLoop(ctx)
	}
}
