package rendezvous

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// rawTCPRegister registers a raw TLS client over TCP and reads its
// REGISTERED.
func rawTCPRegister(t testing.TB, rs *RunningServer) (*tls.Conn, *frameReader) {
	t.Helper()
	return rawTCPRegisterKey(t, rs, mustKey(t))
}

// rawTCPRegisterKey is rawTCPRegister with key.
func rawTCPRegisterKey(t testing.TB, rs *RunningServer, key *identity.Key) (*tls.Conn, *frameReader) {
	t.Helper()
	cert, err := key.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tls.Dial("tcp", rs.TCPAddr().String(), &tls.Config{
		InsecureSkipVerify: true, NextProtos: []string{ALPN}, Certificates: []tls.Certificate{cert},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	reg, err := appendFrame(nil, typeRegister, registerBody{Agent: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Write(reg); err != nil {
		t.Fatal(err)
	}
	fr := newFrameReader(tc, 0)
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if typ, _, err := fr.next(); err != nil || typ != typeRegistered {
		t.Fatalf("first frame %v, %v; want REGISTERED", typ, err)
	}
	return tc, fr
}

func waitTCPParked(t testing.TB, rs *RunningServer, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for rs.Stats().TCPReadersParked != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d TCP readers parked, want %d", rs.Stats().TCPReadersParked, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTCPParkedShutdown: a server whose TCP registrations' readers are
// parked stops at once (the writer closing the connection must wake the
// parked reader: a closed descriptor leaves the epoll set silently).
func TestTCPParkedShutdown(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("readers park on Linux only (epoll)")
	}
	for _, ws := range []bool{false, true} {
		rs := startTestServer(t, ServerConfig{IdleTimeout: 20 * time.Second, TCPPark: 20 * time.Millisecond})
		if ws {
			// A registration inside a WebSocket parks too.
			startClient(t, "ws", mustKey(t), []ServerAddr{rs.ServerAddr()}, nil, forceTCP, func(c *ClientConfig) { c.WebSocket = true })
		} else {
			rawTCPRegister(t, rs)
		}
		waitTCPParked(t, rs, 1)
		start := time.Now()
		rs.Close()
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("websocket %v: server with a parked TCP reader took %v to stop", ws, took)
		}
	}
}

// TestTCPParkedReplaced: a parked TCP registration replaced by a newer
// one of the same peer ends at once: the introduction waiting for its
// answer fails then (ErrPeerOffline, ReasonReregistered), not at the
// old session's idle timeout.
func TestTCPParkedReplaced(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("readers park on Linux only (epoll)")
	}
	rs := startTestServer(t, ServerConfig{IdleTimeout: 20 * time.Second, IntroTimeout: 20 * time.Second, TCPPark: 20 * time.Millisecond})
	kb := mustKey(t)
	_, fr := rawTCPRegisterKey(t, rs, kb)
	waitTCPParked(t, rs, 1)
	a := startClient(t, "a", mustKey(t), []ServerAddr{rs.ServerAddr()}, newTransport(t))
	res := make(chan error, 1)
	go func() {
		_, err := a.Connect(testCtx(t, 30*time.Second), kb.ID(), PeerInfo{})
		res <- err
	}()
	// The INTRO reaches the old connection; its reader stays parked.
	if typ, _, err := fr.next(); err != nil || typ != typeIntro {
		t.Fatalf("old connection got %v, %v; want INTRO", typ, err)
	}
	waitTCPParked(t, rs, 1)
	start := time.Now()
	rawTCPRegisterKey(t, rs, kb)
	select {
	case err := <-res:
		var ce *ConnectError
		if !errors.Is(err, ErrPeerOffline) || !errors.As(err, &ce) || ce.Reason != ReasonReregistered {
			t.Fatalf("introduction to the replaced registration: %v; want ErrPeerOffline, %q", err, ReasonReregistered)
		}
		t.Logf("introduction failed %v after the new registration", time.Since(start))
	case <-time.After(3 * time.Second):
		t.Fatal("the introduction to the replaced parked registration did not fail within 3s")
	}
}

// holdConn holds what is written to it once hold is set (the test
// sends it on the connection itself, a byte at a time).
type holdConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	held []byte
}

func (c *holdConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold {
		c.held = append(c.held, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// TestTCPTrickleEndsAtIdle: a client that trickles a never-finished
// frame, a byte every 50 ms after its reader parked, keeps no reader (nor
// its goroutine) past IdleTimeout: the session ends then. Both a frame's
// bytes (each in a TLS record of its own: every byte reaches the frame
// reader) and a TLS record's (none reaches it: the record layer holds
// them, and the reader parks again between bytes).
func TestTCPTrickleEndsAtIdle(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("readers park on Linux only (epoll)")
	}
	const idle = time.Second
	for _, mode := range []string{"frame", "record"} {
		t.Run(mode, func(t *testing.T) {
			rs := startTestServer(t, ServerConfig{IdleTimeout: idle, TCPPark: 20 * time.Millisecond})
			cert, err := mustKey(t).Certificate()
			if err != nil {
				t.Fatal(err)
			}
			raw, err := net.Dial("tcp", rs.TCPAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			hc := &holdConn{Conn: raw}
			tc := tls.Client(hc, &tls.Config{
				InsecureSkipVerify: true, NextProtos: []string{ALPN}, Certificates: []tls.Certificate{cert},
			})
			defer tc.Close()
			reg, _ := appendFrame(nil, typeRegister, registerBody{Agent: "test"})
			if _, err := tc.Write(reg); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			fr := newFrameReader(tc, 0)
			tc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if typ, _, err := fr.next(); err != nil || typ != typeRegistered {
				t.Fatalf("first frame %v, %v; want REGISTERED", typ, err)
			}
			waitTCPParked(t, rs, 1)
			// An unknown extension frame of 1000 bytes: the server would
			// skip it, once whole.
			frame := append([]byte{frameVersion, 0xfe, 0x03, 0xe8}, make([]byte, 1000)...)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			defer func() { close(stop); wg.Wait() }()
			var trickle func(i int) error
			switch mode {
			case "frame":
				trickle = func(i int) error { _, err := tc.Write(frame[i : i+1]); return err }
			case "record":
				hc.mu.Lock()
				hc.hold = true
				hc.mu.Unlock()
				if _, err := tc.Write(frame); err != nil {
					t.Fatal(err)
				}
				hc.mu.Lock()
				rec := hc.held
				hc.held = nil
				hc.mu.Unlock()
				trickle = func(i int) error { _, err := raw.Write(rec[i : i+1]); return err }
			}
			wg.Go(func() {
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				for i := 0; i < len(frame)-1; i++ {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					if trickle(i) != nil {
						return
					}
				}
			})
			tc.SetReadDeadline(time.Now().Add(5 * time.Second))
			for {
				if _, _, err := fr.next(); err != nil {
					if took := time.Since(start); took < idle || took > idle+time.Second || (!errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF)) {
						t.Fatalf("connection ended after %v with %v; want EOF after about %v", took, err, idle)
					} else {
						t.Logf("connection ended after %v", took)
					}
					break
				}
			}
			waitFor(t, "the session to end", func() bool { st := rs.Stats(); return st.Peers == 0 && st.TCPReadersParked == 0 })
		})
	}
}

// TestTCPConnectsDuringShutdown: TCP connections that arrive while the
// server stops are closed (under -race: the hook that closes them on
// shutdown read the connection variable that handleConn then rebinds to
// its tlstake.Bounded).
func TestTCPConnectsDuringShutdown(t *testing.T) {
	for range 10 {
		rs := startTestServer(t, ServerConfig{})
		addr := rs.TCPAddr().String()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", addr, time.Second)
					if err != nil {
						continue
					}
					c.Close()
				}
			})
		}
		time.Sleep(20 * time.Millisecond)
		rs.Close()
		close(stop)
		wg.Wait()
	}
}

// TestShutdownWriterBlocked: a registration that sends PINGs and reads
// none of the PONGs (its receive window full, the server's writer blocked
// in Write) does not hold the server's stop for its write deadline
// (IdleTimeout): the stop cuts the blocked write short (about 2s: the
// write's grace, then the ERROR's second; 21.6s before).
func TestShutdownWriterBlocked(t *testing.T) {
	rs := startTestServer(t, ServerConfig{IdleTimeout: 20 * time.Second, TCPPark: 20 * time.Millisecond})
	cert, err := mustKey(t).Certificate()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", rs.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw.(*net.TCPConn).SetReadBuffer(4096)
	cc := &countConn{Conn: raw}
	tc := tls.Client(cc, &tls.Config{
		InsecureSkipVerify: true, NextProtos: []string{ALPN}, Certificates: []tls.Certificate{cert},
	})
	reg, _ := appendFrame(nil, typeRegister, registerBody{Agent: "test"})
	if _, err := tc.Write(reg); err != nil {
		t.Fatal(err)
	}
	// The server's send buffer small (no autotuning): its writer blocks
	// on the PONGs soon, and its reader waits for it (awaitSpace).
	waitFor(t, "the registration", func() bool { return rs.Stats().Peers == 1 })
	rs.mu.Lock()
	for _, ss := range rs.peers {
		ss.rw.(interface{ ParkConn() net.Conn }).ParkConn().(*net.TCPConn).SetWriteBuffer(4096)
	}
	rs.mu.Unlock()
	var pings []byte
	for i := range 100 {
		p, _ := appendFrame(nil, typePing, pingBody{Seq: uint64(i)})
		pings = append(pings, p...)
	}
	// Write until the server stops reading (its writer is stuck): no
	// byte goes out for a second.
	var wg sync.WaitGroup
	defer wg.Wait()
	defer tc.Close()
	wg.Go(func() {
		for {
			if _, err := tc.Write(pings); err != nil {
				return
			}
		}
	})
	last, since := cc.n.Load(), time.Now()
	for deadline := time.Now().Add(30 * time.Second); time.Since(since) < time.Second; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the server kept reading PINGs whose PONGs nobody read")
		}
		if n := cc.n.Load(); n != last {
			last, since = n, time.Now()
		}
	}
	start := time.Now()
	rs.Close()
	// A second for the blocked write (closeWriteGrace), one for the ERROR,
	// one for close_notify.
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the server took %v to stop with a writer blocked on a peer that reads nothing", took)
	} else {
		t.Logf("stopped in %v", took)
	}
}

// TestTCPParkTimerRacesWake: PINGs that come just before the idle timeout,
// when the parked reader's timer fires too: whichever of the two wins,
// the reader resumes once (under -race: two readers would share the
// frame reader), the server's count of parked readers stays balanced
// (it stops at once), and no goroutine is left.
func TestTCPParkTimerRacesWake(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("readers park on Linux only (epoll)")
	}
	const idle = 200 * time.Millisecond
	rs := startTestServer(t, ServerConfig{IdleTimeout: idle, TCPPark: 5 * time.Millisecond, Limits: LimitConfig{Disable: true},
		Logger: slog.New(slog.DiscardHandler)})
	const n = 40
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		tc, _ := rawTCPRegister(t, rs)
		wg.Go(func() { io.Copy(io.Discard, tc) })
		wg.Go(func() {
			for seq := uint64(0); ; seq++ {
				// Up to 20 ms before the idle timeout after the last.
				d := idle - time.Duration(rand.Int64N(int64(20*time.Millisecond))) + time.Duration(i)*time.Microsecond
				select {
				case <-stop:
					return
				case <-time.After(d):
				}
				p, _ := appendFrame(nil, typePing, pingBody{Seq: seq})
				tc.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := tc.Write(p); err != nil {
					return
				}
			}
		})
	}
	time.Sleep(3 * time.Second)
	st := rs.Stats()
	start := time.Now()
	rs.Close()
	took := time.Since(start)
	close(stop)
	wg.Wait()
	t.Logf("%d of %d registrations left after 3s of PINGs at about the idle timeout; stopped in %v", st.Peers, n, took)
	if took > 2*time.Second {
		t.Fatalf("the server took %v to stop", took)
	}
}

// countConn counts the bytes written to it.
type countConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}
