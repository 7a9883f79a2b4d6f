package rendezvous

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

// Helpers of the per-source limit tests. Linux routes all of 127/8 to lo,
// so each "source" binds its own loopback address.

// testLimits returns cfg, or cfg with every limit off when
// REACH_TEST_NO_LIMITS is set: the tests then show what the server did
// before it had limits (they must fail).
func testLimits(cfg LimitConfig) LimitConfig {
	if os.Getenv("REACH_TEST_NO_LIMITS") != "" {
		cfg.Disable = true
	}
	return cfg
}

func listenUDPOn(t testing.TB, ip string) *net.UDPConn {
	t.Helper()
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	return uc
}

// transportOn is a QUIC transport bound to ip, closed with the test.
func transportOn(t testing.TB, ip string) *quic.Transport {
	t.Helper()
	uc := listenUDPOn(t, ip)
	tr := &quic.Transport{Conn: uc}
	t.Cleanup(func() { tr.Close(); uc.Close() })
	return tr
}

// rawRegister registers key once over QUIC from tr, then hangs up: a
// registration without the client's reconnecting machinery.
func rawRegister(ctx context.Context, t testing.TB, tr *quic.Transport, key *identity.Key, sa ServerAddr) error {
	c, err := NewClient(ClientConfig{Key: key, Servers: []ServerAddr{sa}, Transport: tr, Logger: testLogger(t, "raw"), DialTimeout: 2 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close()
	cc, err := c.dialQUIC(ctx, sa)
	if err != nil {
		return err
	}
	defer cc.closeTransport()
	return cc.register(ctx)
}

func bindingRequest(t testing.TB) []byte {
	t.Helper()
	m, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

// stunOnce asks the server for this source's address as an honest client
// does: a request every 200 ms until an answer, within 5 s.
func stunOnce(t testing.TB, ip string, server netip.AddrPort) error {
	uc := listenUDPOn(t, ip)
	defer uc.Close()
	buf := make([]byte, 1500)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := uc.WriteToUDPAddrPort(bindingRequest(t), server); err != nil {
			return err
		}
		uc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := uc.Read(buf)
		if err == nil && stun.IsMessage(buf[:n]) {
			return nil
		}
	}
	return os.ErrDeadlineExceeded
}

// stunFlood sends binding requests from ip as fast as it can until ctx
// ends, and returns how many it sent and how many answers came back.
func stunFlood(ctx context.Context, t testing.TB, ip string, server netip.AddrPort) (sent, answered int) {
	uc := listenUDPOn(t, ip)
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			n, err := uc.Read(buf)
			if err != nil {
				return
			}
			if stun.IsMessage(buf[:n]) {
				answered++
			}
		}
	})
	req := bindingRequest(t)
	for ctx.Err() == nil {
		if _, err := uc.WriteToUDPAddrPort(req, server); err == nil {
			sent++
		}
		if sent%64 == 0 {
			runtime.Gosched()
		}
	}
	time.Sleep(200 * time.Millisecond) // the last answers
	uc.Close()
	wg.Wait()
	return sent, answered
}

// deafConn lets a QUIC client send its first datagram (the Initial) and
// nothing more, and never hears an answer: to the server, a handshake
// from a spoofed source.
// It hides the socket's other methods, so that quic-go uses only these.
type deafConn struct {
	uc     *net.UDPConn
	mu     sync.Mutex
	sent   bool
	closed chan struct{}
	once   sync.Once
}

func (c *deafConn) WriteTo(b []byte, a net.Addr) (int, error) {
	c.mu.Lock()
	first := !c.sent
	c.sent = true
	c.mu.Unlock()
	if first {
		return c.uc.WriteTo(b, a)
	}
	return len(b), nil
}

func (c *deafConn) ReadFrom([]byte) (int, net.Addr, error) {
	<-c.closed
	return 0, nil, net.ErrClosed
}

func (c *deafConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil // the socket itself stays open (no ICMP): the caller closes it
}

func (c *deafConn) LocalAddr() net.Addr         { return c.uc.LocalAddr() }
func (c *deafConn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline wakes the reader for good: quic-go's Transport.Close
// sets one to stop its reader on a socket it did not open.
func (c *deafConn) SetReadDeadline(t time.Time) error {
	if !t.IsZero() {
		c.once.Do(func() { close(c.closed) })
	}
	return nil
}
func (c *deafConn) SetWriteDeadline(time.Time) error { return nil }

// spoofedInitial sends one QUIC Initial to server from a socket on ip,
// whose answers go nowhere, and returns the socket (still open, so the
// server's answers are not refused) for the caller to close.
func spoofedInitial(t testing.TB, ip string, server netip.AddrPort) *net.UDPConn {
	uc := listenUDPOn(t, ip)
	dc := &deafConn{uc: uc, closed: make(chan struct{})}
	tr := &quic.Transport{Conn: dc}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	conn, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(server), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}}, &quic.Config{})
	cancel()
	if err == nil {
		conn.CloseWithError(0, "")
	}
	tr.Close()
	return uc
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
