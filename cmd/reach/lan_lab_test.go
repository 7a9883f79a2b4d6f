//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

// TestCLILabLAN: two hosts on one LAN segment (behind one NAT router, no
// server anywhere): reach listen and reach dial PEER without --server find
// each other by mDNS (multicast only inside the lab's namespaces), the
// bytes cross intact both ways, and the session is direct, over the
// listener's LAN address; reach ping reaches it too. With a --server
// that does not answer, both sides fall back to the LAN. A dial to a peer nobody announces fails with
// one line naming the local network.
func TestCLILabLAN(t *testing.T) {
	l := natlab.NewT(t)
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := l.AddRouter(ctx, natlab.RouterConfig{Name: "home", NAT: natlab.PortRestricted})
	if err != nil {
		t.Fatal(err)
	}
	a, err := rt.AddHost(ctx, "lana")
	if err != nil {
		t.Fatal(err)
	}
	b, err := rt.AddHost(ctx, "lanb")
	if err != nil {
		t.Fatal(err)
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
	lis, lisOut, lisErr := start(t, a, bytes.NewReader(fromListener), bin, "listen", "--key", keyA)
	if got := lisErr.wait(t, "listening ", 15*time.Second); got != "listening "+idA {
		t.Fatalf("listen printed %q, want %q", got, "listening "+idA)
	}
	started := time.Now()
	dial, dialOut, dialErr := start(t, b, bytes.NewReader(fromDialer), bin, "dial", "--json", "--key", keyB, idA)
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
	if ev.ElapsedMS == nil {
		t.Fatalf("connected event without elapsed_ms: %q", line)
	}
	t.Logf("connected: strategy %s, path %s, dial %d ms (dial and 1 MiB each way: %v)", ev.Strategy, ev.Path, *ev.ElapsedMS,
		time.Since(started).Round(time.Millisecond))
	if ev.Event != "connected" || ev.Strategy != "direct" || ev.Remote != idA || !strings.HasPrefix(ev.Path, a.Addr().String()+":") {
		t.Errorf("connected event %+v, want strategy direct to %s at %s", ev, idA, a.Addr())
	}

	// ping works the same way.
	lis2, _, lisErr2 := start(t, a, strings.NewReader(""), bin, "listen", "--key", keyA)
	lisErr2.wait(t, "listening ", 15*time.Second)
	ping, pingOut, pingErr := start(t, b, nil, bin, "ping", "--count", "2", "--interval", "100ms", "--key", keyB, idA)
	if err := waitExit(t, ping, 30*time.Second); err != nil {
		t.Fatalf("ping: %v\n%s", err, pingErr)
	}
	if n := strings.Count(pingOut.String(), "rtt="); n != 2 {
		t.Errorf("ping printed %d replies:\n%s", n, pingOut)
	}
	lis2.Process.Kill()

	// A server that does not answer (nothing listens at the router's LAN
	// address): both sides say so and fall back to the LAN.
	sid, _ := exec.Command(bin, "id", "--key", filepath.Join(dir, "s.key")).Output()
	dead := "reach://" + strings.TrimSpace(string(sid)) + "@" + rt.LANAddr().String() + ":4950"
	fromDialer2 := []byte("through a dead server's LAN\n")
	lisStart := time.Now()
	lis3, lisOut3, lisErr3 := start(t, a, strings.NewReader(""), bin, "listen", "--key", keyA, "--server", dead)
	lisErr3.wait(t, "listening ", 30*time.Second)
	fellBack := time.Since(lisStart)
	dial3, _, dialErr3 := start(t, b, bytes.NewReader(fromDialer2), bin, "dial", "--key", keyB, "--server", dead, idA)
	if err := waitExit(t, dial3, 45*time.Second); err != nil {
		t.Fatalf("dial with a dead server: %v\nstderr:\n%s", err, dialErr3)
	}
	if err := waitExit(t, lis3, 10*time.Second); err != nil {
		t.Fatalf("listen with a dead server: %v\nstderr:\n%s", err, lisErr3)
	}
	if !bytes.Equal(lisOut3.Bytes(), fromDialer2) {
		t.Errorf("listener with a dead server received %q, want %q", lisOut3.Bytes(), fromDialer2)
	}
	for _, w := range []*lineWatcher{lisErr3, dialErr3} {
		if !strings.Contains(w.String(), "finding peers on the local network") {
			t.Errorf("no word of the fallback:\n%s", w)
		}
	}
	t.Logf("dead server: listener fell back after about %v; dialler:\n%s", fellBack.Round(100*time.Millisecond), dialErr3)

	// Nobody announces this one: the dial gives up when --timeout ends.
	other, _ := exec.Command(bin, "id", "--key", filepath.Join(dir, "c.key")).Output()
	bad, _, badErr := start(t, b, nil, bin, "dial", "--timeout", "2s", "--key", keyB, strings.TrimSpace(string(other)))
	if err := waitExit(t, bad, 15*time.Second); err == nil {
		t.Fatal("dial to a peer not on the LAN exited 0")
	}
	t.Logf("dial to a peer not on the LAN: %s", badErr)
	if msg := badErr.String(); !strings.Contains(msg, "not found on the local network") {
		t.Errorf("message does not say the peer is not on the local network: %q", msg)
	}
}
