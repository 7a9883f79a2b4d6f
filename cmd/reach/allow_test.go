package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/stream"
)

// TestForwardAllow: reach listen --forward with --allow A and an
// --allow-file naming B serves A and B (echo through reach dial --local)
// and refuses C: C's reach dial --local and plain reach dial exit 1 at once
// saying the peer refused this node and naming C's ID, and the listener
// logs "refused C" once (not once per attempt) and keeps serving A.
func TestForwardAllow(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	echo := echoServer(t)
	aKey, aID := ncKey(t, "a")
	bKey, bID := ncKey(t, "b")
	cKey, cID := ncKey(t, "c")
	file := filepath.Join(t.TempDir(), "allowed")
	os.WriteFile(file, []byte("# friends\n\n"+bID.String()+"  # b's laptop\n"), 0o600)
	lisKey, lisID := ncKey(t, "lis")
	lis := startProc(t, nil, nil, bin, "listen", "--key", lisKey, "--server", cs, "--forward", echo.Addr().String(),
		"--allow", aID.String(), "--allow-file", file)
	lis.stderr.wait(t, "serving 2 allowed peers", 15*time.Second)

	var aAddr string
	for _, key := range []string{aKey, bKey} {
		dial := startProc(t, nil, nil, bin, "dial", "--key", key, "--server", cs, "--local", "127.0.0.1:0", lisID.String())
		line := dial.stderr.wait(t, "forwarding ", 30*time.Second)
		addr, _, _ := strings.Cut(strings.TrimPrefix(line, "forwarding "), " -> ")
		if err := echoThrough(addr, 256<<10); err != nil {
			t.Errorf("allowed peer: %v", err)
		}
		if aAddr == "" {
			aAddr = addr
		}
	}

	for i, args := range [][]string{
		{"dial", "--key", cKey, "--server", cs, "--local", "127.0.0.1:0", lisID.String()},
		{"dial", "--key", cKey, "--server", cs, lisID.String()},
		{"ping", "--key", cKey, "--server", cs, "--count", "1", lisID.String()},
	} {
		start := time.Now()
		_, errOut, code := runReach(t, nil, args...)
		if code != exitError || !strings.Contains(errOut, "peer "+lisID.String()+" refused this node") ||
			!strings.Contains(errOut, cID.String()) || strings.Contains(errOut, "forwarding ") {
			t.Errorf("refused peer, attempt %d: exit %d, stderr %q; want exit 1, the refusal and its ID", i, code, errOut)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("refused peer, attempt %d: took %v", i, d)
		}
	}
	want := "refused " + cID.String() + " (introduction): " + errNotAllowed.Error()
	lis.stderr.wait(t, want, 5*time.Second)
	if n := strings.Count(lis.stderr.String(), "refused "); n != 1 {
		t.Errorf("the listener logged %d refusals of one peer within a minute, want 1:\n%s", n, lis.stderr)
	}
	// A still gets through.
	if err := echoThrough(aAddr, 64<<10); err != nil {
		t.Errorf("allowed peer after the refusals: %v", err)
	}
}

// TestListenAllowFlags: a bad --allow is a usage error (exit 2); a bad
// line in an --allow-file is named with its line number (exit 1); a
// missing file too. Nothing is started.
func TestListenAllowFlags(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("# ok\nnot-a-peer-id\n"), 0o600)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"listen", "--forward", "127.0.0.1:22", "--allow", "bogus"}, exitUsage, "--allow bogus"},
		{[]string{"listen", "--allow-file", bad}, exitError, bad + ":2"},
		{[]string{"listen", "--allow-file", filepath.Join(dir, "missing")}, exitError, "no such file"},
	} {
		_, errOut, code := runReach(t, nil, append(c.args, "--server", "reach://x@127.0.0.1:1")...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("reach %s: exit %d, %q; want exit %d and %q", strings.Join(c.args, " "), code, errOut, c.code, c.want)
		}
	}
}

// TestListenAllowNetcat: plain reach listen --allow A (stdin/stdout)
// refuses C's dial and then carries A's stream.
func TestListenAllowNetcat(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	aKey, aID := ncKey(t, "a")
	cKey, _ := ncKey(t, "c")
	lisKey, lisID := ncKey(t, "lis")
	var out bytes.Buffer
	lis := startProc(t, strings.NewReader("from the listener\n"), &out, bin, "listen", "--key", lisKey, "--server", cs,
		"--allow", aID.String())
	lis.stderr.wait(t, "listening ", 15*time.Second)
	if _, errOut, code := runReach(t, nil, "dial", "--key", cKey, "--server", cs, lisID.String()); code != exitError ||
		!strings.Contains(errOut, "refused this node") {
		t.Errorf("refused peer: exit %d, %q", code, errOut)
	}
	got, _, code := runReach(t, []string{}, "dial", "--key", aKey, "--server", cs, lisID.String())
	if code != 0 || got != "from the listener\n" {
		t.Errorf("allowed peer: exit %d, stdout %q", code, got)
	}
	if code := lis.exit(t, 15*time.Second); code != 0 {
		t.Errorf("listen exited %d", code)
	}
}

// TestForwardDeniedStream: a session that reaches a forwarding listener
// without its introduction being refused (here: a node without
// Config.Accept, as a direct path would) gets each stream closed with
// codeForwardDenied, which reach dial --local names, and the listener
// logs the peer; an allowed peer is served.
func TestForwardDeniedStream(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nodes")
	}
	cs := ncServer(t)
	echo := echoServer(t)
	lw := &testLogWriter{t: t}
	logOut = lw
	defer func() { logOut = os.Stderr }()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	node := func(name string) *reach.Node {
		key, _ := ncKey(t, name)
		k, _, err := identity.LoadOrCreateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		n, err := reach.New(ctx, reach.Config{Servers: []string{cs}, Key: k})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Abort() })
		return n
	}
	lis, friend, stranger := node("lis"), node("friend"), node("stranger")
	ev := &events{on: true, w: lw}
	allow, err := loadAllow(ev, []string{friend.ID().String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sig, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- forwardListen(sig, lis, ev, echo.Addr().String(), 4, allow) }()

	roundTrip := func(n *reach.Node) ([]byte, error) {
		s, err := n.DialSession(ctx, lis.ID())
		if err != nil {
			return nil, err
		}
		c, err := s.OpenStream(ctx)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := io.WriteString(c, "hello"); err != nil {
			return nil, err
		}
		c.CloseWrite()
		return io.ReadAll(c)
	}
	got, err := roundTrip(stranger)
	var pe *stream.PeerError
	if !errors.As(err, &pe) || pe.Code != codeForwardDenied || !errors.Is(forwardError(err), errForwardDenied) {
		t.Errorf("stranger: read %q, %v; want a *stream.PeerError with code %#x", got, err, codeForwardDenied)
	}
	lw.waitFor(t, `"event":"refused"`, 5*time.Second)
	if !strings.Contains(lw.String(), stranger.ID().String()) {
		t.Errorf("the refused event does not name the stranger:\n%s", lw)
	}
	if got, err := roundTrip(friend); err != nil || string(got) != "hello" {
		t.Errorf("friend: %q, %v; want the echo", got, err)
	}
	stop()
	if err := <-served; !errors.Is(err, errInterrupted) {
		t.Errorf("forwardListen: %v, want errInterrupted", err)
	}
}

// testLogWriter passes each write to t.Log and keeps it.
type testLogWriter struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *testLogWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor waits until what was written contains sub.
func (w *testLogWriter) waitFor(t *testing.T, sub string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(w.String(), sub) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %v:\n%s", sub, d, w)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAllowFileReload: a listener reads its --allow-file again when the
// file changes and on SIGHUP. A peer added is served and one taken off is
// refused, without a restart; a file that turns bad keeps the list in use
// (said once, with the line); a change that keeps the file's size and
// modification time is picked up by SIGHUP only.
func TestAllowFileReload(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	echo := echoServer(t)
	aKey, aID := ncKey(t, "a")
	bKey, bID := ncKey(t, "b")
	_, cID := ncKey(t, "c")
	file := filepath.Join(t.TempDir(), "allowed")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(aID.String() + "\n")
	lisKey, lisID := ncKey(t, "lis")
	lis := startProc(t, nil, nil, bin, "listen", "--key", lisKey, "--server", cs, "--forward", echo.Addr().String(),
		"--allow-file", file)
	lis.stderr.wait(t, "serving 1 allowed peer", 15*time.Second)
	served := func(key, who string, want bool) {
		t.Helper()
		_, errOut, code := runReach(t, nil, "ping", "--key", key, "--server", cs, "--count", "1", lisID.String())
		if got := code == 0; got != want {
			t.Errorf("%s served: %v (exit %d, %q), want %v", who, got, code, errOut, want)
		}
		if !want && !strings.Contains(errOut, "refused this node") {
			t.Errorf("%s refused without saying so: %q", who, errOut)
		}
	}
	served(aKey, "a", true)
	served(bKey, "b", false)

	// B and C instead of A: picked up at the next check.
	good := bID.String() + "\n" + cID.String() + "\n"
	write(good)
	lis.stderr.wait(t, "allow list reloaded: serving 2 allowed peers (was 1)", 3*allowCheckEvery+5*time.Second)
	served(bKey, "b after the reload", true)
	served(aKey, "a after the reload", false)

	// A bad line (C's ID with a character changed: same size) keeps the
	// list in use.
	bad := []byte(good)
	bad[len(bad)-3] ^= 1
	write(string(bad))
	line := lis.stderr.wait(t, "allow list not reloaded: ", 3*allowCheckEvery+5*time.Second)
	if !strings.Contains(line, file+":2") || !strings.Contains(line, "still serving 2 allowed peers") {
		t.Errorf("reload failure line %q: want the file's line 2 and the list in use", line)
	}
	served(bKey, "b with a bad file", true)

	// The good file back under the bad one's modification time (and
	// size), so only SIGHUP can tell it changed.
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	write(good)
	if err := os.Chtimes(file, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * allowCheckEvery)
	if strings.Contains(lis.stderr.String(), "(was 2)") {
		t.Fatalf("reloaded without a change of stamp or SIGHUP:\n%s", lis.stderr)
	}
	if err := lis.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	lis.stderr.wait(t, "allow list reloaded: serving 2 allowed peers (was 2)", 5*time.Second)
	if n := strings.Count(lis.stderr.String(), "allow list not reloaded"); n != 1 {
		t.Errorf("the bad file was reported %d times, want once:\n%s", n, lis.stderr)
	}
}
