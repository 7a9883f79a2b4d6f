package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoServer serves TCP echo on 127.0.0.1 until the test ends: it copies
// what it reads back and half-closes at the client's EOF.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveEcho(ln)
	return ln
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c)
		}()
	}
}

// startForwardDial runs reach dial --local 127.0.0.1:0 PEER (with more
// flags before PEER) and returns the process and the local address from
// its ready line.
func startForwardDial(t *testing.T, bin, cs, peer string, flags ...string) (*proc, string) {
	t.Helper()
	key, _ := ncKey(t, "dial")
	args := append([]string{"dial", "--key", key, "--server", cs, "--local", "127.0.0.1:0"}, flags...)
	dial := startProc(t, nil, nil, bin, append(args, peer)...)
	line := dial.stderr.wait(t, "forwarding ", 30*time.Second)
	addr, rest, ok := strings.Cut(strings.TrimPrefix(line, "forwarding "), " -> ")
	if !ok || rest != peer {
		t.Fatalf("ready line %q, want forwarding ADDR -> %s", line, peer)
	}
	return dial, addr
}

// echoThrough connects to addr, sends size random bytes, half-closes and
// reads until EOF; it returns an error unless exactly the bytes sent came
// back.
func echoThrough(addr string, size int) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	sent := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		sent <- err
	}()
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil {
		return err
	}
	if err := <-sent; err != nil {
		return err
	}
	if want := sha256.Sum256(data); n != int64(size) || !bytes.Equal(got.Sum(nil), want[:]) {
		return errors.New("the bytes that came back differ from those sent")
	}
	return nil
}

// TestForward: reach listen --forward to a TCP echo server, reach dial
// --local 127.0.0.1:0 to it, directly and through the relay: 8 TCP
// connections at once through the local port each send 1 MiB and
// half-close, and each gets exactly its bytes back; a second dial
// process, with its own key, works too while the first still runs, and
// the first still works after it, and a plain reach dial (stdin/stdout)
// gets the echo of its stdin. SIGINT ends each with exit 130.
func TestForward(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	for _, strategy := range []string{"direct", "relay"} {
		t.Run(strategy, func(t *testing.T) { testForward(t, bin, cs, strategy) })
	}
}

func testForward(t *testing.T, bin, cs, strategy string) {
	echo := echoServer(t)
	lisKey, lisID := ncKey(t, "lis")
	lis := startProc(t, nil, nil, bin, "listen", "--key", lisKey, "--server", cs, "--forward", echo.Addr().String())
	lis.stderr.wait(t, "forwarding streams to "+echo.Addr().String(), 15*time.Second)
	dial, addr := startForwardDial(t, bin, cs, lisID.String(), "--strategies", strategy, "--json")
	if s := connectedStrategy(t, dial.stderr); s != strategy {
		t.Fatalf("strategy %q, want %q", s, strategy)
	}
	var ev struct{ Local, Remote string }
	if err := json.Unmarshal([]byte(dial.stderr.wait(t, `{"event":"forwarding"`, time.Second)), &ev); err != nil ||
		ev.Local != addr || ev.Remote != lisID.String() {
		t.Errorf("forwarding event %+v (%v); want local %s, remote %s", ev, err, addr, lisID)
	}

	const conns, size = 8, 1 << 20
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = echoThrough(addr, size)
		}()
	}
	wg.Wait()
	t.Logf("%d connections of %d MiB each way in %v", conns, size>>20, time.Since(start).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Errorf("connection %d: %v", i, err)
		}
	}

	dial2, addr2 := startForwardDial(t, bin, cs, lisID.String(), "--strategies", strategy)
	if err := echoThrough(addr2, size); err != nil {
		t.Errorf("through the second dial process: %v", err)
	}
	if err := echoThrough(addr, 64<<10); err != nil {
		t.Errorf("through the first dial process again: %v", err)
	}
	// A plain reach dial (netcat style) is one forwarded connection too.
	ncKeyFile, _ := ncKey(t, "nc")
	var ncOut bytes.Buffer
	nc := startProc(t, strings.NewReader("hello through the forward\n"), &ncOut, bin, "dial", "--key", ncKeyFile,
		"--server", cs, "--strategies", strategy, lisID.String())
	if code := nc.exit(t, 30*time.Second); code != 0 || ncOut.String() != "hello through the forward\n" {
		t.Errorf("reach dial (stdin/stdout): exit %d, stdout %q", code, ncOut.String())
	}
	for _, p := range []*proc{dial, dial2, lis} {
		select {
		case <-p.done:
			t.Fatalf("%s exited:\n%s", p.cmd.Args[1], p.stderr)
		default:
		}
	}
	if s := lis.stderr.String() + dial.stderr.String(); strings.Contains(s, "forward: ") {
		t.Errorf("a connection failed:\n%s", s)
	}
	// Ctrl-C ends each with exit 130.
	for _, p := range []*proc{dial, dial2, lis} {
		p.cmd.Process.Signal(syscall.SIGINT)
		if code := p.exit(t, 10*time.Second); code != exitInterrupted {
			t.Errorf("%s exited %d after SIGINT, want %d", p.cmd.Args[1], code, exitInterrupted)
		}
	}
}

// TestForwardRefused: reach listen --forward to a closed port: the
// dialler's TCP connection is reset (ECONNRESET: the listener aborts the
// stream with its connect-failed code and reach dial --local resets the
// connection), both sides log a line, and the listener keeps serving:
// once the target listens, the next connection goes through.
func TestForwardRefused(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := closed.Addr().String()
	closed.Close()
	lisKey, lisID := ncKey(t, "lis")
	lis := startProc(t, nil, nil, bin, "listen", "--key", lisKey, "--server", cs, "--forward", target)
	lis.stderr.wait(t, "forwarding streams to ", 15*time.Second)
	dial, addr := startForwardDial(t, bin, cs, lisID.String())

	for i := range 2 {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if errors.Is(err, syscall.ECONNRESET) {
			// The reset came before the dialling goroutine looked at
			// its connect's outcome (a loaded machine): the kernel then
			// reports it as the connect's error. The reset we want.
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := expectReset(c, "hello?"); err != nil {
			t.Errorf("connection %d: %v", i, err)
		}
	}
	want := "forward: stream from "
	waitCount(t, lis.stderr, want, 2, 10*time.Second)
	if s := lis.stderr.String(); !strings.Contains(s, "connect "+target+": connection refused") {
		t.Errorf("the listener said:\n%s", s)
	}
	waitCount(t, dial.stderr, "forward: 127.0.0.1:", 2, 10*time.Second)
	if s := dial.stderr.String(); !strings.Contains(s, errForwardConnect.Error()) {
		t.Errorf("the dialler said:\n%s", s)
	}

	// A plain reach dial reads the listener's code and exits 1.
	_, errOut, code := runReach(t, nil, "dial", "--server", cs, lisID.String())
	if code != exitError || !strings.Contains(errOut, "reach: the listener could not connect to its forward target") {
		t.Errorf("reach dial (stdin/stdout): exit %d, stderr %q; want 1 and the target named", code, errOut)
	}

	// The target comes up on the same port (if nothing took it meanwhile).
	ln, err := net.Listen("tcp", target)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", target, err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveEcho(ln)
	if err := echoThrough(addr, 100<<10); err != nil {
		t.Errorf("once the target listens: %v", err)
	}
}

// expectReset writes msg to c, reads, and returns an error unless the
// connection was reset (ECONNRESET) without a byte coming back, then
// closes c. The kernel reports a reset once: to the write when it came
// before it (the read then sees EOF), else to the read.
func expectReset(c net.Conn, msg string) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	_, werr := io.WriteString(c, msg)
	n, rerr := c.Read(make([]byte, 10))
	if n == 0 && (errors.Is(rerr, syscall.ECONNRESET) || (errors.Is(werr, syscall.ECONNRESET) || errors.Is(werr, syscall.EPIPE)) && rerr == io.EOF) {
		return nil
	}
	return fmt.Errorf("write: %v; read %d bytes, %v; want a reset (ECONNRESET)", werr, n, rerr)
}

// waitCount waits until w has at least n lines starting with prefix.
func waitCount(t *testing.T, w *lineWatcher, prefix string, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := 0
		for _, l := range strings.Split(w.String(), "\n") {
			if strings.HasPrefix(l, prefix) {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lines starting with %q within %v, want %d; output:\n%s", got, prefix, d, n, w)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestForwardMaxConns: with --max-conns 2, a third connection at once is
// reset and logged (the dialler names the limit); the two others go on.
func TestForwardMaxConns(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	echo := echoServer(t)
	lisKey, lisID := ncKey(t, "lis")
	lis := startProc(t, nil, nil, bin, "listen", "--key", lisKey, "--server", cs, "--forward", echo.Addr().String(), "--max-conns", "2")
	lis.stderr.wait(t, "forwarding streams to ", 15*time.Second)
	dial, addr := startForwardDial(t, bin, cs, lisID.String())
	var open []net.Conn
	for range 2 {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		// A round trip: the stream is open on the listener's side.
		if _, err := io.WriteString(c, "ping"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		// The reset came before the dialling goroutine looked at its
		// connect's outcome (a loaded machine): the reset we want, as in
		// TestForwardRefused.
	case err != nil:
		t.Fatal(err)
	default:
		if err := expectReset(c, "third"); err != nil {
			t.Errorf("the third connection: %v", err)
		}
	}
	waitCount(t, lis.stderr, "forward: stream from ", 1, 10*time.Second)
	waitCount(t, dial.stderr, "forward: 127.0.0.1:", 1, 10*time.Second)
	if s := dial.stderr.String(); !strings.Contains(s, errForwardBusy.Error()) {
		t.Errorf("the dialler said:\n%s", s)
	}
	for i, c := range open {
		if _, err := io.WriteString(c, "pong"); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		if b, err := io.ReadAll(c); err != nil || string(b) != "pong" {
			t.Errorf("connection %d after the refusal: %q, %v", i, b, err)
		}
	}
}

// TestSendStdin: reach send - offers stdin as one file named stdin (or
// --name NAME), and reach recv writes it with the bytes that went in; the
// temporary copy of stdin is gone once send exits.
func TestSendStdin(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	for _, name := range []string{"", "notes.bin"} {
		data := make([]byte, 300<<10+7)
		rand.Read(data)
		args := []string{"send", "--json", "--server", cs}
		if name != "" {
			args = append(args, "--name", name)
		}
		sendKey, _ := ncKey(t, "send")
		args = append(args, "--key", sendKey, "-")
		outR, outW := osPipe(t)
		tmp := t.TempDir()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir(), "TMPDIR="+tmp)
		send := startCmd(t, cmd, bytes.NewReader(data), outW)
		out := watch(outR)
		line := out.wait(t, `{"bytes":`, 30*time.Second)
		i := strings.Index(line, `"ticket":"`)
		if i < 0 {
			t.Fatalf("ticket event %q", line)
		}
		tk, _, _ := strings.Cut(line[i+len(`"ticket":"`):], `"`)
		dir := t.TempDir()
		_, _, code := runReach(t, nil, "recv", "--yes", "--out", dir, "--server", cs, tk)
		if code != 0 {
			t.Fatalf("recv exited %d", code)
		}
		if code := send.exit(t, 15*time.Second); code != 0 {
			t.Fatalf("send exited %d", code)
		}
		want := name
		if want == "" {
			want = "stdin"
		}
		got, err := os.ReadFile(filepath.Join(dir, want))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %d bytes, %v; want the %d bytes of stdin", want, len(got), err, len(data))
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("recv wrote %d entries, want 1", len(entries))
		}
		if left, _ := os.ReadDir(tmp); len(left) != 0 {
			t.Errorf("send left %s in $TMPDIR", left[0].Name())
		}
	}
	for _, args := range [][]string{{"send", "-", "-"}, {"send", "--name", "a/b", "-"}, {"send", "--name", "..", "-"}} {
		if _, errOut, code := runReach(t, nil, args...); code != exitUsage {
			t.Errorf("reach %s: exit %d, %q; want %d", strings.Join(args, " "), code, errOut, exitUsage)
		}
	}
}
