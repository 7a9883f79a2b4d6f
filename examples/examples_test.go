// Package examples_test builds each program under examples/ and runs it
// as a user would, two processes against a server on loopback, checking
// the output the program's doc comment promises. The examples are part of
// the module (no go.mod of their own), so go vet ./... and go test ./...
// build them with the SDK as it is.
package examples_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// build compiles the example in dir (echo, portforward, sendfile).
func build(t *testing.T, dir string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the example")
	}
	bin := filepath.Join(t.TempDir(), dir)
	if out, err := exec.Command("go", "build", "-o", bin, "./"+dir).CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/%s: %v\n%s", dir, err, out)
	}
	return bin
}

// logWriter passes lines to t.Log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// server runs rendezvous, STUN and the relay on loopback until the test
// ends and returns its connect string.
func server(t *testing.T) string {
	t.Helper()
	log := slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	rl := relay.NewServer(relay.ServerConfig{Logger: log.With("part", "relay")})
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Logger:    log.With("part", "server"),
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
	}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs.ConnectString()
}

// proc is an example running with REACH_SERVER set; it is killed when the
// test ends, and what it printed goes to t.Log.
type proc struct {
	name   string
	cmd    *exec.Cmd
	lines  chan string // stdout, a line at a time
	stderr bytes.Buffer
	done   chan struct{}
	err    error
}

func start(t *testing.T, cs, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: filepath.Base(bin) + " " + args[0], cmd: exec.Command(bin, args...),
		lines: make(chan string, 100), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "REACH_SERVER="+cs)
	p.cmd.Stderr = &syncWriter{w: &p.stderr}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		p.err = p.cmd.Wait()
		close(p.lines)
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		t.Logf("%s stderr:\n%s", p.name, p.cmd.Stderr)
	})
	return p
}

// syncWriter guards a buffer the child's stderr copier writes to.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

// line returns the next stdout line, failing the test after d.
func (p *proc) line(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			t.Fatalf("%s exited (%v) before printing the line awaited; stderr:\n%s", p.name, p.err, p.cmd.Stderr)
		}
		t.Logf("%s: %s", p.name, l)
		return l
	case <-time.After(d):
		t.Fatalf("%s printed nothing within %v; stderr:\n%s", p.name, d, p.cmd.Stderr)
	}
	return ""
}

// field returns what follows prefix on the next stdout line.
func (p *proc) field(t *testing.T, prefix string) string {
	t.Helper()
	l := p.line(t, 30*time.Second)
	if !strings.HasPrefix(l, prefix) {
		t.Fatalf("%s printed %q, want a line starting with %q", p.name, l, prefix)
	}
	return strings.TrimPrefix(l, prefix)
}

// wait waits at most d for the process to exit and fails the test unless
// it exited 0.
func (p *proc) wait(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s did not exit within %v; stderr:\n%s", p.name, d, p.cmd.Stderr)
	}
	if p.err != nil {
		t.Fatalf("%s: %v; stderr:\n%s", p.name, p.err, p.cmd.Stderr)
	}
}

// interrupt sends Ctrl-C and expects a clean exit.
func (p *proc) interrupt(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGINT)
	p.wait(t, 15*time.Second)
}

// TestEcho: echo serve prints its peer ID; echo PEER hello there prints
// "echo: hello there" and exits 0, twice (a second client on the same
// server); Ctrl-C ends the server with exit 0.
func TestEcho(t *testing.T) {
	bin := build(t, "echo")
	cs := server(t)
	srv := start(t, cs, bin, "serve")
	id := srv.field(t, "echo server ")
	for _, msg := range []string{"hello there", "and again"} {
		cl := start(t, cs, bin, append([]string{id}, strings.Fields(msg)...)...)
		if got := cl.line(t, 30*time.Second); got != "echo: "+msg {
			t.Errorf("client printed %q, want %q", got, "echo: "+msg)
		}
		cl.wait(t, 15*time.Second)
	}
	srv.interrupt(t)
	if s := srv.cmd.Stderr.(*syncWriter).String(); strings.Count(s, "echoed ") != 2 {
		t.Errorf("server log:\n%s\nwant two \"echoed\" lines", s)
	}
}

// TestPortForward: portforward expose to a TCP echo server and
// portforward connect to it: 4 TCP connections at once through the local
// port each send 256 KiB, half-close, and get exactly their bytes back.
func TestPortForward(t *testing.T) {
	bin := build(t, "portforward")
	cs := server(t)
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { target.Close() })
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	exp := start(t, cs, bin, "expose", target.Addr().String())
	_, id, ok := strings.Cut(exp.field(t, "exposing "), " as ")
	if !ok {
		t.Fatal("expose: no peer ID in its line")
	}
	con := start(t, cs, bin, "connect", id, "127.0.0.1:0")
	local := con.field(t, "listening on ")

	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- echoThrough(local, 256<<10)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	con.interrupt(t)
	exp.interrupt(t)
}

// echoThrough sends size random bytes to addr, half-closes and checks
// that exactly they come back.
func echoThrough(addr string, size int) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("%d bytes came back, not the %d sent", len(got), size)
	}
	return nil
}

// TestSendFile: sendfile send FILE FOLDER prints a ticket; sendfile recv
// TICKET DIR prints "received 3 files (N bytes), every one verified" and
// writes the same bytes under the same names; the sender prints that the
// receiver has everything and exits 0.
func TestSendFile(t *testing.T) {
	bin := build(t, "sendfile")
	cs := server(t)
	src := t.TempDir()
	files := map[string][]byte{"a.bin": nil, "folder/b.bin": nil, "folder/sub/c.txt": []byte("hello\n")}
	total := 0
	for name, data := range files {
		if data == nil {
			data = make([]byte, 300<<10)
			rand.Read(data)
			files[name] = data
		}
		total += len(files[name])
		os.MkdirAll(filepath.Dir(filepath.Join(src, name)), 0o755)
		if err := os.WriteFile(filepath.Join(src, name), files[name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	send := start(t, cs, bin, "send", filepath.Join(src, "a.bin"), filepath.Join(src, "folder"))
	if l, want := send.line(t, 30*time.Second), fmt.Sprintf("3 files, %d bytes. Receive with:", total); l != want {
		t.Fatalf("send printed %q, want %q", l, want)
	}
	ticket := send.field(t, "  sendfile recv ")
	out := t.TempDir()
	recv := start(t, "", bin, "recv", ticket, out)
	want := fmt.Sprintf("received 3 files (%d bytes), every one verified", total)
	for {
		l := recv.line(t, 30*time.Second)
		if strings.HasPrefix(l, "received ") {
			if l != want {
				t.Errorf("recv printed %q, want %q", l, want)
			}
			break
		}
	}
	recv.wait(t, 15*time.Second)
	if l := send.line(t, 15*time.Second); !strings.HasSuffix(l, fmt.Sprintf(" has everything (%d bytes sent)", total)) {
		t.Errorf("send printed %q, want PEER has everything", l)
	}
	send.wait(t, 15*time.Second)
	for name, data := range files {
		got, err := os.ReadFile(filepath.Join(out, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %d bytes, %v; want the %d bytes sent", name, len(got), err, len(data))
		}
	}
}
