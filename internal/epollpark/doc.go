// Package epollpark parks idle connections: instead of a goroutine
// blocked in Read (and its stack) per connection, an epoll set holds the
// descriptors of connections nothing moves on, and one goroutine wakes
// each connection's owner when bytes arrive (or the peer closed it). The
// owner then reads again on a goroutine of its own. A connection may park
// only when a read that timed out left nothing in user space that its
// descriptor does not show (a partial frame is fine: its rest makes the
// descriptor readable; a whole unread one is not).
//
// The rendezvous server parks its TCP registrations' readers with it
// (the relay's TLS links have their own watcher, relay/watch_linux.go,
// which predates it). On systems without epoll, Park returns
// ErrUnsupported and owners keep reading.
package epollpark

import (
	"errors"
	"net"
	"syscall"
)

// Named errors. Test with errors.Is.
var (
	// ErrUnsupported: no epoll on this system.
	ErrUnsupported = errors.New("epollpark: not supported on this system")
	// ErrSetClosed: the set was closed.
	ErrSetClosed = errors.New("epollpark: set closed")
	// ErrClosed: the connection to park is closed.
	ErrClosed = errors.New("epollpark: connection closed")
)

// RawConnOf returns the descriptor of the TCP connection c is, or is
// carried in (each carrier's ParkConn names the connection under it), or
// nil if there is none.
func RawConnOf(c net.Conn) syscall.RawConn {
	for range 8 {
		pc, ok := c.(interface{ ParkConn() net.Conn })
		if !ok {
			break
		}
		c = pc.ParkConn()
	}
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}
