package rendezvous

import (
	"crypto/tls"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"
)

// TestTCPReaderParks: an idle TCP registration's reader parks between the
// node's pings (no goroutine on the server), the node stays registered
// across them, and an introduction to it goes through while it is parked
// (the server's INTRO goes out from the writer; the node's ANSWER wakes
// the reader).
func TestTCPReaderParks(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("readers park on Linux only (epoll)")
	}
	for _, ws := range []bool{false, true} {
		name := map[bool]string{false: "tls", true: "websocket"}[ws]
		t.Run(name, func(t *testing.T) { testTCPReaderParks(t, ws) })
	}
}

func testTCPReaderParks(t *testing.T, ws bool) {
	rs := startTestServer(t, ServerConfig{IdleTimeout: 3 * time.Second, TCPPark: 20 * time.Millisecond})
	servers := []ServerAddr{rs.ServerAddr()}
	kb := mustKey(t)
	b := startClient(t, "b", kb, servers, newTransport(t), forceTCP, func(c *ClientConfig) { c.WebSocket = ws })
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	waitParked := func(want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for rs.Stats().TCPReadersParked != want {
			if time.Now().After(deadline) {
				t.Fatalf("%d TCP readers parked, want %d", rs.Stats().TCPReadersParked, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitParked(1)
	go func() {
		for in := range b.Incoming() {
			in.Accept(PeerInfo{})
		}
	}()
	for i := range 3 {
		waitParked(1)
		if _, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{}); err != nil {
			t.Fatalf("introduction %d to a parked TCP registration: %v", i, err)
		}
	}
	// Two idle timeouts of pings: b stays registered, parked between them;
	// its TLS (and the WebSocket's outer TLS) taken over.
	time.Sleep(6 * time.Second)
	if st, taken := rs.Stats(), uint64(1+b2i(ws)); st.Peers != 2 || st.TLSTaken != taken {
		t.Fatalf("%d peers registered, %d TLS taken over; want 2, %d", st.Peers, st.TLSTaken, taken)
	}
	waitParked(1)
}

// TestTCPParkedSilentEnds: a TCP registration that goes silent ends at
// IdleTimeout although its reader is parked, and a half-sent frame holds
// the reader (it does not park) only until then too.
func TestTCPParkedSilentEnds(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("readers park on Linux only (epoll)")
	}
	const idle = time.Second
	rs := startTestServer(t, ServerConfig{IdleTimeout: idle, TCPPark: 20 * time.Millisecond})
	cert, err := mustKey(t).Certificate()
	if err != nil {
		t.Fatal(err)
	}
	for _, partial := range []bool{false, true} {
		tc, err := tls.Dial("tcp", rs.TCPAddr().String(), &tls.Config{
			InsecureSkipVerify: true, NextProtos: []string{ALPN}, Certificates: []tls.Certificate{cert},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		reg, err := appendFrame(nil, typeRegister, registerBody{Agent: "test"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tc.Write(reg); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		fr := newFrameReader(tc, 0)
		tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if typ, _, err := fr.next(); err != nil || typ != typeRegistered {
			t.Fatalf("first frame %v, %v; want REGISTERED", typ, err)
		}
		if partial {
			// A PING's header and half its body, never the rest.
			ping, _ := appendFrame(nil, typePing, pingBody{Seq: 1})
			tc.Write(ping[:len(ping)-2])
		} else {
			deadline := time.Now().Add(2 * time.Second)
			for rs.Stats().TCPReadersParked != 1 {
				if time.Now().After(deadline) {
					t.Fatal("the silent registration's reader did not park")
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		// The server ends the session: an ERROR or EOF, after IdleTimeout.
		for {
			_, _, err := fr.next()
			if err != nil {
				if took := time.Since(start); took < idle || took > idle+2*time.Second || (!errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF)) {
					t.Fatalf("partial %v: connection ended after %v with %v; want EOF after about %v", partial, took, err, idle)
				}
				break
			}
		}
		if st := rs.Stats(); st.TCPReadersParked != 0 {
			t.Fatalf("partial %v: %d readers still parked", partial, st.TCPReadersParked)
		}
	}
}
