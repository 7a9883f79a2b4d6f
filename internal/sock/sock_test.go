package sock

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func listen(t *testing.T, addr string) *Socket {
	t.Helper()
	var ap netip.AddrPort
	if addr != "" {
		ap = netip.MustParseAddrPort(addr)
	}
	s, err := Listen(Config{Addr: ap, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func loopback(s *Socket) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), s.Port())
}

// stunServer is a minimal STUN server on loopback. It drops the first drop
// requests it sees, and answers none at all if silent is set.
type stunServer struct {
	conn   *net.UDPConn
	drop   atomic.Int32
	silent bool
	seen   atomic.Int32
	done   chan struct{}
}

func newSTUNServer(t *testing.T, drop int32, silent bool) *stunServer {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv := &stunServer{conn: conn, silent: silent, done: make(chan struct{})}
	srv.drop.Store(drop)
	go srv.serve()
	t.Cleanup(func() { conn.Close(); <-srv.done })
	return srv
}

func (s *stunServer) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (s *stunServer) serve() {
	defer close(s.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		s.seen.Add(1)
		req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if req.Decode() != nil || req.Type != stun.BindingRequest {
			continue
		}
		if s.silent || s.drop.Add(-1) >= 0 {
			continue
		}
		resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())}, stun.Fingerprint)
		if err != nil {
			continue
		}
		s.conn.WriteToUDPAddrPort(resp.Raw, from)
	}
}

func TestSTUN(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1:0"} {
		t.Run("bind="+addr, func(t *testing.T) {
			s := listen(t, addr)
			srv := newSTUNServer(t, 0, false)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := s.STUN(ctx, srv.addr())
			if err != nil {
				t.Fatal(err)
			}
			if want := loopback(s); got != want {
				t.Fatalf("STUN = %v, want %v", got, want)
			}
		})
	}
}

func TestSTUNRetransmit(t *testing.T) {
	s := listen(t, "")
	srv := newSTUNServer(t, 1, false) // drop the first request
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	got, err := s.STUN(ctx, srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	if got != loopback(s) {
		t.Fatalf("STUN = %v", got)
	}
	if n := srv.seen.Load(); n != 2 {
		t.Errorf("server saw %d requests, want 2", n)
	}
	if d := time.Since(start); d < stunRTO/2 {
		t.Errorf("answered after %v, before any retransmission was due", d)
	}
}

func TestSTUNTimeout(t *testing.T) {
	s := listen(t, "")
	srv := newSTUNServer(t, 0, true)
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	_, err := s.STUN(ctx, srv.addr())
	if !errors.Is(err, ErrSTUNTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrSTUNTimeout and DeadlineExceeded", err)
	}
	if n := srv.seen.Load(); n < 2 {
		t.Errorf("server saw %d requests, want retransmissions", n)
	}
}

func TestSTUNClosed(t *testing.T) {
	s := listen(t, "")
	srv := newSTUNServer(t, 0, true)
	errc := make(chan error, 1)
	go func() {
		_, err := s.STUN(context.Background(), srv.addr())
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("err = %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("STUN did not return after Close")
	}
	if _, err := s.STUN(context.Background(), srv.addr()); !errors.Is(err, ErrClosed) {
		t.Fatalf("STUN after Close: %v", err)
	}
	if err := s.WriteTo([]byte{0x3a}, srv.addr()); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteTo after Close: %v", err)
	}
}

type packet struct {
	data []byte
	from netip.AddrPort
}

func collect(s *Socket, first byte) chan packet {
	ch := make(chan packet, 16)
	s.Handle(first, func(pkt []byte, from netip.AddrPort) {
		ch <- packet{append([]byte(nil), pkt...), from}
	})
	return ch
}

func recv(t *testing.T, ch chan packet) packet {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(2 * time.Second):
		t.Fatal("no packet")
		return packet{}
	}
}

func TestDispatch(t *testing.T) {
	a, b := listen(t, ""), listen(t, "")
	c3a, c3b := collect(b, 0x3a), collect(b, 0x3b)
	stunReq := collect(b, 0x00) // requests from others still reach a handler

	for _, p := range [][]byte{{0x3a, 1}, {0x3b, 2}, {0x3c, 3}, {0x3a, 4}} {
		if err := a.WriteTo(p, loopback(b)); err != nil {
			t.Fatal(err)
		}
	}
	req, _ := stun.Build(stun.TransactionID, stun.BindingRequest)
	if err := a.WriteTo(req.Raw, loopback(b)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []byte{1, 4} {
		p := recv(t, c3a)
		if p.data[1] != want || p.from != loopback(a) {
			t.Errorf("0x3a handler got %v from %v, want [58 %d] from %v", p.data, p.from, want, loopback(a))
		}
	}
	if p := recv(t, c3b); p.data[1] != 2 {
		t.Errorf("0x3b handler got %v", p.data)
	}
	if p := recv(t, stunReq); !stun.IsMessage(p.data) {
		t.Errorf("0x00 handler got %x", p.data)
	}
	select {
	case p := <-c3a:
		t.Errorf("unexpected packet %v", p)
	case <-time.After(50 * time.Millisecond):
	}

	b.Handle(0x3a, nil)
	defer func() {
		if recover() == nil {
			t.Error("Handle(0x40) did not panic")
		}
	}()
	b.Handle(0x40, func([]byte, netip.AddrPort) {})
}

// TestDualStackIPv4 checks that a dual-stack socket talks to an IPv4-only
// socket both ways and reports unmapped addresses.
func TestDualStackIPv4(t *testing.T) {
	ds := listen(t, "")
	if !ds.LocalAddr().Addr().Is6() {
		t.Skipf("no dual-stack socket on this system (bound %v)", ds.LocalAddr())
	}
	if !ds.ipv6 {
		t.Fatal("dual-stack socket not marked IPv6")
	}
	v4 := listen(t, "127.0.0.1:0")
	if v4.ipv6 || v4.LocalAddr() != loopback(v4) {
		t.Fatalf("v4 socket: ipv6=%v local=%v", v4.ipv6, v4.LocalAddr())
	}
	fromDS, fromV4 := collect(v4, 0x3a), collect(ds, 0x3a)

	if err := ds.WriteTo([]byte{0x3a, 1}, loopback(v4)); err != nil {
		t.Fatal(err)
	}
	p := recv(t, fromDS)
	if p.from != loopback(ds) {
		t.Errorf("v4 socket saw %v, want %v", p.from, loopback(ds))
	}
	if err := v4.WriteTo([]byte{0x3a, 2}, loopback(ds)); err != nil {
		t.Fatal(err)
	}
	p = recv(t, fromV4)
	if !p.from.Addr().Is4() || p.from != loopback(v4) {
		t.Errorf("dual-stack socket saw %v, want unmapped %v", p.from, loopback(v4))
	}
	// A v4-mapped destination works on both.
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), v4.Port())
	if err := ds.WriteTo([]byte{0x3a, 3}, mapped); err != nil {
		t.Fatal(err)
	}
	recv(t, fromDS)
	mapped = netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), ds.Port())
	if err := v4.WriteTo([]byte{0x3a, 4}, mapped); err != nil {
		t.Fatal(err)
	}
	recv(t, fromV4)
}

func TestWireAddr(t *testing.T) {
	v4 := netip.MustParseAddrPort("192.0.2.1:5")
	m := netip.MustParseAddrPort("[::ffff:192.0.2.1]:5")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:5")
	s6, s4 := &Socket{ipv6: true}, &Socket{}
	for _, tc := range []struct {
		s        *Socket
		in, want netip.AddrPort
	}{
		{s6, v4, m}, {s6, m, m}, {s6, v6, v6},
		{s4, v4, v4}, {s4, m, v4},
	} {
		if got := tc.s.wire(tc.in); got != tc.want {
			t.Errorf("wire(%v) on ipv6=%v = %v, want %v", tc.in, tc.s.ipv6, got, tc.want)
		}
	}
}

func TestCloseStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, err := Listen(Config{})
	if err != nil {
		t.Fatal(err)
	}
	collect(s, 0x3a)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The port is free again.
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(s.LocalAddr()))
	if err != nil {
		t.Fatalf("port still bound: %v", err)
	}
	c.Close()
}
