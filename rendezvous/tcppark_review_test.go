package rendezvous

import (
	"crypto/tls"
	"errors"
	"runtime"
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
	rs := startTestServer(t, ServerConfig{IdleTimeout: 20 * time.Second, TCPPark: 20 * time.Millisecond})
	rawTCPRegister(t, rs)
	waitTCPParked(t, rs, 1)
	start := time.Now()
	rs.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("server with a parked TCP reader took %v to stop", took)
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
