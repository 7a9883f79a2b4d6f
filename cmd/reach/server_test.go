package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

func TestParseListen(t *testing.T) {
	for in, want := range map[string]string{
		"":             "[::]:4950",
		"127.0.0.1":    "127.0.0.1:4950",
		"127.0.0.1:99": "127.0.0.1:99",
		"::1":          "[::1]:4950",
		"[::1]":        "[::1]:4950",
		"[::1]:7":      "[::1]:7",
		":8000":        "[::]:8000",
		"0.0.0.0:4950": "0.0.0.0:4950",
	} {
		got, err := parseListen(in)
		if err != nil || got != netip.MustParseAddrPort(want) {
			t.Errorf("parseListen(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"host:1", "1.2.3.4:x", ":x", "1.2.3.4:70000"} {
		if _, err := parseListen(bad); err == nil {
			t.Errorf("parseListen(%q): want error", bad)
		}
	}
}

// runServerBinary starts `reach server` and returns its connect string.
func runServerBinary(t *testing.T, bin string, args ...string) (rendezvous.ServerAddr, *exec.Cmd) {
	t.Helper()
	return runServerEnv(t, bin, nil, os.Stderr, args...)
}

// runServerEnv starts `reach server` with env added to the test's
// environment and its stderr to stderr, and returns its connect string.
func runServerEnv(t *testing.T, bin string, env []string, stderr io.Writer, args ...string) (rendezvous.ServerAddr, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"server"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
		io.Copy(io.Discard, out)
	}()
	var first string
	select {
	case first = <-line:
	case <-time.After(10 * time.Second):
		t.Fatal("no ready line within 10s")
	}
	cs, ok := strings.CutPrefix(strings.TrimSuffix(first, "\n"), "reach server ready ")
	if !ok {
		t.Fatalf("first line %q", first)
	}
	sa, err := rendezvous.ParseServerAddr(cs)
	if err != nil {
		t.Fatal(err)
	}
	return sa, cmd
}

func stopServer(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("server exit after SIGTERM: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("server did not stop within 5s of SIGTERM")
	}
}

func TestServerCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "reach")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	state := filepath.Join(dir, "state")

	sa, cmd := runServerBinary(t, bin, "--listen", "127.0.0.1:0", "--state", state)
	if sa.Host != "127.0.0.1" || sa.Port == 0 {
		t.Errorf("connect string %v", sa)
	}
	if st, err := os.Stat(filepath.Join(state, "server.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v", st, err)
	}
	// A client registers with it over TCP.
	key, _ := identity.GenerateKey()
	c, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: key, Servers: []rendezvous.ServerAddr{sa}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("register with reach server: %v", err)
	}
	c.Close()
	stopServer(t, cmd)

	// Same state: same key, same ID.
	sa2, cmd2 := runServerBinary(t, bin, "--listen", "127.0.0.1:0", "--state", state)
	if sa2.ID != sa.ID {
		t.Errorf("ID changed across restarts with --state: %s, then %s", sa.ID, sa2.ID)
	}
	stopServer(t, cmd2)

	// Another state directory (here the default, $STATE_DIRECTORY): another
	// key. With --metrics: the relay's metrics, every label value at zero.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	maddr := ln.Addr().String()
	ln.Close()
	sa3, cmd3 := runServerEnv(t, bin, []string{"STATE_DIRECTORY=" + t.TempDir()}, os.Stderr, "--listen", "127.0.0.1:0", "--metrics", maddr)
	if sa3.ID == sa.ID {
		t.Error("another state directory, the same key")
	}
	checkMetrics(t, "http://"+maddr+"/metrics")
	stopServer(t, cmd3)
}

// checkMetrics scrapes a fresh reach server's /metrics and checks the
// relay's series are there, at zero.
func checkMetrics(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	for _, want := range []string{
		"# TYPE reach_relay_clients gauge", `reach_relay_clients{transport="udp"} 0`, `reach_relay_clients{transport="tls"} 0`,
		"# TYPE reach_relay_connections_total counter", `reach_relay_connections_total{transport="tls"} 0`,
		"# TYPE reach_relay_rejected_total counter", `reach_relay_rejected_total{reason="full"} 0`,
		"# TYPE reach_relay_auth_failures_total counter", `reach_relay_auth_failures_total{reason="token_expired"} 0`,
		"# TYPE reach_relay_sessions gauge", "reach_relay_sessions 0",
		"# TYPE reach_relay_packets_total counter", "reach_relay_packets_total 0",
		"# TYPE reach_relay_bytes_total counter", "reach_relay_bytes_total 0",
		"# TYPE reach_relay_drops_total counter", `reach_relay_drops_total{reason="session_limit"} 0`,
		"# TYPE go_goroutines gauge",
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// --park-after: on by default (60 s); 0 or a negative value turns parking
// off, which ParkConfig says with a negative After (its zero is the
// default).
func TestParkAfterFlag(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		rendezvous.DefaultParkAfter: rendezvous.DefaultParkAfter,
		90 * time.Second:            90 * time.Second,
		0:                           -1,
		-time.Second:                -1,
	} {
		if got := parkConfig(in).After; got != want {
			t.Errorf("--park-after %v: ParkConfig.After %v, want %v", in, got, want)
		}
	}
}
