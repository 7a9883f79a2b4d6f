package relay_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

func TestMain(m *testing.M) {
	// The test binary doubles as BenchmarkRelayIdleMemory's server process.
	if os.Getenv("RELAY_MEM_SERVER") != "" {
		if err := memServerChild(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// And as BenchmarkRelayCPU's server.
	if kind := os.Getenv("RELAY_CPU_CHILD"); kind != "" {
		if err := relayCPUChild(kind); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// And as BenchmarkRelayScale's client farms.
	if spec := os.Getenv("RELAY_SCALE_FARM"); spec != "" {
		if err := farmChild(spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startServer runs rendezvous + relay on loopback.
func startServer(t testing.TB, rcfg relay.ServerConfig) (*rendezvous.RunningServer, *relay.Server) {
	t.Helper()
	slog := testLogger(t).With("side", "server")
	if rcfg.Logger == nil {
		rcfg.Logger = testLogger(t).With("side", "relay")
	} else {
		slog = rcfg.Logger
	}
	rl := relay.NewServer(rcfg)
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Logger:    slog,
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
	}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs, rl
}

func newNode(t testing.TB, cs string, cfg reach.Config) *reach.Node {
	t.Helper()
	cfg.Servers = []string{cs}
	if cfg.Strategies == nil {
		cfg.Strategies = []string{reach.StrategyRelay}
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	cfg.ListenAddr = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.DisablePortMapping = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := reach.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// echo serves every stream n accepts by copying it back.
func echo(n *reach.Node) {
	go func() {
		for {
			c, err := n.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.CloseWrite()
			}()
		}
	}()
}

// roundTrip sends size random bytes on c and checks the echo.
func roundTrip(c *stream.Stream, size int) error {
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("reading echo after %d bytes: %w", n, err)
	}
	if err := <-werr; err != nil {
		return err
	}
	want := sha256.Sum256(data)
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo: %d bytes, want %d, intact=%v", n, size, bytes.Equal(h.Sum(nil), want[:]))
	}
	return nil
}

func TestToken(t *testing.T) {
	k, _ := identity.GenerateKey()
	other, _ := identity.GenerateKey()
	s1, s2 := []byte("old secret"), []byte("new secret")
	now := time.Now()
	tok := relay.NewToken(s1, k.ID(), now.Add(time.Hour))
	for _, c := range []struct {
		name    string
		secrets [][]byte
		peer    identity.PeerID
		token   string
		want    error
	}{
		{"valid", [][]byte{s1}, k.ID(), tok, nil},
		{"rotation", [][]byte{s2, s1}, k.ID(), tok, nil},
		{"other secret", [][]byte{s2}, k.ID(), tok, relay.ErrBadToken},
		{"other peer", [][]byte{s1}, other.ID(), tok, relay.ErrBadToken},
		{"expired", [][]byte{s1}, k.ID(), relay.NewToken(s1, k.ID(), now.Add(-time.Second)), relay.ErrTokenExpired},
		{"empty", [][]byte{s1}, k.ID(), "", relay.ErrBadToken},
		{"garbage", [][]byte{s1}, k.ID(), "x:y", relay.ErrBadToken},
		{"tampered expiry", [][]byte{s1}, k.ID(), "9" + tok, relay.ErrBadToken},
	} {
		if err := relay.CheckToken(c.secrets, c.peer, c.token, now); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// TestRelayLoopback: two nodes with only the relay rung connect through it
// over UDP, and over TLS when UDP is refused to the relay.
func TestRelayLoopback(t *testing.T) {
	rs, rl := startServer(t, relay.ServerConfig{})
	a := newNode(t, rs.ConnectString(), reach.Config{})
	b := newNode(t, rs.ConnectString(), reach.Config{})
	echo(b)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	sess, err := a.DialSession(ctx, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("relayed session in %v over %s", time.Since(start), a.Status().RelayTransport)
	if sess.Strategy() != reach.StrategyRelay || a.Status().RelayTransport != "udp" {
		t.Fatalf("strategy %q transport %q, want relay over udp", sess.Strategy(), a.Status().RelayTransport)
	}
	c, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, 4<<20); err != nil {
		t.Fatal(err)
	}
	c.Close()
	st := rl.Stats()
	t.Logf("relay stats: %+v", st)
	if st.Clients != 2 || st.Sessions != 2 || st.Bytes < 8<<20 {
		t.Errorf("stats %+v: want 2 clients, 2 sessions, >= 8 MiB", st)
	}
}

// TestRelayToken: a relay that requires a token refuses a node without
// one or with a wrong one (ErrBadToken) or an expired one
// (ErrTokenExpired), at once, and lets a node with a valid one through; a
// rotated-out secret's tokens stop working.
func TestRelayToken(t *testing.T) {
	secret, old := []byte("current"), []byte("previous")
	rs, rl := startServer(t, relay.ServerConfig{Secrets: [][]byte{secret, old}})
	kb, _ := identity.GenerateKey()
	b := newNode(t, rs.ConnectString(), reach.Config{Key: kb, RelayToken: func() string {
		return relay.NewToken(old, kb.ID(), time.Now().Add(time.Hour)) // accepted while old is listed
	}})
	echo(b)
	for _, c := range []struct {
		name  string
		token func(identity.PeerID) string
		want  error
	}{
		{"none", func(identity.PeerID) string { return "" }, relay.ErrBadToken},
		{"wrong secret", func(id identity.PeerID) string { return relay.NewToken([]byte("guess"), id, time.Now().Add(time.Hour)) }, relay.ErrBadToken},
		{"other peer's", func(identity.PeerID) string { return relay.NewToken(secret, kb.ID(), time.Now().Add(time.Hour)) }, relay.ErrBadToken},
		{"expired", func(id identity.PeerID) string { return relay.NewToken(secret, id, time.Now().Add(-time.Minute)) }, relay.ErrTokenExpired},
		{"valid", func(id identity.PeerID) string { return relay.NewToken(secret, id, time.Now().Add(time.Hour)) }, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, _ := identity.GenerateKey()
			a := newNode(t, rs.ConnectString(), reach.Config{Key: k, RelayToken: func() string { return c.token(k.ID()) }})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			sess, err := a.DialSession(ctx, b.ID())
			t.Logf("%v after %v", err, time.Since(start))
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := sess.Ping(ctx); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			var se *relay.ServerError
			if !errors.As(err, &se) {
				t.Errorf("err %v is not a *relay.ServerError", err)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("refusal took %v", el)
			}
		})
	}
	if st := rl.Stats(); st.AuthFailures != 4 {
		t.Errorf("auth failures %d, want 4", st.AuthFailures)
	}
}

// TestRelayLimits: a relay at its session limit answers a new pair with
// ErrRelayFull at once while the sessions it has keep working; a relay at
// its client limit refuses the link with ErrRelayFull.
func TestRelayLimits(t *testing.T) {
	rs, rl := startServer(t, relay.ServerConfig{MaxSessions: 2, MaxClients: 3})
	a := newNode(t, rs.ConnectString(), reach.Config{})
	b := newNode(t, rs.ConnectString(), reach.Config{})
	echo(b)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sess, err := a.DialSession(ctx, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	c, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A round trip on another stream: both directions have relayed
	// packets then (the handshake's first packets may have flown through
	// the server, not the relay: first flights).
	c0, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c0, 1024); err != nil {
		t.Fatal(err)
	}
	if st := rl.Stats(); st.Sessions != 2 {
		t.Fatalf("sessions %d, want 2 (a->b, b->a)", st.Sessions)
	}
	// A third peer: its link is accepted (3 clients), its session is not.
	n3 := newNode(t, rs.ConnectString(), reach.Config{})
	start := time.Now()
	_, err = n3.DialSession(ctx, b.ID())
	t.Logf("over the session limit: %v after %v", err, time.Since(start))
	if !errors.Is(err, relay.ErrRelayFull) {
		t.Fatalf("err = %v, want ErrRelayFull", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("refusal took %v", el)
	}
	if err := roundTrip(c, 1<<20); err != nil {
		t.Fatalf("existing session after the refusal: %v", err)
	}
	// A fourth peer: over the client limit.
	n4 := newNode(t, rs.ConnectString(), reach.Config{})
	_, err = n4.DialSession(ctx, b.ID())
	t.Logf("over the client limit: %v", err)
	var se *relay.ServerError
	if !errors.Is(err, relay.ErrRelayFull) || !errors.As(err, &se) {
		t.Fatalf("err = %v, want a *ServerError ErrRelayFull", err)
	}
	if _, err := sess.Ping(ctx); err != nil {
		t.Fatalf("existing session after the refusals: %v", err)
	}
}
