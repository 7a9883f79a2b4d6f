package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// soakServer is `reach server` (rendezvous, STUN and relay with their
// default limits) in a child process on 127.0.0.1, so that the RSS and
// goroutines the soak reports are the server's alone.
type soakServer struct {
	cmd     *exec.Cmd
	connect string // its connect string
	metrics string // its /metrics URL
	waited  chan error
}

// buildReach builds cmd/reach into a temporary directory and returns the
// binary's path.
func buildReach(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "reach")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/reachp2p/reach/cmd/reach").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/reach: %v\n%s", err, out)
	}
	return bin
}

// startSoakServer runs bin as `reach server` on 127.0.0.1 (a free port,
// no TLS port, no second STUN port, metrics on another free port), logs
// its stderr (warnings and errors) to t, and waits for its ready line.
// The test's cleanup stops it (SIGTERM, then SIGKILL after 10 s).
func startSoakServer(t testing.TB, bin string) *soakServer {
	t.Helper()
	port, mport := freePort(t), freePort(t)
	s := &soakServer{metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", mport), waited: make(chan error, 1)}
	s.cmd = exec.Command(bin, "server", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--state", t.TempDir(),
		"--tls-port", "0", "--stun-alt-port", "-1", "--log-level", "warn", "--metrics", fmt.Sprintf("127.0.0.1:%d", mport))
	s.cmd.Env = append(os.Environ(), "REACH_SERVER_CONFIG=", "REACH_RELAY_SECRET=")
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Logf("server: %s", sc.Text())
		}
	}()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if cs, ok := strings.CutPrefix(sc.Text(), "reach server ready "); ok {
				ready <- cs
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() {
		<-logged // Wait closes the pipes: read them to their end first
		s.waited <- s.cmd.Wait()
	}()
	t.Cleanup(s.stop)
	select {
	case s.connect = <-ready:
	case err := <-s.waited:
		s.waited <- err
		t.Fatalf("reach server exited before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("reach server not ready within 30 s")
	}
	return s
}

// stop ends the server and waits for it.
func (s *soakServer) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.waited:
		s.waited <- err
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		s.waited <- <-s.waited
	}
}

// freePort is a TCP port that was free on 127.0.0.1 a moment ago (the
// server takes UDP and TCP on it).
func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port on 127.0.0.1")
	return 0
}

// rss is the server's resident set size, from /proc.
func (s *soakServer) rss() (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// cpu is the CPU time (user and system) the server has used, from /proc
// (clock ticks of 10 ms, the Linux USER_HZ).
func (s *soakServer) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses: state
	// is the first, utime the 12th and stime the 13th.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	k, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(u+k) * 10 * time.Millisecond, nil
}

// scrape returns the server's /metrics.
func (s *soakServer) scrape() ([]byte, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(s.metrics)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// logMetrics logs the server's own metrics (reach_*) that are not zero:
// what explains a failure.
func (s *soakServer) logMetrics(t testing.TB) {
	body, err := s.scrape()
	if err != nil {
		t.Logf("server metrics: %v", err)
		return
	}
	for line := range bytes.Lines(body) {
		if bytes.HasPrefix(line, []byte("reach_")) && !bytes.HasSuffix(bytes.TrimSpace(line), []byte(" 0")) {
			t.Logf("server metric %s", bytes.TrimSpace(line))
		}
	}
}

// goroutines is the server's go_goroutines, from its /metrics.
func (s *soakServer) goroutines() (int, error) {
	n, _, err := s.runtimeStats()
	return n, err
}

// runtimeStats is the server's go_goroutines and
// go_memstats_heap_inuse_bytes (0 if it does not export it), from its
// /metrics: the heap tells a growing RSS that is the Go heap's from one
// that is not.
func (s *soakServer) runtimeStats() (goroutines int, heapInuse uint64, err error) {
	body, err := s.scrape()
	if err != nil {
		return 0, 0, err
	}
	found := false
	for line := range bytes.Lines(body) {
		if v, ok := bytes.CutPrefix(line, []byte("go_goroutines ")); ok {
			if goroutines, err = strconv.Atoi(string(bytes.TrimSpace(v))); err != nil {
				return 0, 0, err
			}
			found = true
		}
		if v, ok := bytes.CutPrefix(line, []byte("go_memstats_heap_inuse_bytes ")); ok {
			f, _ := strconv.ParseFloat(string(bytes.TrimSpace(v)), 64)
			heapInuse = uint64(f)
		}
	}
	if !found {
		return 0, 0, errors.New("no go_goroutines in /metrics")
	}
	return goroutines, heapInuse, nil
}

// soakSample is one look at the server (and the peers' process).
type soakSample struct {
	at         time.Duration // since the traffic started
	rss        uint64        // server RSS
	heap       uint64        // server Go heap in use (0: not exported)
	goroutines int           // server goroutines
	peerGs     int           // the peers' process's goroutines
	moved      int64         // bytes received intact so far, every pair
}

// linearFit is the least-squares slope and intercept of y against x.
func linearFit(x, y []float64) (slope, intercept float64) {
	n := float64(len(x))
	if len(x) < 2 {
		return 0, 0
	}
	var sx, sy, sxx, sxy float64
	for i := range x {
		sx += x[i]
		sy += y[i]
		sxx += x[i] * x[i]
		sxy += x[i] * y[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0, sy / n
	}
	slope = (n*sxy - sx*sy) / d
	return slope, (sy - slope*sx) / n
}
