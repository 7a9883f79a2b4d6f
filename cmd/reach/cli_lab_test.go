//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "reach")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	return bin
}

// start runs the binary inside host h, with a config directory of its
// own (its default key); it is killed when the test ends.
func start(t *testing.T, h *natlab.Host, stdin io.Reader, bin string, args ...string) (cmd *exec.Cmd, stdout *bytes.Buffer, stderr *lineWatcher) {
	t.Helper()
	cmd = h.Command(context.Background(), bin, args...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir())
	cmd.Stdin = stdin
	stdout = &bytes.Buffer{}
	cmd.Stdout = stdout
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	stderr = watch(pr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		pw.Close()
	})
	return cmd, stdout, stderr
}

// startJSON is start for a command whose --json events go to stdout
// (send, recv): it watches stdout line by line.
func startJSON(t *testing.T, h *natlab.Host, bin string, args ...string) (cmd *exec.Cmd, stdout, stderr *lineWatcher) {
	t.Helper()
	cmd = h.Command(context.Background(), bin, args...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir())
	or, ow := io.Pipe()
	cmd.Stdout = ow
	stdout = watch(or)
	er, ew := io.Pipe()
	cmd.Stderr = ew
	stderr = watch(er)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		ow.Close()
		ew.Close()
	})
	return cmd, stdout, stderr
}

func waitExit(t *testing.T, cmd *exec.Cmd, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		t.Fatalf("%v did not exit within %v", cmd.Args, d)
		return nil
	}
}

// TestCLILab drives the CLI the way a user scripts it, in the lab: a
// server on the internet, `reach listen` behind a port-restricted NAT,
// `reach dial --json` behind a full-cone NAT; data crosses both ways,
// the JSON event names the strategy, and `reach ping` reaches the peer.
func TestCLILab(t *testing.T) {
	l := natlab.NewT(t)
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.AddSite(ctx, "a", natlab.Kind(natlab.PortRestricted))
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.AddSite(ctx, "b", natlab.Kind(natlab.FullCone))
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	srvCmd := srv.Command(context.Background(), bin, "server", "--listen", srv.Addr().String())
	srvCmd.Stdout = pw
	if err := srvCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srvCmd.Process.Kill(); srvCmd.Wait(); pw.Close() })
	ready := watch(pr).wait(t, "reach server ready ", 10*time.Second)
	cs := strings.TrimPrefix(ready, "reach server ready ")
	if !strings.Contains(cs, srv.Addr().String()) {
		t.Fatalf("connect string %q does not name the server's address %s", cs, srv.Addr())
	}

	dir := t.TempDir()
	keyA, keyB := filepath.Join(dir, "a.key"), filepath.Join(dir, "b.key")
	out, err := exec.Command(bin, "id", "--key", keyA).Output()
	if err != nil {
		t.Fatal(err)
	}
	idA := strings.TrimSpace(string(out))

	fromListener := []byte("hello from the listener\n")
	fromDialer := make([]byte, 1<<20)
	rand.Read(fromDialer)

	lis, lisOut, lisErr := start(t, a.Host, bytes.NewReader(fromListener), bin, "listen", "--key", keyA, "--server", cs)
	if got := lisErr.wait(t, "listening ", 15*time.Second); got != "listening "+idA {
		t.Fatalf("listen printed %q, want %q", got, "listening "+idA)
	}
	dial, dialOut, dialErr := start(t, b.Host, bytes.NewReader(fromDialer), bin, "dial", "--json", "--key", keyB, "--server", cs, idA)
	if err := waitExit(t, dial, 30*time.Second); err != nil {
		t.Fatalf("dial: %v\nstderr:\n%s", err, dialErr)
	}
	if err := waitExit(t, lis, 10*time.Second); err != nil {
		t.Fatalf("listen: %v\nstderr:\n%s", err, lisErr)
	}
	if !bytes.Equal(lisOut.Bytes(), fromDialer) {
		t.Errorf("listener received %d bytes, want the dialler's %d", lisOut.Len(), len(fromDialer))
	}
	if !bytes.Equal(dialOut.Bytes(), fromListener) {
		t.Errorf("dialler received %q, want %q", dialOut.Bytes(), fromListener)
	}
	var ev struct {
		Event, Strategy, Path, Remote string
		ElapsedMS                     *int64 `json:"elapsed_ms"`
	}
	line := dialErr.wait(t, `{"elapsed_ms"`, time.Second)
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("bad JSON event %q: %v", line, err)
	}
	if ev.Event != "connected" || ev.Strategy != "holepunch" || ev.Remote != idA || ev.Path == "" || ev.ElapsedMS == nil {
		t.Errorf("connected event %+v, want strategy holepunch to %s", ev, idA)
	}

	// ping a fresh listener
	lis2, _, lisErr2 := start(t, a.Host, strings.NewReader(""), bin, "listen", "--key", keyA, "--server", cs)
	lisErr2.wait(t, "listening ", 15*time.Second)
	ping, pingOut, pingErr := start(t, b.Host, nil, bin, "ping", "--count", "3", "--interval", "100ms", "--key", keyB, "--server", cs, idA)
	if err := waitExit(t, ping, 30*time.Second); err != nil {
		t.Fatalf("ping: %v\n%s", err, pingErr)
	}
	if n := strings.Count(pingOut.String(), "rtt="); n != 3 {
		t.Errorf("ping printed %d replies:\n%s", n, pingOut)
	}
	lis2.Process.Kill()

	// an unknown peer: non-zero exit with a one-line reason
	other, _ := exec.Command(bin, "id", "--key", filepath.Join(dir, "c.key")).Output()
	bad, _, badErr := start(t, b.Host, nil, bin, "dial", "--key", keyB, "--server", cs, strings.TrimSpace(string(other)))
	if err := waitExit(t, bad, 15*time.Second); err == nil {
		t.Fatal("dial to an unknown peer exited 0")
	}
	if msg := badErr.String(); !strings.Contains(msg, "unknown peer") || strings.Count(strings.TrimSpace(msg), "\n") != 0 {
		t.Errorf("unknown-peer message is not one line naming the error: %q", msg)
	}
}
