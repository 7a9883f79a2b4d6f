//go:build linux

package relay

import (
	"context"
	"io"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTLSParkWatcherFails: when the watcher cannot take a link (no epoll
// set: descriptors exhausted), an idle TLS link keeps its read loop and
// stays linked (it is not ended because it could not park), and what it
// sends still gets through.
func TestTLSParkWatcherFails(t *testing.T) {
	epollCreate = func(int) (int, error) { return -1, unix.EMFILE }
	defer func() { epollCreate = unix.EpollCreate1 }()
	srv, sa, _ := dataServerConfig(t, ServerConfig{TLSPark: 20 * time.Millisecond}, nil)
	ka, kb := genKey(t), genKey(t)
	in := make(chan []byte, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	la, err := TLSDialer{}.DialLink(ctx, LinkParams{Server: sa, Key: ka, Handler: chanHandler(in), Logger: dataLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	lb, err := TLSDialer{}.DialLink(ctx, LinkParams{Server: sa, Key: kb, Handler: chanHandler(make(chan []byte, 1)), Logger: dataLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	waitUntil(t, func() bool { return srv.link(ka.ID()) != nil && srv.link(kb.ID()) != nil })
	pa := srv.link(ka.ID())
	time.Sleep(300 * time.Millisecond) // many TLSPark periods idle
	if srv.link(ka.ID()) != pa {
		t.Fatal("the idle TLS link was ended because it could not park")
	}
	if err := lb.Send(ka.ID(), []byte("still here")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-in:
		if string(got) != "still here" {
			t.Fatalf("got %q", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no packet over the link that could not park")
	}
}

// TestTLSParkAfterSplitFrame: a TLS link whose read loop moved its
// deadline while a frame was half read (its rest in a later TCP segment)
// parks once it idles after that frame, as after any other (not only
// after IdleTimeout, or its node's next keepalive, holding a goroutine
// and a read buffer meanwhile).
func TestTLSParkAfterSplitFrame(t *testing.T) {
	const park = 200 * time.Millisecond // its deadline moves every 100 ms
	srv, sa, _ := dataServerConfig(t, ServerConfig{TLSPark: park}, nil)
	k := genKey(t)
	tc := proofConn(t, sa, k)
	proof, err := appendKeyProof(nil, k, tc.ConnectionState())
	if err != nil {
		t.Fatal(err)
	}
	if err := helloAnswer(t, tc, proof); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, tc) // its PONGs
	parked := func(within time.Duration) bool {
		for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
			if srv.Metrics().Parked == 1 {
				return true
			}
		}
		return false
	}
	if !parked(5 * time.Second) {
		t.Fatal("the idle link did not park")
	}
	ping := appendFrame(nil, framePing, []byte("12345678"))
	// Wake it, then, past the deadline's next move, a PING and half of
	// another in one TLS record (the read loop moves its deadline with
	// the half buffered), then the rest.
	tc.Write(ping)
	time.Sleep(140 * time.Millisecond)
	tc.Write(append(slices.Clone(ping), ping[:5]...))
	time.Sleep(20 * time.Millisecond)
	tc.Write(ping[5:])
	if !parked(5 * park) {
		t.Fatalf("not parked %v after its last frame (idle timeout %v)", 5*park, srv.cfg.IdleTimeout)
	}
}
