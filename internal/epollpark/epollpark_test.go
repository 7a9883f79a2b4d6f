//go:build linux

package epollpark

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func rawOf(t testing.TB, c *net.TCPConn) syscall.RawConn {
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A parked connection's owner is woken once when bytes arrive, and the
// bytes are there to read; the set's goroutine ends once none is parked.
func TestParkWakesOnData(t *testing.T) {
	var s Set
	defer s.Close()
	a, b := tcpPair(t)
	var woken atomic.Int32
	if _, err := s.Park(rawOf(t, b), func() { woken.Add(1) }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if woken.Load() != 0 {
		t.Fatal("woken with nothing to read")
	}
	a.Write([]byte("hello"))
	waitFor(t, "the wake-up", func() bool { return woken.Load() == 1 })
	buf := make([]byte, 5)
	b.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := b.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	a.Write([]byte("more")) // no longer parked: no second wake-up
	time.Sleep(20 * time.Millisecond)
	if woken.Load() != 1 || s.Len() != 0 {
		t.Fatalf("woken %d times, %d parked; want 1, 0", woken.Load(), s.Len())
	}
}

// A connection whose peer closed wakes its owner (who reads EOF).
func TestParkWakesOnClose(t *testing.T) {
	var s Set
	defer s.Close()
	a, b := tcpPair(t)
	woke := make(chan struct{})
	if _, err := s.Park(rawOf(t, b), func() { close(woke) }); err != nil {
		t.Fatal(err)
	}
	a.Close()
	select {
	case <-woke:
	case <-time.After(5 * time.Second):
		t.Fatal("not woken by the peer's close")
	}
}

// Unpark takes a connection out before anything arrives: its wake never
// runs, and a second Unpark says it was not parked.
func TestUnpark(t *testing.T) {
	var s Set
	defer s.Close()
	a, b := tcpPair(t)
	var woken atomic.Int32
	key, err := s.Park(rawOf(t, b), func() { woken.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	if !s.Unpark(key) || s.Unpark(key) {
		t.Fatal("Unpark: want true once, then false")
	}
	a.Write([]byte("x"))
	time.Sleep(20 * time.Millisecond)
	if woken.Load() != 0 {
		t.Fatal("woken after Unpark")
	}
	// It parks again, with a new key, and wakes.
	if _, err := s.Park(rawOf(t, b), func() { woken.Add(1) }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the wake-up after parking again", func() bool { return woken.Load() == 1 })
}

// Parking a closed connection fails with ErrClosed; a closed set refuses
// with ErrSetClosed and woke what it held.
func TestParkErrors(t *testing.T) {
	var s Set
	_, b := tcpPair(t)
	rc := rawOf(t, b)
	b.Close()
	if _, err := s.Park(rc, func() {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("park of a closed connection: %v, want ErrClosed", err)
	}
	_, d := tcpPair(t)
	woke := make(chan struct{})
	if _, err := s.Park(rawOf(t, d), func() { close(woke) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	select {
	case <-woke:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake what was parked")
	}
	if _, err := s.Park(rawOf(t, d), func() {}); !errors.Is(err, ErrSetClosed) {
		t.Fatalf("park in a closed set: %v, want ErrSetClosed", err)
	}
}

// Many parked connections, all woken at once: each exactly once.
func TestParkMany(t *testing.T) {
	var s Set
	defer s.Close()
	const n = 300
	var woken atomic.Int32
	var peers []*net.TCPConn
	for range n {
		a, b := tcpPair(t)
		if _, err := s.Park(rawOf(t, b), func() { woken.Add(1) }); err != nil {
			t.Fatal(err)
		}
		peers = append(peers, a)
	}
	if s.Len() != n {
		t.Fatalf("%d parked, want %d", s.Len(), n)
	}
	for _, a := range peers {
		a.Write([]byte{1})
	}
	waitFor(t, "every wake-up", func() bool { return woken.Load() == n })
	time.Sleep(20 * time.Millisecond)
	if woken.Load() != n || s.Len() != 0 {
		t.Fatalf("woken %d, %d still parked; want %d, 0", woken.Load(), s.Len(), n)
	}
}

// Bytes that arrived before Park wake the owner at once (epoll reports
// a descriptor readable when it is added): a frame that comes as the
// reader parks is not lost.
func TestParkDataAlreadyThere(t *testing.T) {
	var s Set
	defer s.Close()
	a, b := tcpPair(t)
	a.Write([]byte("early"))
	time.Sleep(10 * time.Millisecond)
	woke := make(chan struct{})
	if _, err := s.Park(rawOf(t, b), func() { close(woke) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woke:
	case <-time.After(5 * time.Second):
		t.Fatal("bytes already there did not wake the owner")
	}
}

func fdOf(t testing.TB, c *net.TCPConn) int {
	var fd int
	if err := rawOf(t, c).Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// A parked connection its owner closes leaves the set's epoll without an
// event (the owner must Unpark it: the rendezvous server does when the
// session closes); a new connection that gets its descriptor number
// parks and wakes, and the old key's Unpark leaves it parked.
func TestParkDescriptorReuse(t *testing.T) {
	var s Set
	defer s.Close()
	// One listener for every pair: a listener made after b closes would
	// take b's descriptor number (the lowest free one) itself.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := func() (*net.TCPConn, *net.TCPConn) {
		a, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		b, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(); b.Close() })
		return a.(*net.TCPConn), b.(*net.TCPConn)
	}
	for try := 0; ; try++ {
		_, b := pair()
		var oldWoken atomic.Int32
		oldKey, err := s.Park(rawOf(t, b), func() { oldWoken.Add(1) })
		if err != nil {
			t.Fatal(err)
		}
		oldFD := fdOf(t, b)
		b.Close()
		c, d := pair()
		if fdOf(t, d) != oldFD && fdOf(t, c) != oldFD {
			if !s.Unpark(oldKey) {
				t.Fatal("the closed connection's key was not parked")
			}
			if try == 10 {
				t.Fatal("no new connection got the closed one's descriptor number")
			}
			continue
		}
		reused := d
		peer := c
		if fdOf(t, c) == oldFD {
			reused, peer = c, d
		}
		var woken atomic.Int32
		if _, err := s.Park(rawOf(t, reused), func() { woken.Add(1) }); err != nil {
			t.Fatalf("park of a connection on a reused descriptor: %v", err)
		}
		if !s.Unpark(oldKey) {
			t.Fatal("the closed connection's key was not parked")
		}
		peer.Write([]byte("x"))
		waitFor(t, "the reused descriptor's wake-up", func() bool { return woken.Load() == 1 })
		t.Logf("descriptor %d reused after %d tries", oldFD, try)
		if oldWoken.Load() != 0 || s.Len() != 0 {
			t.Fatalf("closed connection woken %d times, %d parked; want 0, 0", oldWoken.Load(), s.Len())
		}
		return
	}
}
