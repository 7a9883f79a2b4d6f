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
	args []string // more redis-server arguments
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a redis-server of its own on a free loopback port
// (no persistence); it is killed when the test ends. Without redis-server
// the test skips, except in CI (REACH_LAB_REQUIRED=1), where it fails.
func Start(t testing.TB) *Server {
	t.Helper()
	need(t)
	return start(t, freePort(t, false))
}

// need skips the test without redis-server, or fails it in CI.
func need(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("REACH_LAB_REQUIRED") == "1" {
			t.Fatal("redis-server not installed (apt-get install redis-server)")
		}
		t.Skip("redis-server not installed (apt-get install redis-server)")
	}
}

func start(t testing.TB, port int, args ...string) *Server {
	rs := &Server{t: t, port: port, args: args}
	rs.Start()
	t.Cleanup(rs.Stop)
	return rs
}

// freePort returns a free loopback TCP port; with bus, one whose port +
// 10000 (a Cluster node's bus port) is free too.
func freePort(t testing.TB, bus bool) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !bus {
			l.Close()
			return port
		}
		if port+10000 > 65535 {
			l.Close()
			continue
		}
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+10000))
		l.Close()
		if err == nil {
			l2.Close()
			return port
		}
	}
	t.Fatal("no free port pair for a Redis Cluster node")
	return 0
}

// Cluster is a Redis Cluster of private redis-server nodes on loopback,
// every slot served, no replicas.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts n redis-server nodes in cluster mode and joins them
// with redis-cli --cluster create; they are killed when the test ends.
// Without redis-server or redis-cli it skips, except in CI.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	need(t)
	if _, err := exec.LookPath("redis-cli"); err != nil {
		if os.Getenv("REACH_LAB_REQUIRED") == "1" {
			t.Fatal("redis-cli not installed (apt-get install redis-tools)")
		}
		t.Skip("redis-cli not installed (apt-get install redis-tools)")
	}
	dir := t.TempDir()
	c := &Cluster{}
	var addrs []string
	for i := range n {
		port := freePort(t, true)
		c.Nodes = append(c.Nodes, start(t, port, "--cluster-enabled", "yes", "--dir", dir,
			"--cluster-config-file", fmt.Sprintf("nodes-%d.conf", i), "--cluster-node-timeout", "2000"))
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", port))
	}
	out, err := exec.Command("redis-cli", append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, node := range c.Nodes {
		rc := node.Client(t)
		for {
			info, err := rc.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster not ok within 10s: %v %s", err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// Seeds returns the nodes' addresses as --registry takes them for a
// Cluster: HOST:PORT,HOST:PORT,...
func (c *Cluster) Seeds() string {
	var s []string
	for _, n := range c.Nodes {
		s = append(s, fmt.Sprintf("127.0.0.1:%d", n.port))
	}
	return strings.Join(s, ",")
}

// URL returns the server's redis:// URL.
func (rs *Server) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d", rs.port) }

// Start runs redis-server again on the same port (after Stop), empty,
// and waits until it answers.
func (rs *Server) Start() {
	t := rs.t
	t.Helper()
	rs.cmd = exec.Command("redis-server", append([]string{"--port", fmt.Sprint(rs.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"}, rs.args...)...)
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
