package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestForwardRedialAfterKill: a `reach dial --local` killed with SIGKILL
// (its sessions never closed) and started again with the same key reaches
// the same listener at once, and so does a `reach ping` followed straight
// by a dial: the listener gives the new process's session a path of its
// own instead of the dead one's (it took 10 s, or more than a minute,
// before).
func TestForwardRedialAfterKill(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	echo := echoServer(t)
	lisKey, lisID := ncKey(t, "lis")
	lis := startProc(t, nil, nil, bin, "listen", "--key", lisKey, "--server", cs, "--forward", echo.Addr().String())
	lis.stderr.wait(t, "forwarding streams to "+echo.Addr().String(), 15*time.Second)
	dialKey, _ := ncKey(t, "dial")
	for i := range 3 {
		start := time.Now()
		dial := startProc(t, nil, nil, bin, "dial", "--key", dialKey, "--server", cs, "--local", "127.0.0.1:0", lisID.String())
		line := dial.stderr.wait(t, "forwarding ", 15*time.Second)
		addr, _, _ := strings.Cut(strings.TrimPrefix(line, "forwarding "), " -> ")
		if err := echoThrough(addr, 64<<10); err != nil {
			t.Fatalf("process %d: %v", i, err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("process %d: ready and echoed after %v, want under 5 s", i, took.Round(time.Millisecond))
		}
		t.Logf("process %d: ready and 64 KiB echoed in %v", i, time.Since(start).Round(time.Millisecond))
		dial.cmd.Process.Signal(syscall.SIGKILL)
		<-dial.done
	}
	// ping, then dial at once, with the same key.
	if _, stderr, code := runReach(t, nil, "ping", "--key", dialKey, "--server", cs, "--count", "1", lisID.String()); code != 0 {
		t.Fatalf("ping: exit %d: %s", code, stderr)
	}
	dial := startProc(t, nil, nil, bin, "dial", "--key", dialKey, "--server", cs, "--local", "127.0.0.1:0", lisID.String())
	line := dial.stderr.wait(t, "forwarding ", 15*time.Second)
	addr, _, _ := strings.Cut(strings.TrimPrefix(line, "forwarding "), " -> ")
	if err := echoThrough(addr, 64<<10); err != nil {
		t.Fatalf("dial after ping: %v", err)
	}
}
