package rendezvous

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
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
	tcp, ok := pc.ParkConn().(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// parkReader parks the session's reader (fr is between frames); false
// if it could not (the caller reads on).
func (ss *session) parkReader(fr *frameReader) bool {
	s := ss.srv
	if i, ok := ss.rw.(interface{ Idle() }); ok {
		i.Idle() // drop the record layer's buffer and keys meanwhile
	}
	s.tcpParked.Add(1)
	resume := func() {
		defer s.tcpParked.Done()
		ss.serve(fr, nil)
	}
	// mu orders Park's return before the wake-up or the timer use key
	// and timer.
	var (
		mu    sync.Mutex
		key   int32
		timer *time.Timer
	)
	mu.Lock()
	key, err := s.tcpPark.Park(ss.parkRaw, func() {
		mu.Lock()
		t := timer
		mu.Unlock()
		if t != nil {
			t.Stop()
		}
		resume()
	})
	if err != nil {
		mu.Unlock()
		s.tcpParked.Done()
		ss.log.Debug("tcp reader cannot park", "err", err)
		return false
	}
	// Silent for IdleTimeout: the reader's next read fails at once and
	// ends the session.
	timer = time.AfterFunc(time.Until(ss.lastFrame.Add(s.cfg.IdleTimeout)), func() {
		mu.Lock()
		k := key
		mu.Unlock()
		if s.tcpPark.Unpark(k) {
			resume()
		}
	})
	mu.Unlock()
	return true
}
