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

import "errors"

// Named errors. Test with errors.Is.
var (
	// ErrUnsupported: no epoll on this system.
	ErrUnsupported = errors.New("epollpark: not supported on this system")
	// ErrSetClosed: the set was closed.
	ErrSetClosed = errors.New("epollpark: set closed")
	// ErrClosed: the connection to park is closed.
	ErrClosed = errors.New("epollpark: connection closed")
)
