package rendezvous

import "time"

// A session's writer: a goroutine that runs only while there is
// something to send (and writerLinger after), draining the session's
// queue; the reader waits for room (awaitSpace) when its own requests'
// answers fill a quarter of it.

// closeWriteGrace is how long a closing session's writer may still take
// over the frame it is writing.
const closeWriteGrace = time.Second

// writerLinger is how long a session's writer waits for more to send
// before it ends.
const writerLinger = time.Second

// kick makes sure a writer runs: it starts one, or wakes the one running.
func (ss *session) kick() {
	ss.qmu.Lock()
	start := !ss.writing
	ss.writing = true
	ss.qmu.Unlock()
	if start {
		go ss.writeLoop()
		return
	}
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// enqueue queues a frame for the writer; false if the session is closing
// or the queue is full (then, unless drop, the session is closed as slow).
func (ss *session) enqueue(b []byte, drop bool) bool {
	ss.qmu.Lock()
	if p := ss.park; p != nil {
		ok, next := ss.srv.parkEnqueue(ss, p, b)
		ss.qmu.Unlock()
		if next != nil {
			return next.enqueue(b, drop) // a registration took this parked one over
		}
		return ok
	}
	if closed(ss.done) {
		ss.qmu.Unlock()
		return false
	}
	if len(ss.queue) >= sendQueueLen {
		ss.qmu.Unlock()
		if !drop {
			ss.closeWith(&ProtocolError{Code: codeSlow, Reason: "send queue full"})
		}
		return false
	}
	ss.queue = append(ss.queue, b)
	ss.qmu.Unlock()
	ss.kick()
	return true
}

func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// writeLoop writes what is queued until nothing was for writerLinger
// (then it ends; the next frame starts another) or the session closes
// (then it writes the final ERROR, if any, and closes the transport).
func (ss *session) writeLoop() {
	idle := ss.srv.cfg.IdleTimeout
	var linger *time.Timer
	defer func() {
		if linger != nil {
			linger.Stop()
		}
	}()
	for {
		ss.qmu.Lock()
		batch := ss.queue
		ss.queue = nil
		drain := ss.drain
		if len(batch) == 0 {
			done := closed(ss.done)
			ss.qmu.Unlock()
			if done {
				ss.finish()
				return
			}
			if linger == nil {
				linger = time.NewTimer(writerLinger)
			} else {
				linger.Reset(writerLinger)
			}
			select {
			case <-ss.wake:
				continue
			case <-ss.done:
				continue
			case <-linger.C:
			}
			ss.qmu.Lock()
			if len(ss.queue) == 0 && !closed(ss.done) {
				ss.writing = false
				ss.qmu.Unlock()
				return
			}
			ss.qmu.Unlock()
			continue
		}
		ss.qmu.Unlock()
		for _, b := range batch {
			ss.qmu.Lock()
			if closed(ss.done) && !drain {
				ss.qmu.Unlock()
				break
			}
			ss.inWrite = time.Now().Add(idle)
			ss.setWriteDeadline(ss.inWrite)
			ss.qmu.Unlock()
			_, err := ss.rw.Write(b)
			ss.qmu.Lock()
			ss.inWrite = time.Time{}
			ss.qmu.Unlock()
			if err != nil {
				ss.closeWith(nil)
			}
		}
		select {
		case ss.space <- struct{}{}:
		default:
		}
	}
}

// awaitSpace holds the reader while the send queue holds ownQueueLen
// frames or more, until the writer made room; false if the session
// closed meanwhile.
func (ss *session) awaitSpace() bool {
	for {
		ss.qmu.Lock()
		n := len(ss.queue)
		ss.qmu.Unlock()
		if n < ownQueueLen {
			return true
		}
		select {
		case <-ss.space:
		case <-ss.done:
			return false
		}
	}
}

// finish writes the final ERROR (if any) and closes the transport.
func (ss *session) finish() {
	if pe := ss.final; pe != nil {
		if b, err := appendFrame(nil, typeError, errorBody{Code: pe.Code, Reason: pe.Reason}); err == nil {
			ss.setWriteDeadline(time.Now().Add(time.Second))
			ss.rw.Write(b)
		}
	}
	ss.qmu.Lock()
	parked := ss.park != nil
	ss.qmu.Unlock()
	if parked && ss.closeParked != nil {
		ss.closeParked()
	} else {
		ss.closeConn(ss.final)
	}
	close(ss.writerDone)
}
