//go:build linux

package relay

import (
	"context"
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
