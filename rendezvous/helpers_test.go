package rendezvous

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tlogWriter routes log lines to t.Log until the test ends.
type tlogWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tlogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t testing.TB, name string) *slog.Logger {
	w := &tlogWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})).With("who", name)
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustKey(t testing.TB) *identity.Key {
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func startTestServer(t testing.TB, cfg ServerConfig) *RunningServer {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t, "server")
	}
	rs, err := StartServer(context.Background(), cfg, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs
}

func newTransport(t testing.TB) *quic.Transport {
	t.Helper()
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: uc}
	t.Cleanup(func() { tr.Close(); uc.Close() })
	return tr
}

type clientOpt func(*ClientConfig)

func forceTCP(c *ClientConfig) { c.ForceTCP = true }

func newTestClient(t testing.TB, name string, key *identity.Key, servers []ServerAddr, tr *quic.Transport, opts ...clientOpt) *Client {
	t.Helper()
	cfg := ClientConfig{
		Key:         key,
		Servers:     servers,
		Transport:   tr,
		Logger:      testLogger(t, name),
		DialTimeout: 2 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func startClient(t testing.TB, name string, key *identity.Key, servers []ServerAddr, tr *quic.Transport, opts ...clientOpt) *Client {
	t.Helper()
	c := newTestClient(t, name, key, servers, tr, opts...)
	if err := c.Start(testCtx(t, 5*time.Second)); err != nil {
		t.Fatalf("%s: Start: %v", name, err)
	}
	return c
}

// answerAll accepts every introduction with the given candidates until
// the client closes.
func answerAll(t testing.TB, c *Client, cands ...Candidate) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for in := range c.Incoming() {
			if err := in.Accept(PeerInfo{Candidates: cands}); err != nil {
				t.Logf("accept: %v", err)
			}
		}
	})
	t.Cleanup(func() { c.Close(); wg.Wait() })
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
