package rendezvous

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/reachp2p/reach/internal/epollpark"
)

// A TCP registration's reader parks: once no frame began for
// ServerConfig.TCPPark, its goroutine ends and the connection's
// descriptor waits in the server's epoll set (internal/epollpark); the
// connection's next bytes, its close, or the idle timeout start a
// goroutine that reads again. An idle TCP-registered node (a UDP-blocked
// one, pinging every IdleTimeout/3) then holds no goroutine and no stack
// on the server between its pings, and its TLS record layer (taken over:
// tlstake) no buffer and no AEAD.
//
// Only a connection whose reads lose nothing when they time out, and
// hold nothing in user space that the descriptor does not show, parks:
// a taken-over TLS connection (tlstake.Conn) read by frameReader, which
// keeps a partial frame, parking only between frames. A session's writer
// is its own goroutine (while something is queued), parked reader or
// not.

// errReaderIdle: no frame began within TCPPark; the reader may park.
var errReaderIdle = errors.New("rendezvous: reader idle")

// parkRawOf returns the descriptor a session on c may park its reader
// on, or nil: c must be a taken-over TLS connection on TCP, or in a
// WebSocket whose outer TLS is (ParkConn unwraps to the TCP connection).
func parkRawOf(c net.Conn) syscall.RawConn {
	pc, ok := c.(interface {
		ParkConn() net.Conn
		Idle()
	})
	if !ok {
		return nil
	}
	return epollpark.RawConnOf(pc.ParkConn())
}

// tcpParking is a session's parked-reader state (tcppark.go), guarded
// by its mu.
type tcpParking struct {
	mu    sync.Mutex
	key   int32        // the reader's key in the server's epoll set; 0: not parked
	gen   uint64       // counts parks: a timer of an earlier one does nothing
	timer *time.Timer  // ends the session at its idle timeout
	fr    *frameReader // the reader's, to resume with
}

// parkReader parks the session's reader (fr is between frames); false
// if it could not (the caller reads on). The connection's next bytes
// (or its peer's close), the idle timeout, or the session closing
// (closeWith: the writer closes the connection, and a closed
// descriptor leaves the epoll set without an event) resume it, once:
// the epoll set's Unpark decides which.
func (ss *session) parkReader(fr *frameReader) bool {
	s := ss.srv
	tp := &ss.tcpPark
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if closed(ss.done) {
		// Closing: closeWith found nothing parked, or will not look
		// again. The caller reads on and ends. (No Idle: its TryLock
		// could keep the writer's Close from sending close_notify.)
		return false
	}
	if i, ok := ss.rw.(interface{ Idle() }); ok {
		i.Idle() // drop the record layer's buffer and keys meanwhile
	}
	s.tcpParked.Add(1)
	tp.gen++
	gen := tp.gen
	key, err := s.tcpPark.Park(ss.parkRaw, func() {
		// The set took the key out: this wake-up won.
		tp.mu.Lock()
		if tp.gen == gen {
			tp.key = 0
			tp.timer.Stop()
		}
		tp.mu.Unlock()
		ss.resumeReader(fr)
	})
	if err != nil {
		s.tcpParked.Done()
		ss.log.Debug("tcp reader cannot park", "err", err)
		return false
	}
	tp.key, tp.fr = key, fr
	// Silent for IdleTimeout: the reader's next read fails at once and
	// ends the session.
	tp.timer = time.AfterFunc(time.Until(ss.lastFrame.Add(s.cfg.IdleTimeout)), func() {
		if ss.unparkReader(gen) {
			ss.resumeReader(fr)
		}
	})
	return true
}

// unparkReader takes the reader out of the epoll set if it is still
// parked there by park gen (any park: 0); true if it was, and the
// caller must resume it.
func (ss *session) unparkReader(gen uint64) bool {
	tp := &ss.tcpPark
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.key == 0 || gen != 0 && gen != tp.gen || !ss.srv.tcpPark.Unpark(tp.key) {
		return false
	}
	tp.key = 0
	tp.timer.Stop()
	return true
}

// resumeReader serves a reader that was parked.
func (ss *session) resumeReader(fr *frameReader) {
	defer ss.srv.tcpParked.Done()
	ss.serve(fr, nil)
}

// wakeParkedReader resumes the reader of a closing session if it is
// parked (its read then ends it at once).
func (ss *session) wakeParkedReader() {
	tp := &ss.tcpPark
	if ss.unparkReader(0) {
		tp.mu.Lock()
		fr := tp.fr
		tp.mu.Unlock()
		go ss.resumeReader(fr)
	}
}
