package sock

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestSTUNConn: STUN on a plain helper socket: the answer is its address,
// a stray packet first is ignored, a lost request is sent again, and a
// silent server ends in ErrSTUNTimeout when ctx does.
func TestSTUNConn(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	self := c.LocalAddr().(*net.UDPAddr).AddrPort()
	srv := newSTUNServer(t, 1, false) // drops the first request
	// A stray datagram waiting on the socket is not an answer.
	stray, _ := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	stray.WriteToUDPAddrPort([]byte("not STUN"), self)
	stray.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := STUNConn(ctx, c, srv.addr())
	if err != nil || got != netip.AddrPortFrom(self.Addr().Unmap(), self.Port()) {
		t.Fatalf("STUNConn = %v, %v; want %v", got, err, self)
	}
	if n := srv.seen.Load(); n != 2 {
		t.Errorf("server saw %d requests, want 2 (one retransmission)", n)
	}
	silent := newSTUNServer(t, 0, true)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel2()
	if _, err := STUNConn(ctx2, c, silent.addr()); !errors.Is(err, ErrSTUNTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent server: %v, want ErrSTUNTimeout and DeadlineExceeded", err)
	}
}
