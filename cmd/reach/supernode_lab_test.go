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

// TestCLILabSupernodeAllow: `reach listen --supernode --allow FRIEND` on
// an open host (the server has no relay). --allow is about who may
// connect to the listener, not whom its supernode forwards for: two
// peers behind symmetric NATs, neither on the list, connect through it
// (strategy supernode, 1 MiB intact); one of them dialling the listener
// itself is refused ("refused this node"); FRIEND is served.
func TestCLILabSupernodeAllow(t *testing.T) {
	l := natlab.NewT(t)
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	volHost, err := l.AddPublicHost(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	syma, err := l.AddSite(ctx, "syma", natlab.Kind(natlab.Symmetric))
	if err != nil {
		t.Fatal(err)
	}
	symb, err := l.AddSite(ctx, "symb", natlab.Kind(natlab.Symmetric))
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	srvCmd := srv.Command(context.Background(), bin, "server", "--listen", srv.Addr().String(), "--no-relay",
		"--tls-port", "0", "--state", t.TempDir())
	srvCmd.Stdout = pw
	if err := srvCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srvCmd.Process.Kill(); srvCmd.Wait(); pw.Close() })
	cs := strings.TrimPrefix(watch(pr).wait(t, "reach server ready ", 10*time.Second), "reach server ready ")

	dir := t.TempDir()
	id := func(name string) (string, string) {
		key := filepath.Join(dir, name+".key")
		out, err := exec.Command(bin, "id", "--key", key).Output()
		if err != nil {
			t.Fatal(err)
		}
		return key, strings.TrimSpace(string(out))
	}
	volKey, volID := id("vol")
	friendKey, friendID := id("friend")
	aKey, _ := id("a")
	bKey, bID := id("b")

	_, volOut, volErr := start(t, volHost, strings.NewReader("hello from the volunteer\n"), bin, "listen", "--supernode",
		"--allow", friendID, "--key", volKey, "--server", cs)
	volErr.wait(t, "listening ", 15*time.Second)
	if line := volErr.waitFor(t, "supernode", 20*time.Second); line != "supernode "+volID {
		t.Fatalf("the volunteer was not admitted: %q", line)
	}

	// A pair neither of whose peers is on the allow list, through it.
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	lis, lisOut, lisErr := start(t, symb.Host, strings.NewReader(""), bin, "listen", "--key", bKey, "--server", cs)
	lisErr.wait(t, "listening ", 15*time.Second)
	dial, _, dialErr := start(t, syma.Host, bytes.NewReader(payload), bin, "dial", "--json", "--key", aKey, "--server", cs, bID)
	if err := waitExit(t, dial, 45*time.Second); err != nil {
		t.Fatalf("dial through the supernode: %v\n%s", err, dialErr)
	}
	if err := waitExit(t, lis, 10*time.Second); err != nil {
		t.Fatalf("listen: %v\n%s", err, lisErr)
	}
	var ev struct{ Event, Strategy string }
	if err := json.Unmarshal([]byte(dialErr.wait(t, `{"elapsed_ms"`, time.Second)), &ev); err != nil || ev.Strategy != "supernode" {
		t.Errorf("connected event %+v (%v), want strategy supernode", ev, err)
	}
	if !bytes.Equal(lisOut.Bytes(), payload) {
		t.Errorf("the listener behind the supernode got %d bytes, want the dialler's %d intact", lisOut.Len(), len(payload))
	}

	// The same stranger, dialling the volunteer's listener: refused.
	bad, _, badErr := start(t, syma.Host, strings.NewReader("let me in\n"), bin, "dial", "--key", aKey, "--server", cs, volID)
	if err := waitExit(t, bad, 30*time.Second); err == nil {
		t.Error("a stranger's dial to the listener exited 0")
	}
	if s := badErr.String(); !strings.Contains(s, "refused this node") {
		t.Errorf("the stranger was told:\n%s", s)
	}

	// The friend is served (through the supernode rung or not: the
	// volunteer is open).
	friend, friendOut, friendErr := start(t, syma.Host, strings.NewReader("hello from the friend\n"), bin, "dial", "--key", friendKey, "--server", cs, volID)
	if err := waitExit(t, friend, 30*time.Second); err != nil {
		t.Fatalf("the friend's dial: %v\n%s", err, friendErr)
	}
	if got := friendOut.String(); got != "hello from the volunteer\n" {
		t.Errorf("the friend read %q", got)
	}
	if got := volOut.String(); got != "hello from the friend\n" {
		t.Errorf("the volunteer's listener wrote %q, want only the friend's line", got)
	}
}
