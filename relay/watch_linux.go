//go:build linux

package relay

import (
	"crypto/tls"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/reachp2p/reach/internal/epollpark"
	"golang.org/x/sys/unix"
)

// watcher holds the connections of parked TLS links (tlsConn) in an
// epoll set, level-triggered and one-shot, watched by one goroutine that
// lives while any link is parked: when a connection has something to
// read (or was closed by its peer), the watcher takes it out of the set
// and starts its link's read loop again. The set is keyed by the
// watcher's own keys, not descriptors: an event for a link that left
// meanwhile (its descriptor maybe reused) finds no link.
type watcher struct {
	srv *Server

	mu     sync.Mutex
	links  map[int32]*peerLink // parked links by key
	next   int32               // the last key given
	ep, ev int                 // the epoll set and the eventfd that stops its goroutine; 0: none runs
}

// epollCreate makes an epoll set (a test's fails).
var epollCreate = unix.EpollCreate1

// parkable returns tc's descriptor if its link can park: a TCP
// connection's, or for a WebSocket's server end that says so
// (ParkConn), its outer connection's TCP descriptor (other carriers may
// keep bytes in user space that no descriptor shows).
func parkable(tc *tls.Conn) syscall.RawConn {
	return epollpark.RawConnOf(tc.NetConn())
}

// parkConn is a connection carried in another (rendezvous's WebSocket
// server end) whose reads lose nothing when they time out and hold back
// no byte that its carrier's TCP connection, ParkConn, does not show as
// readable: a link on it may park on that connection.
type parkConn interface {
	ParkConn() net.Conn
}

// park hands p's connection to the watcher, its last frame no later than
// last: parkDone if it took it, parkClosing if p is closing (the caller
// ends it), parkFailed if it could not (no epoll set or no room in it:
// descriptors or memory short; the caller's read loop goes on). The
// link first lets go of what it rebuilds when it moves again (idle):
// before the watcher holds it, while the caller still owns its reads
// (and not under w.mu: idle waits for a write in progress).
func (w *watcher) park(p *peerLink, last time.Time) parkResult {
	c := p.tls
	c.idle()
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.closing {
		return parkClosing
	}
	if w.ep == 0 && !w.start() {
		return parkFailed
	}
	for {
		w.next++
		if w.next <= 0 {
			w.next = 1 // 0 is the eventfd's
		}
		if w.links[w.next] == nil {
			break
		}
	}
	var err error
	cerr := c.raw.Control(func(fd uintptr) {
		err = unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, int(fd), &unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: w.next})
	})
	if cerr != nil || err != nil {
		if len(w.links) == 0 {
			w.stopLocked()
		}
		if cerr != nil {
			return parkClosing // the connection is closed
		}
		w.srv.log.Warn("relay: epoll add", "err", err)
		return parkFailed
	}
	if w.links == nil {
		w.links = make(map[int32]*peerLink)
	}
	w.links[w.next] = p
	c.key, c.parked, c.last = w.next, true, last
	w.srv.m.parkedTLS.Add(1)
	return parkDone
}

// remove marks p's link closing; true if it was parked, and is no
// longer: the caller ends it.
func (w *watcher) remove(c *tlsConn) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	c.closing = true
	return w.unparkLocked(c)
}

// expire removes c's link if it is parked and its last frame came before
// since; true if so: the caller ends it.
func (w *watcher) expire(c *tlsConn, since time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !c.parked || !c.last.Before(since) {
		return false
	}
	c.closing = true
	return w.unparkLocked(c)
}

// unparkLocked takes c's connection out of the set; false if it was not
// parked.
func (w *watcher) unparkLocked(c *tlsConn) bool {
	if !c.parked {
		return false
	}
	c.parked = false
	delete(w.links, c.key)
	w.srv.m.parkedTLS.Add(-1)
	c.raw.Control(func(fd uintptr) { unix.EpollCtl(w.ep, unix.EPOLL_CTL_DEL, int(fd), nil) })
	if len(w.links) == 0 {
		w.stopLocked()
	}
	return true
}

// start makes the epoll set and starts its goroutine.
func (w *watcher) start() bool {
	ep, err := epollCreate(unix.EPOLL_CLOEXEC)
	if err != nil {
		w.srv.log.Warn("relay: epoll", "err", err)
		return false
	}
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ev, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: 0})
	}
	if err != nil {
		w.srv.log.Warn("relay: eventfd", "err", err)
		unix.Close(ep)
		if ev > 0 {
			unix.Close(ev)
		}
		return false
	}
	w.ep, w.ev = ep, ev
	go w.run(ep, ev)
	return true
}

// stopLocked tells the goroutine to end (no link is parked); a park
// after it starts another.
func (w *watcher) stopLocked() {
	if w.ep == 0 {
		return
	}
	var one = [8]byte{7: 1}
	unix.Write(w.ev, one[:]) // its goroutine closes both
	w.ep, w.ev = 0, 0
}

// run waits for parked links' connections to become readable, and wakes
// their links, until stopped.
func (w *watcher) run(ep, ev int) {
	defer unix.Close(ep)
	defer unix.Close(ev)
	events := make([]unix.EpollEvent, 128)
	var wake []*peerLink
	for {
		n, err := unix.EpollWait(ep, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			w.srv.log.Error("relay: epoll wait", "err", err)
			w.failAll(ep)
			return
		}
		stop := false
		w.mu.Lock()
		for _, e := range events[:n] {
			if e.Fd == 0 {
				stop = true
				continue
			}
			if p := w.links[e.Fd]; p != nil && w.ep == ep {
				w.unparkLocked(p.tls)
				wake = append(wake, p)
			}
		}
		w.mu.Unlock()
		for i, p := range wake {
			w.srv.wake(p)
			wake[i] = nil
		}
		wake = wake[:0]
		if stop {
			return
		}
	}
}

// failAll ends the links parked in ep (its wait failed: not expected).
func (w *watcher) failAll(ep int) {
	w.mu.Lock()
	var all []*peerLink
	if w.ep == ep {
		for _, p := range w.links {
			p.tls.closing = true
			w.unparkLocked(p.tls)
			all = append(all, p)
		}
		w.stopLocked()
	}
	w.mu.Unlock()
	for _, p := range all {
		p.tls.close()
		w.srv.endTLS(p)
	}
}
