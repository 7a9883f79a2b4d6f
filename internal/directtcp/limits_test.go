package directtcp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/stream"
)

// silentServer accepts TCP connections and never answers: a dial to it
// connects and then hangs in its TLS handshake. closed reports, for each
// connection, when the dialler closed it (the read returned).
type silentServer struct {
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	open   int
	closed chan struct{}
}

func newSilentServer(t *testing.T) *silentServer {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silentServer{ln: ln, closed: make(chan struct{}, 16)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.open++
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				io.Copy(io.Discard, c) // until the dialler closes (EOF or reset)
				c.Close()
				s.mu.Lock()
				s.open--
				s.mu.Unlock()
				s.closed <- struct{}{}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *silentServer) addr() netip.AddrPort { return addrPort(s.ln.Addr()) }

func (s *silentServer) waitClosed(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-s.closed:
	case <-time.After(d):
		t.Errorf("the connection to the silent server was not closed within %v (half-open)", d)
	}
}

// TestLosersLeaveNothing: of one dial's attempts, the one to the peer
// wins; the one stuck in its handshake (a server that accepts and never
// answers) and the one to a second listener of the peer's key are
// cancelled or closed: the silent server sees its connection closed at
// once, the second listener ends up with no live session and nothing
// pending, and no goroutine of the dial is left. A dial whose every
// attempt hangs returns at its ctx's end, leaving nothing behind either.
func TestLosersLeaveNothing(t *testing.T) {
	sk, ck := mustKey(t), mustKey(t)
	srv1, got1 := startRung(t, "127.0.0.1:0", sk, Limits{})
	srv2, got2 := startRung(t, "127.0.0.1:0", sk, Limits{})
	silent := newSilentServer(t)
	ignore := goleak.IgnoreCurrent()
	fds := openFDs(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 5 {
		a := attempt(t, ck, sk.ID(),
			candidate.Candidate{Addr: silent.addr(), Kind: candidate.TCPHost},
			candidate.Candidate{Addr: srv1.Listener().Addr(), Kind: candidate.TCPHost},
			candidate.Candidate{Addr: srv2.Listener().Addr(), Kind: candidate.TCPHost})
		var d net.Dialer
		sess, err := DialFirst(ctx, a, d.DialContext, a.Remote.Addrs(candidate.TCPHost))
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		silent.waitClosed(t, 5*time.Second)
		var loser *Listener
		var loserGot *sessions
		switch sess.RemoteAddr() {
		case srv1.Listener().Addr():
			loser, loserGot = srv2.Listener(), got2
		case srv2.Listener().Addr():
			loser, loserGot = srv1.Listener(), got1
		default:
			t.Fatalf("dial %d won at %v", i, sess.RemoteAddr())
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			live := 0
			for _, s := range loserGot.all() {
				if s.Context().Err() == nil {
					live++
				}
			}
			st := loser.Stats()
			if live == 0 && st.Pending == 0 {
				t.Logf("dial %d: the losing listener made %d sessions (all closed), %d failed handshakes", i, st.Sessions, st.Failed)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("dial %d: the losing listener still has %d live sessions, %d pending", i, live, st.Pending)
			}
			time.Sleep(10 * time.Millisecond)
		}
		sess.Abort()
	}
	goleak.VerifyNone(t, ignore)
	// Every socket the dials opened is closed: on this side (the dials'
	// connections, the sessions) and the servers' (accepted ones).
	waitFor(t, "the file descriptors of before the dials", func() bool { return openFDs(t) <= fds })

	// Every attempt hangs: the dial ends with its ctx.
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	a := attempt(t, ck, sk.ID(), candidate.Candidate{Addr: silent.addr(), Kind: candidate.TCPHost})
	start := time.Now()
	var d net.Dialer
	if _, err := DialFirst(short, a, d.DialContext, a.Remote.Addrs(candidate.TCPHost)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hanging dial: %v, want context.DeadlineExceeded", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("hanging dial returned after %v", el)
	}
	silent.waitClosed(t, 5*time.Second)
	goleak.VerifyNone(t, ignore)
	waitFor(t, "the file descriptors of before the dials", func() bool { return openFDs(t) <= fds })
}

// openFDs counts the process's open file descriptors (Linux), or skips.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd here:", err)
	}
	return len(ents)
}

// TestListenerFlood: connections that never finish their handshake are
// bounded: at most MaxPendingPerIP from one address and MaxPending in all
// are kept, the rest closed at once, each kept one closed at
// HandshakeTimeout; meanwhile a real peer from another address gets its
// session, and afterwards nothing is pending.
func TestListenerFlood(t *testing.T) {
	sk, ck := mustKey(t), mustKey(t)
	lim := Limits{MaxPending: 4, MaxPendingPerIP: 2, HandshakeTimeout: 500 * time.Millisecond}
	srv, got := startRung(t, "0.0.0.0:0", sk, lim)
	port := srv.Listener().Addr().Port()
	target := func(ip string) string { return netip.AddrPortFrom(netip.MustParseAddr(ip), port).String() }

	// 10 connections from 127.0.0.1, then 2 from each of 127.0.0.2 and
	// 127.0.0.3 (4 pending in all by then), then 2 from 127.0.0.4.
	type flood struct {
		c      net.Conn
		closed chan time.Duration
	}
	var conns []flood
	start := time.Now()
	dialFrom := func(src, dst string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp4", dst)
		if err != nil {
			t.Fatalf("flood from %s: %v", src, err)
		}
		f := flood{c, make(chan time.Duration, 1)}
		go func() {
			io.Copy(io.Discard, c)
			f.closed <- time.Since(start)
		}()
		conns = append(conns, f)
		return c
	}
	for range 10 {
		dialFrom("127.0.0.1", target("127.0.0.1"))
		time.Sleep(5 * time.Millisecond) // accepted in order
	}
	for _, src := range []string{"127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"} {
		dialFrom(src, target(src))
		time.Sleep(5 * time.Millisecond)
	}
	defer func() {
		for _, f := range conns {
			f.c.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond)
	if st := srv.Listener().Stats(); st.Pending != 4 || st.Refused != 12 {
		t.Errorf("during the flood: %+v, want 4 pending (2 per IP, 4 in all) and 12 refused", st)
	}
	early, late := 0, 0
	for _, f := range conns {
		select {
		case d := <-f.closed:
			if d < lim.HandshakeTimeout/2 {
				early++
			} else {
				late++
				t.Logf("closed after %v", d)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("a flood connection was never closed")
		}
	}
	if early != 12 || late != 4 {
		t.Errorf("%d closed at once, %d at the handshake timeout; want 12 and 4", early, late)
	}
	// (a connection is closed just before it is counted)
	waitFor(t, "nothing pending, 4 failed handshakes", func() bool {
		st := srv.Listener().Stats()
		return st.Pending == 0 && st.Failed == 4
	})

	// A real peer, while 127.0.0.1 floods again.
	for range 3 {
		dialFrom("127.0.0.1", target("127.0.0.1"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a := attempt(t, ck, sk.ID(), candidate.Candidate{Addr: netip.MustParseAddrPort(target("127.0.0.5")), Kind: candidate.TCPHost})
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}
	sess, err := DialFirst(ctx, a, d.DialContext, a.Remote.Addrs(candidate.TCPHost))
	if err != nil {
		t.Fatalf("a real peer during a flood: %v", err)
	}
	defer sess.Abort()
	if sess.Transport() != stream.TransportTCP {
		t.Errorf("session over %s", sess.Transport())
	}
	// (the listener's side completes after the dialler's)
	waitFor(t, "the listener's session", func() bool { return len(got.all()) == 1 })
}

// waitFor polls cond for 5 s (what takes milliseconds alone can take a
// second on a loaded machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
