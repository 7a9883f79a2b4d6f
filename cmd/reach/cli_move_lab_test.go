//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

// TestCLIPathEvents: `reach dial --json` and `reach listen --json` print a
// path event when their session moves. The direct path between two
// port-restricted NATs is cut (a firewall rule on one router), so the
// session starts on the relay (`connected` says relay), or starts on the
// hole-punched path by a first flight and moves to the relay (a path
// event says so); the rule goes,
// and both sides print {"event":"path","strategy":"holepunch","path":…}
// within 10 s while the dialler's stdin keeps streaming; every byte
// arrives.
func TestCLIPathEvents(t *testing.T) {
	l := natlab.NewT(t)
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.AddSite(ctx, "a", natlab.Kind(natlab.PortRestricted))
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.AddSite(ctx, "b", natlab.Kind(natlab.PortRestricted))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Router.Block(ctx, b.Router.WAN()); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	srvCmd := srv.Command(context.Background(), bin, "server", "--listen", srv.Addr().String())
	srvCmd.Stdout = pw
	if err := srvCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srvCmd.Process.Kill(); srvCmd.Wait(); pw.Close() })
	cs := strings.TrimPrefix(watch(pr).wait(t, "reach server ready ", 10*time.Second), "reach server ready ")

	dir := t.TempDir()
	keyA, keyB := filepath.Join(dir, "a.key"), filepath.Join(dir, "b.key")
	out, err := exec.Command(bin, "id", "--key", keyA).Output()
	if err != nil {
		t.Fatal(err)
	}
	idA := strings.TrimSpace(string(out))

	lis, lisOut, lisErr := start(t, a.Host, strings.NewReader(""), bin, "listen", "--json", "--key", keyA, "--server", cs)
	lisErr.wait(t, "listening ", 15*time.Second)

	// The dialler streams 64 KiB every 50 ms until told to stop.
	in, feed := io.Pipe()
	var sent bytes.Buffer
	stop := make(chan struct{})
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		defer feed.Close()
		chunk := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			rand.Read(chunk)
			if _, err := feed.Write(chunk); err != nil {
				return
			}
			sent.Write(chunk)
		}
	}()
	dial, _, dialErr := start(t, b.Host, in, bin, "dial", "--json", "--key", keyB, "--server", cs, idA)

	var ev map[string]any
	line := dialErr.waitFor(t, `"event":"connected"`, 30*time.Second)
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("bad JSON %q: %v", line, err)
	}
	switch ev["strategy"] {
	case "relay":
	case "holepunch":
		// Both NATs keep one mapping per socket: the dial flew first and
		// won on the server's word; with nothing coming straight from the
		// listener, the session moves to the relay within a few seconds.
		line := dialErr.match(t, "a path event to", "relay", func(l string) bool {
			return strings.Contains(l, `"event":"path"`) && strings.Contains(l, `"strategy":"relay"`)
		}, 5*time.Second)
		t.Logf("dial: %s", line)
	default:
		t.Fatalf("with the direct path cut, connected %v; want strategy relay (or holepunch, then relay)", ev)
	}
	time.Sleep(time.Second)
	if err := a.Router.Unblock(ctx); err != nil {
		t.Fatal(err)
	}
	for name, w := range map[string]*lineWatcher{"dial": dialErr, "listen": lisErr} {
		line := w.match(t, "a path event to", "holepunch", func(l string) bool {
			return strings.Contains(l, `"event":"path"`) && strings.Contains(l, `"strategy":"holepunch"`)
		}, 10*time.Second)
		t.Logf("%s: %s", name, line)
		ev = nil
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("%s: bad JSON %q: %v", name, line, err)
		}
		path, _ := ev["path"].(string)
		if ev["strategy"] != "holepunch" || !strings.HasPrefix(path, a.Router.WAN().String()+":") && !strings.HasPrefix(path, b.Router.WAN().String()+":") {
			t.Errorf("%s: path event %v; want holepunch to the other router's address", name, ev)
		}
	}
	time.Sleep(500 * time.Millisecond) // some bytes over the direct path
	close(stop)
	<-fed
	if err := waitExit(t, dial, 30*time.Second); err != nil {
		t.Fatalf("dial: %v\nstderr:\n%s", err, dialErr)
	}
	if err := waitExit(t, lis, 30*time.Second); err != nil {
		t.Fatalf("listen: %v\nstderr:\n%s", err, lisErr)
	}
	if !bytes.Equal(lisOut.Bytes(), sent.Bytes()) {
		t.Fatalf("listener received %d bytes, want the %d the dialler read", lisOut.Len(), sent.Len())
	}
}
