package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestDialTransport: dial --json's connected event names the transport:
// udp for a QUIC session (direct), tcp for a TLS+yamux one (direct-tcp);
// the bytes piped into dial come out of listen either way.
func TestDialTransport(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	for strategy, transport := range map[string]string{"direct": "udp", "direct-tcp": "tcp"} {
		t.Run(strategy, func(t *testing.T) {
			lisKey, lisID := ncKey(t, "lis")
			dialKey, _ := ncKey(t, "dial")
			var got bytes.Buffer
			lis := startProc(t, nil, &got, bin, "listen", "--key", lisKey, "--server", cs)
			lis.stderr.wait(t, "listening ", 15*time.Second)
			dial := startProc(t, strings.NewReader("hello over "+transport+"\n"), &bytes.Buffer{}, bin, "dial", "--json",
				"--strategies", strategy, "--key", dialKey, "--server", cs, lisID.String())
			line := dial.stderr.wait(t, `{"elapsed_ms"`, 30*time.Second)
			var ev struct{ Event, Strategy, Transport string }
			if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Event != "connected" {
				t.Fatalf("connected event %q: %v", line, err)
			}
			if ev.Strategy != strategy || ev.Transport != transport {
				t.Errorf("connected: strategy %q transport %q, want %q %q (%s)", ev.Strategy, ev.Transport, strategy, transport, line)
			}
			if code := dial.exit(t, 30*time.Second); code != 0 {
				t.Fatalf("dial exited %d", code)
			}
			if code := lis.exit(t, 15*time.Second); code != 0 {
				t.Fatalf("listen exited %d", code)
			}
			if want := "hello over " + transport + "\n"; got.String() != want {
				t.Errorf("listener wrote %q, want %q", got.String(), want)
			}
		})
	}
}
