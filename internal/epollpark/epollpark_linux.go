//go:build linux

package epollpark

import (
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Set is a set of parked connections, watched by one goroutine that
// lives while any is parked. The zero Set is ready; Close it when done.
type Set struct {
	mu     sync.Mutex
	items  map[int32]*item // parked connections by key
	next   int32           // the last key given
	ep, ev int             // the epoll set and the eventfd that stops its goroutine; 0: none runs
	closed bool
}

type item struct {
	rc   syscall.RawConn
	wake func()
}

// Park adds rc's descriptor to the set: wake runs (on a goroutine of its
// own, once) when it has something to read, was closed by its peer, or
// failed. It returns the key to Unpark it with, or an error (the set is
// closed, or out of descriptors or memory; ErrClosed if rc's connection
// is): the caller goes on reading itself.
func (s *Set) Park(rc syscall.RawConn, wake func()) (int32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrSetClosed
	}
	if s.ep == 0 {
		if err := s.start(); err != nil {
			return 0, err
		}
	}
	for {
		s.next++
		if s.next <= 0 {
			s.next = 1 // 0 is the eventfd's
		}
		if s.items[s.next] == nil {
			break
		}
	}
	var err error
	cerr := rc.Control(func(fd uintptr) {
		err = unix.EpollCtl(s.ep, unix.EPOLL_CTL_ADD, int(fd), &unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: s.next})
	})
	if cerr != nil || err != nil {
		if len(s.items) == 0 {
			s.stopLocked()
		}
		if cerr != nil {
			return 0, ErrClosed
		}
		return 0, err
	}
	if s.items == nil {
		s.items = make(map[int32]*item)
	}
	s.items[s.next] = &item{rc: rc, wake: wake}
	return s.next, nil
}

// Unpark takes key's connection out of the set; false if it was not
// there (its wake ran or is about to: the caller must not run it too).
func (s *Set) Unpark(key int32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removeLocked(key) != nil
}

// Len returns how many connections are parked.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.items)
}

// Close wakes every parked connection's owner and refuses parks from
// now on.
func (s *Set) Close() {
	s.mu.Lock()
	s.closed = true
	var wake []func()
	for k := range s.items {
		wake = append(wake, s.removeLocked(k).wake)
	}
	s.stopLocked()
	s.mu.Unlock()
	for _, w := range wake {
		go w()
	}
}

func (s *Set) removeLocked(key int32) *item {
	it := s.items[key]
	if it == nil {
		return nil
	}
	delete(s.items, key)
	it.rc.Control(func(fd uintptr) { unix.EpollCtl(s.ep, unix.EPOLL_CTL_DEL, int(fd), nil) })
	if len(s.items) == 0 {
		s.stopLocked()
	}
	return it
}

// start makes the epoll set and starts its goroutine.
func (s *Set) start() error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ev, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: 0})
	}
	if err != nil {
		unix.Close(ep)
		if ev > 0 {
			unix.Close(ev)
		}
		return err
	}
	s.ep, s.ev = ep, ev
	go s.run(ep, ev)
	return nil
}

// stopLocked tells the goroutine to end; a park after it starts another.
func (s *Set) stopLocked() {
	if s.ep == 0 {
		return
	}
	one := [8]byte{7: 1}
	unix.Write(s.ev, one[:]) // its goroutine closes both
	s.ep, s.ev = 0, 0
}

// run waits for parked connections to become readable and wakes their
// owners, until stopped.
func (s *Set) run(ep, ev int) {
	defer unix.Close(ep)
	defer unix.Close(ev)
	events := make([]unix.EpollEvent, 128)
	var wake []func()
	for {
		n, err := unix.EpollWait(ep, events, -1)
		if err == unix.EINTR {
			continue
		}
		stop := err != nil
		s.mu.Lock()
		if err != nil {
			// Not expected: wake them all, their owners read themselves.
			if s.ep == ep {
				for k := range s.items {
					wake = append(wake, s.removeLocked(k).wake)
				}
			}
		}
		for _, e := range events[:max(n, 0)] {
			if e.Fd == 0 {
				stop = true
				continue
			}
			if s.ep == ep {
				if it := s.removeLocked(e.Fd); it != nil {
					wake = append(wake, it.wake)
				}
			}
		}
		s.mu.Unlock()
		for i, w := range wake {
			go w()
			wake[i] = nil
		}
		wake = wake[:0]
		if stop {
			return
		}
	}
}
