package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/rendezvous"
)

// peerConfig parses args as a node command (listen) does and returns the
// node's Config.
func peerConfig(t *testing.T, args ...string) (reach.Config, error) {
	t.Helper()
	fs := newFlagSet("listen", "")
	var pf peerFlags
	pf.register(fs, true)
	key, _ := ncKey(t, "k")
	if err := parseFlags(fs, append([]string{"--key", key, "--server", "reach://x@127.0.0.1:1"}, args...)); err != nil {
		t.Fatal(err)
	}
	return pf.config(nil)
}

func TestNetFlags(t *testing.T) {
	t.Setenv("REACH_TURN_PASSWORD", "")
	t.Setenv("REACH_TURN_SECRET", "")
	cfg, err := peerConfig(t)
	if err != nil || cfg.Proxy != nil || cfg.IgnoreProxyEnvironment || cfg.ListenAddr.IsValid() || cfg.ListenAddr.Port() != 0 || cfg.TURN != nil {
		t.Errorf("no flags: %+v, %v", cfg, err)
	}
	cfg, err = peerConfig(t, "--proxy", "http://u:p@proxy.example:3128", "--port", "4900")
	if err != nil || cfg.Proxy == nil || cfg.Proxy.Host != "proxy.example:3128" || cfg.Proxy.User.Username() != "u" ||
		cfg.ListenAddr != netip.MustParseAddrPort("[::]:4900") {
		t.Errorf("--proxy --port: proxy %v, listen %v, %v", cfg.Proxy, cfg.ListenAddr, err)
	}
	if cfg, err = peerConfig(t, "--proxy", "none"); err != nil || cfg.Proxy != nil || !cfg.IgnoreProxyEnvironment {
		t.Errorf("--proxy none: %v %v, %v", cfg.Proxy, cfg.IgnoreProxyEnvironment, err)
	}
	cfg, err = peerConfig(t, "--turn", "turn:turn.example:3478", "--turn", "turns:turn.example", "--turn-user", "alice", "--turn-password", "pw")
	want := []reach.TURNServer{{URL: "turn:turn.example:3478", Username: "alice", Password: "pw"}, {URL: "turns:turn.example", Username: "alice", Password: "pw"}}
	if err != nil || !slices.EqualFunc(cfg.TURN, want, func(a, b reach.TURNServer) bool {
		return a.URL == b.URL && a.Username == b.Username && a.Password == b.Password && a.Secret == b.Secret
	}) {
		t.Errorf("--turn long-term: %+v, %v", cfg.TURN, err)
	}
	t.Setenv("REACH_TURN_SECRET", "s3cret")
	if cfg, err = peerConfig(t, "--turn", "turn:turn.example?transport=tcp"); err != nil || len(cfg.TURN) != 1 || cfg.TURN[0].Secret != "s3cret" || cfg.TURN[0].Username != "" {
		t.Errorf("--turn with $REACH_TURN_SECRET: %+v, %v", cfg.TURN, err)
	}
	t.Setenv("REACH_TURN_SECRET", "")

	for _, c := range []struct {
		args []string
		want error
	}{
		{[]string{"--proxy", "socks5://h:1080"}, errBadProxy},
		{[]string{"--proxy", "http://h"}, errBadProxy},
		{[]string{"--proxy", "h:3128"}, errBadProxy},
		{[]string{"--turn", "stun:turn.example", "--turn-secret", "s"}, errBadTURN},
		{[]string{"--turn", "turn://turn.example", "--turn-secret", "s"}, errBadTURN},
		{[]string{"--turn", "turn:turn.example"}, errTURNCredentials},
		{[]string{"--turn", "turn:turn.example", "--turn-user", "a"}, errTURNCredentials},
		{[]string{"--turn", "turn:turn.example", "--turn-user", "a", "--turn-password", "p", "--turn-secret", "s"}, errTURNCredentials},
		{[]string{"--turn-secret", "s"}, nil},
		{[]string{"--port", "70000"}, nil},
	} {
		_, err := peerConfig(t, c.args...)
		var ue *usageError
		if !errors.As(err, &ue) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%v: %v, want a usage error %v", c.args, err, c.want)
		}
	}
}

// freeUDPPort returns a UDP port that was free a moment ago.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// TestListenPort: reach listen --port P takes its sessions on UDP port P:
// a peer that dials it reaches it there.
func TestListenPort(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	key, id := ncKey(t, "lis")
	port := freeUDPPort(t)
	lis := startProc(t, nil, io.Discard, bin, "listen", "--key", key, "--server", cs, "--port", strconv.Itoa(port))
	lis.stderr.wait(t, "listening ", 15*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := reach.New(ctx, reach.Config{Servers: []string{cs}, ListenAddr: netip.MustParseAddrPort("127.0.0.1:0"),
		Strategies: []string{reach.StrategyDirect}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	sess, err := n.DialSession(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got := sess.RemoteAddr(); got.Port() != uint16(port) {
		t.Errorf("session to the listener at %v, want port %d", got, port)
	}
	// The port is taken for as long as it runs.
	if c, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
		c.Close()
		t.Errorf("UDP port %d is free while reach listen --port %d runs", port, port)
	}
}

// connectProxy is an HTTP CONNECT proxy on loopback that records the
// addresses it was asked for, until the test ends.
type connectProxy struct {
	url     string
	mu      sync.Mutex
	targets []string
}

func (p *connectProxy) asked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.targets)
}

func startConnectProxy(t *testing.T) *connectProxy {
	t.Helper()
	p := &connectProxy{}
	var wg sync.WaitGroup
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		p.mu.Lock()
		p.targets = append(p.targets, r.Host)
		p.mu.Unlock()
		up, err := net.DialTimeout("tcp", r.Host, 3*time.Second)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		wg.Add(1)
		go func() {
			defer wg.Done()
			go func() { io.Copy(up, brw); up.Close() }()
			io.Copy(c, up)
			c.Close()
		}()
	}))
	t.Cleanup(func() { hs.CloseClientConnections(); hs.Close(); wg.Wait() })
	p.url = hs.URL
	return p
}

// TestListenProxy: reach listen --proxy reaches a server whose UDP port
// does not answer over TCP through the proxy, and only through it.
func TestListenProxy(t *testing.T) {
	bin := reachBinary(t)
	sa, err := rendezvous.ParseServerAddr(ncServer(t))
	if err != nil {
		t.Fatal(err)
	}
	real := sa.Port
	sa.Port, sa.TCPPort = uint16(freeUDPPort(t)), real // QUIC to a dead port; TCP to the server
	cs := sa.String()
	px := startConnectProxy(t)
	key, _ := ncKey(t, "lis")
	lis := startProc(t, nil, io.Discard, bin, "listen", "--key", key, "--server", cs, "--proxy", px.url, "--port", strconv.Itoa(freeUDPPort(t)))
	lis.stderr.wait(t, "listening ", 20*time.Second)
	want := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(real)))
	if got := px.asked(); !slices.Contains(got, want) {
		t.Errorf("the proxy was asked for %v, want %s among them", got, want)
	}
}
