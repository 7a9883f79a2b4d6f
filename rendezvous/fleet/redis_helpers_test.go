package fleet

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
	"github.com/reachp2p/reach/rendezvous"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type logWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func tlogWriter(t testing.TB, name string) *logWriter {
	w := &logWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return w
}

func testLogger(t testing.TB, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter(t, name), &slog.HandlerOptions{Level: slog.LevelDebug})).With("who", name)
}

func mustKey(t testing.TB) *identity.Key {
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fleetServer is one rendezvous server of a test fleet.
type fleetServer struct {
	rs  *rendezvous.RunningServer
	reg *Registry
}

func startFleetServer(t testing.TB, name, url string, fcfg Config, scfg rendezvous.ServerConfig) *fleetServer {
	t.Helper()
	if fcfg.Logger == nil {
		fcfg.Logger = testLogger(t, name+"/fleet")
	}
	reg, err := New(url, fcfg)
	if err != nil {
		t.Fatal(err)
	}
	scfg.Registry = reg
	if scfg.Logger == nil {
		scfg.Logger = testLogger(t, name)
	}
	rs, err := rendezvous.StartServer(context.Background(), scfg, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		reg.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close(); reg.Close() })
	return &fleetServer{rs: rs, reg: reg}
}

func startClient(t testing.TB, name string, key *identity.Key, srv *fleetServer) *rendezvous.Client {
	t.Helper()
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: uc}
	c, err := rendezvous.NewClient(rendezvous.ClientConfig{
		Key:         key,
		Servers:     []rendezvous.ServerAddr{srv.rs.ServerAddr()},
		Transport:   tr,
		Logger:      testLogger(t, name),
		DialTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); tr.Close(); uc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("%s: Start: %v", name, err)
	}
	return c
}

// answerAll accepts every introduction with cands, and records the offers.
func answerAll(t testing.TB, c *rendezvous.Client, cands ...rendezvous.Candidate) <-chan rendezvous.PeerInfo {
	offers := make(chan rendezvous.PeerInfo, 64)
	var wg sync.WaitGroup
	wg.Go(func() {
		for in := range c.Incoming() {
			select {
			case offers <- in.Offer:
			default:
			}
			if err := in.Accept(rendezvous.PeerInfo{Candidates: cands}); err != nil {
				t.Logf("accept: %v", err)
			}
		}
	})
	t.Cleanup(func() { c.Close(); wg.Wait() })
	return offers
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// registered waits until peer's registration names srv in Redis.
func registered(t testing.TB, srv *fleetServer, peer identity.PeerID, within time.Duration) {
	t.Helper()
	waitFor(t, within, "registration of "+peer.Short(), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		home, err := srv.reg.Lookup(ctx, peer)
		return err == nil && home == srv.rs.Instance()
	})
}
