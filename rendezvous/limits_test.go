package rendezvous

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestSourceOf(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":                 "192.0.2.7/32",
		"::ffff:192.0.2.7":          "192.0.2.7/32",
		"2001:db8:1:2:3:4:5:6":      "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1%eth0": "2001:db8:1:2::/64",
	} {
		if got := sourceOf(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("sourceOf(%s) = %v, want %s", in, got, want)
		}
	}
	if sourceOf(netip.Addr{}).IsValid() {
		t.Error("sourceOf(invalid) is valid")
	}
}

// TestBucketsBounded: a flood of new keys never makes the map grow past
// its cap, and a key over its rate is refused until it refills.
func TestBucketsBounded(t *testing.T) {
	b := newBuckets[netip.Prefix](Rate{PerSecond: 1, Burst: 2}, 100)
	now := time.Now()
	for i := range 100000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		b.allow(sourceOf(a), now)
		if n := len(b.m); n > 100 {
			t.Fatalf("after %d keys the map holds %d buckets, cap 100", i+1, n)
		}
	}
	k := sourceOf(netip.MustParseAddr("192.0.2.1"))
	if !b.allow(k, now) || !b.allow(k, now) || b.allow(k, now) {
		t.Fatal("burst of 2 not enforced")
	}
	if !b.allow(k, now.Add(time.Second)) {
		t.Fatal("bucket did not refill")
	}
	if newBuckets[netip.Prefix](Rate{PerSecond: -1}, 10).allow(k, now) != true {
		t.Fatal("a negative rate is not 'no limit'")
	}
}

func TestErrRateLimitedIsBusy(t *testing.T) {
	for _, err := range []error{
		&ProtocolError{Code: codeRateLimited},
		&ConnectError{Code: codeRateLimited},
	} {
		if !errors.Is(err, ErrRateLimited) || !errors.Is(err, ErrBusy) {
			t.Errorf("%v: not ErrRateLimited and ErrBusy", err)
		}
	}
	if errors.Is(ErrBusy, ErrRateLimited) {
		t.Error("ErrBusy is ErrRateLimited")
	}
}

// TestRateLimitedErrors: a peer ID that registers again and again, and
// one that asks for introductions too fast, get ErrRateLimited, counted.
func TestRateLimitedErrors(t *testing.T) {
	rs := startTestServer(t, ServerConfig{Limits: testLimits(LimitConfig{
		PeerIntros: Rate{PerSecond: 0.1, Burst: 5},
	})})
	sa := rs.ServerAddr()
	key := mustKey(t)
	tr := transportOn(t, "127.0.0.5")
	ok, limited := 0, 0
	for range DefaultPeerRegisterBurst + 2 {
		err := rawRegister(testCtx(t, 5*time.Second), t, tr, key, sa)
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrRateLimited):
			limited++
		default:
			t.Fatalf("registration: %v", err)
		}
	}
	t.Logf("%d registrations of one peer ID in a row: %d registered, %d rate-limited", ok, ok, limited)
	if ok < DefaultPeerRegisterBurst || limited == 0 {
		t.Errorf("want the first %d registered and the rest rate-limited", DefaultPeerRegisterBurst)
	}
	if got := rs.Stats().RegistrationsLimited; got != uint64(limited) {
		t.Errorf("Stats.RegistrationsLimited = %d, want %d", got, limited)
	}

	target := startClient(t, "target", mustKey(t), []ServerAddr{sa}, transportOn(t, "127.0.0.6"))
	answerAll(t, target)
	dialler := startClient(t, "dialler", mustKey(t), []ServerAddr{sa}, transportOn(t, "127.0.0.7"))
	var last error
	for i := range 6 {
		_, last = dialler.Connect(testCtx(t, 5*time.Second), target.cfg.Key.ID(), PeerInfo{})
		if i < 5 && last != nil {
			t.Fatalf("introduction %d: %v", i+1, last)
		}
	}
	var ce *ConnectError
	if !errors.Is(last, ErrRateLimited) || !errors.As(last, &ce) {
		t.Fatalf("6th introduction with a burst of 5: %v, want a *ConnectError with ErrRateLimited", last)
	}
	if got := rs.Stats().IntrosLimited; got != 1 {
		t.Errorf("Stats.IntrosLimited = %d, want 1", got)
	}
}

// TestIntroFloodFairShare: four identities on one hostile address flood
// one target with introductions (16 at a time each, as fast as they are
// answered; the target answers each after 100 ms). Without limits they
// fill the target's 32 waiting slots and honest diallers from other
// addresses are refused busy; now one source holds at most its share (8)
// and is rate-limited per peer ID, and every honest dialler gets through.
func TestIntroFloodFairShare(t *testing.T) {
	rs := startTestServer(t, ServerConfig{Limits: testLimits(LimitConfig{})})
	servers := []ServerAddr{rs.ServerAddr()}
	kt := mustKey(t)
	target := startClient(t, "target", kt, servers, transportOn(t, "127.0.0.10"))
	var answers sync.WaitGroup
	answers.Go(func() {
		var each sync.WaitGroup
		defer each.Wait()
		for in := range target.Incoming() {
			each.Go(func() {
				time.Sleep(100 * time.Millisecond)
				in.Accept(PeerInfo{})
			})
		}
	})
	t.Cleanup(func() { target.Close(); answers.Wait() })

	var hostile []*Client
	for i := range 4 {
		hostile = append(hostile, startClient(t, fmt.Sprintf("hostile%d", i), mustKey(t), servers, transportOn(t, "127.0.0.2")))
	}
	flood := testCtx(t, 3*time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	for _, h := range hostile {
		for range 16 {
			wg.Go(func() {
				for flood.Err() == nil {
					_, err := h.Connect(flood, kt.ID(), PeerInfo{})
					what := "answered"
					switch {
					case errors.Is(err, ErrRateLimited):
						what = "rate-limited"
						time.Sleep(10 * time.Millisecond)
					case errors.Is(err, ErrBusy):
						what = "busy"
					case err != nil:
						what = "other"
					}
					mu.Lock()
					counts[what]++
					mu.Unlock()
				}
			})
		}
	}
	time.Sleep(300 * time.Millisecond)
	var honest sync.WaitGroup
	var failed []error
	for i := range 6 {
		honest.Go(func() {
			c := startClient(t, fmt.Sprintf("honest%d", i), mustKey(t), servers, transportOn(t, fmt.Sprintf("127.0.0.%d", 20+i)))
			if _, err := c.Connect(testCtx(t, 10*time.Second), kt.ID(), PeerInfo{}); err != nil {
				mu.Lock()
				failed = append(failed, err)
				mu.Unlock()
			}
		})
	}
	honest.Wait()
	wg.Wait()
	st := rs.Stats()
	t.Logf("hostile (4 IDs, one address): %v; server: %d refused busy, %d rate-limited; honest failures: %d of 6",
		counts, st.IntrosRefused, st.IntrosLimited, len(failed))
	for _, err := range failed {
		t.Errorf("honest introduction during the flood: %v", err)
	}
	if counts["busy"]+counts["rate-limited"] == 0 {
		t.Error("the hostile flood was never refused")
	}
}

// TestWebSocketSlowRequest: the HTTPS listener drops a client that sends
// its request body slowly (it used to hold it as long as bytes trickled
// in), and the one answer of a connection closes it; a WebSocket that
// upgraded in time lives on past the handshake timeout.
func TestWebSocketSlowRequest(t *testing.T) {
	const hsTimeout = 500 * time.Millisecond
	rs := startTestServer(t, ServerConfig{HandshakeTimeout: hsTimeout})
	cert, err := mustKey(t).Certificate()
	if err != nil {
		t.Fatal(err)
	}
	dial := func() *tls.Conn {
		tc, err := tls.Dial("tcp", rs.TCPAddr().String(), &tls.Config{
			InsecureSkipVerify: true, NextProtos: []string{alpnHTTP}, Certificates: []tls.Certificate{cert},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		return tc
	}
	// closedWithin reports whether the server closes c within d while the
	// client trickles a byte every 100 ms.
	closedWithin := func(c *tls.Conn, d time.Duration) time.Duration {
		start := time.Now()
		gone := make(chan struct{})
		go func() {
			io.Copy(io.Discard, c)
			close(gone)
		}()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-gone:
				return time.Since(start)
			case <-tick.C:
				if time.Since(start) > d {
					c.Close()
					<-gone
					return -1
				}
				c.Write([]byte("a"))
			}
		}
	}
	slowBody := dial()
	fmt.Fprintf(slowBody, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
	if took := closedWithin(slowBody, 10*hsTimeout); took < 0 {
		t.Errorf("a slow request body held the connection for %v (handshake timeout %v)", 10*hsTimeout, hsTimeout)
	} else {
		t.Logf("slow body: closed after %v", took.Round(time.Millisecond))
	}
	slowHeader := dial()
	fmt.Fprintf(slowHeader, "GET /x HTTP/1.1\r\n")
	if took := closedWithin(slowHeader, 10*hsTimeout); took < 0 {
		t.Errorf("slow request headers held the connection for %v", 10*hsTimeout)
	}
	keepAlive := dial()
	fmt.Fprintf(keepAlive, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := readResponse(keepAlive)
	if err != nil || resp != 404 {
		t.Fatalf("GET /x: %d %v", resp, err)
	}
	keepAlive.SetReadDeadline(time.Now().Add(5 * hsTimeout))
	if _, err := io.Copy(io.Discard, keepAlive); err != nil {
		t.Errorf("the connection stayed open after its answer: %v", err)
	}

	servers := []ServerAddr{rs.ServerAddr()}
	b := startClient(t, "b", mustKey(t), servers, newTransport(t))
	answerAll(t, b)
	ws := startClient(t, "ws", mustKey(t), servers, nil, func(c *ClientConfig) { c.WebSocket = true })
	regs := rs.Stats().Registrations
	time.Sleep(3 * hsTimeout)
	if _, err := ws.Connect(testCtx(t, 5*time.Second), b.cfg.Key.ID(), PeerInfo{}); err != nil {
		t.Fatalf("WebSocket client after %v: %v", 3*hsTimeout, err)
	}
	if got := rs.Stats().Registrations; got != regs {
		t.Errorf("the WebSocket client registered again (%d registrations, was %d)", got, regs)
	}
}

// readResponse reads an HTTP response's status code and headers.
func readResponse(c net.Conn) (int, error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	var code int
	if _, err := fmt.Sscanf(line, "HTTP/1.1 %d", &code); err != nil {
		return 0, fmt.Errorf("status line %q: %w", line, err)
	}
	for {
		l, err := r.ReadString('\n')
		if err != nil || l == "\r\n" {
			return code, err
		}
	}
}
