// Package redistest starts private Debian redis-server instances for
// tests (the fleet's registry, docs/architecture.md "Fleet"): on a free
// loopback port, without persistence, killed when the test ends.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a private Debian redis-server on loopback.
type Server struct {
	t    testing.TB
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a redis-server of its own on a free loopback port
// (no persistence); it is killed when the test ends. Without redis-server
// the test skips, except in CI (REACH_LAB_REQUIRED=1), where it fails.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("REACH_LAB_REQUIRED") == "1" {
			t.Fatal("redis-server not installed (apt-get install redis-server)")
		}
		t.Skip("redis-server not installed (apt-get install redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	rs := &Server{t: t, port: port}
	rs.Start()
	t.Cleanup(rs.Stop)
	return rs
}

func (rs *Server) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d", rs.port) }

// Start runs redis-server again on the same port (after Stop), empty,
// and waits until it answers.
func (rs *Server) Start() {
	t := rs.t
	t.Helper()
	rs.cmd = exec.Command("redis-server", "--port", fmt.Sprint(rs.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning")
	rs.cmd.Stdout, rs.cmd.Stderr = logWriter(t), logWriter(t)
	if err := rs.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	rs.done = make(chan struct{})
	go func() { rs.cmd.Wait(); close(rs.done) }()
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", rs.port), DisableIdentity: true, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills redis-server and waits for it to exit.
func (rs *Server) Stop() {
	if rs.cmd == nil {
		return
	}
	rs.cmd.Process.Kill()
	<-rs.done
	rs.cmd = nil
}

// Client is a go-redis client of the server, closed when the test ends.
func (rs *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", rs.port), DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// tlog routes redis-server's output to t.Log until the test ends.
type tlog struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tlog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func logWriter(t testing.TB) *tlog {
	w := &tlog{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return w
}
